"""One headline: SyncR² (bias-corrected, its 95% interval, the raw value beside) reads the same on
the console, in ``nsync report`` and in README as ``nsync.fit.results.format_sync_r2`` writes it."""

from __future__ import annotations

import re
from pathlib import Path

from nsync.analysis.report import main as report_main
from nsync.config import load_config
from nsync.fit import FitConfig, FitResult, run_fit
from nsync.fit.summary import print_summary
from nsync.testing.synthetic import write_synthetic_cache

ROOT = Path(__file__).resolve().parents[1]


def test_console_and_report_show_the_same_headline(tmp_path, capsys):
    cache = write_synthetic_cache(tmp_path / "c", "linear", n_episodes=100, turns=6, hidden=8)  # 20 test episodes: intervals shown
    cfg = load_config(
        FitConfig,
        [f"data.cache={cache}", f"out={tmp_path / 'fit'}", "logger.kind=none", "progress=false", "bootstrap=200", "surrogates.n=0", "time_bins=-1"],
        prog="test",
    )
    result = run_fit(cfg)
    headline = result.headline()
    assert re.fullmatch(r"SyncR² \d\.\d{3} \[\d\.\d{3}, \d\.\d{3}\] \(bias-corrected, 95% interval over test episodes; raw \d\.\d{3}\)", headline)
    lo, hi = result.sync_r2_ci95
    assert lo <= result.sync_r2_bias_corrected <= hi  # the interval holds the number beside it
    capsys.readouterr()
    print_summary(result, cfg)
    console = capsys.readouterr().out
    assert console.splitlines()[0] == headline
    for name, d in result.directions.items():
        assert f"  {name}: {d.headline()}" in console
    report_main([str(tmp_path / "fit"), "--out", str(tmp_path / "report.md")])
    report = (tmp_path / "report.md").read_text()
    assert headline in report and "±" not in report.split(headline)[0].split("SyncR²")[-1]
    assert FitResult.load(tmp_path / "fit").headline() == headline


def test_readme_quotes_the_quickstarts_headline():
    """README and the results index quote the quickstart's figures as docs/quickstart/output.md
    (written by `experiments/quickstart.py --docs docs/quickstart`) has them."""
    output = (ROOT / "docs" / "quickstart" / "output.md").read_text()
    rows = {}
    for label in ("main", "control"):
        row = next(line for line in output.splitlines() if line.startswith(f"| {label}"))
        bias_corrected, interval, raw = (cell.strip() for cell in row.strip("|").split("|")[1:4])
        rows[label] = f"{bias_corrected} {interval}"
    readme = (ROOT / "README.md").read_text()
    index = (ROOT / "docs" / "results" / "index.md").read_text()
    for text in (readme, index):
        assert f"SyncR² {rows['main']}" in text
        assert rows["control"] in text
