"""The W&B sweep files parse and every grid point is a valid ``nsync.fit`` run."""

import json
from pathlib import Path

import pandas as pd
import pytest
import yaml

from nsync.config import load_config
from nsync.fit import FitConfig, resolve_out
from nsync.sweep import expand, load_sweep

SWEEPS = sorted((Path(__file__).resolve().parents[1] / "configs" / "sweeps").glob("*.yaml"))


@pytest.mark.parametrize("path", SWEEPS, ids=lambda p: p.name)
def test_sweep_yaml_expands_to_valid_fit_commands(path, monkeypatch):
    monkeypatch.chdir(path.parents[2])  # commands name configs relative to the repository root
    raw = yaml.safe_load(path.read_text())
    assert raw["program"] == "nsync.fit"
    assert raw["command"][:4] == ["${env}", "python", "-m", "${program}"] and "${args}" in raw["command"]
    commands = expand(load_sweep(path))
    n_points = 1
    for spec in raw["parameters"].values():
        n_points *= len(spec["values"])
    assert len(commands) == n_points
    outs = set()
    for argv in commands:
        assert argv[1:3] == ["-m", "nsync.fit"]
        cfg = load_config(FitConfig, argv[3:], prog="nsync fit")
        for name in raw["parameters"]:
            assert any(a.startswith(f"--{name}=") for a in argv)
        outs.add(resolve_out(cfg))
    assert len(outs) == len(commands)  # {hash} gives every grid point its own folder


def test_sweep_errors(tmp_path):
    from nsync.errors import NsyncError

    bad = tmp_path / "s.yaml"
    bad.write_text("program: nsync.fit\nmethod: bayes\nparameters: {probe: {values: [affine]}}\ncommand: [x]\n")
    with pytest.raises(NsyncError, match="only method: grid"):
        load_sweep(bad)


@pytest.mark.slow  # two fits in subprocesses (~40 s)
def test_a_local_sweep_ends_with_each_points_syncr2(tmp_path, capsys):
    """`python -m nsync.sweep` runs every point, then tabulates each point's SyncR² from its run
    folder and draws them; on a cache with a planted relation the points differ."""
    from nsync.sweep import main
    from nsync.testing.synthetic import write_synthetic_cache

    cache = write_synthetic_cache(tmp_path / "c", "linear", n_episodes=40, turns=6, hidden=8)
    sweep = {
        "program": "nsync.fit",
        "method": "grid",
        "metric": {"name": "sync_r2"},
        "parameters": {"data.pairing": {"values": ["shuffled_partner", "partner"]}},
        "command": ["${env}", "python", "-m", "${program}", "data.cache=not/this/one", "bootstrap=0", "surrogates.n=0", "time_bins=-1",
                    "logger.kind=none", "progress=false", f"out={tmp_path}/runs/{{hash}}", "${args}"],
    }
    (tmp_path / "sweep.yaml").write_text(yaml.safe_dump(sweep))
    main([str(tmp_path / "sweep.yaml"), f"data.cache={cache}", "--plot", str(tmp_path / "sweep.png")])  # aimed at a cache
    out = capsys.readouterr().out
    rows = [line for line in out.splitlines() if line.startswith(("| shuffled_partner", "| partner"))]
    assert len(rows) == 2 and "(raw; no interval: " in rows[0]
    values = [float(r.strip("|").split("|")[-1]) for r in rows]
    assert values[0] > values[1] + 0.1  # the planted relation (partner, listed first: best first) above the shuffled partner
    assert (tmp_path / "sweep.png").stat().st_size > 0 and "ran 2 runs, 0 failed" in out
    summary = pd.read_csv(tmp_path / "runs" / "sweep_summary.csv")
    assert summary["data.pairing"].tolist() == ["partner", "shuffled_partner"]  # best first
    assert (tmp_path / "runs" / "sweep_summary.md").is_file() and (tmp_path / "runs" / "sweep_summary.png").is_file()
    from nsync.analysis.report import main as report_main

    report_main([str(tmp_path / "runs"), "--out", str(tmp_path / "report.md")])
    report = (tmp_path / "report.md").read_text()
    assert "## Sweep: " in report and report.index("| partner") < report.index("| shuffled_partner")


def test_a_sweep_summary_goes_to_wandb_as_a_run_of_its_own(tmp_path):
    """With a W&B logger (offline here) the summary table and plot are logged to a run of job type sweep_summary."""
    from nsync.config import load_config
    from nsync.fit import FitConfig
    from nsync.fit.tracking import log_sweep_summary

    cfg = load_config(FitConfig, ["data.cache=unused", "out=unused", "logger.kind=wandb", "logger.mode=offline"], prog="test")
    table = pd.DataFrame({"data.pairing": ["partner", "shuffled_partner"], "sync_r2": [0.3, 0.01]})
    run_dir = log_sweep_summary(cfg, "sweep test", tmp_path, table, None)
    assert run_dir is not None and Path(run_dir).is_relative_to(tmp_path)
    (logged,) = (Path(run_dir) / "media" / "table").glob("sweep_summary_*.table.json")
    assert json.loads(logged.read_text())["data"] == [["partner", "0.3"], ["shuffled_partner", "0.01"]]
    assert log_sweep_summary(load_config(FitConfig, ["data.cache=unused", "out=unused", "logger.kind=none"], prog="test"), "x", tmp_path, table, None) is None
