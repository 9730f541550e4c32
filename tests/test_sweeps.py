"""The W&B sweep files parse and every grid point is a valid ``nsync.fit`` run."""

from pathlib import Path

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
