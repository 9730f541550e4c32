"""The quickstart's own defaults produce no warning: `experiments/quickstart.py` end to end with its
configs, a tiny random-weight model in place of SmolLM2 (the real run is `make quickstart`)."""

from __future__ import annotations

import argparse
import logging
from pathlib import Path

from conftest import load_script

ROOT = Path(__file__).resolve().parents[1]


def test_the_quickstart_prints_no_warning(tmp_path, tiny_llama, capsys, caplog, monkeypatch):
    quickstart = load_script("experiments/quickstart.py", "quickstart_script")
    monkeypatch.chdir(ROOT)  # its configs are named from the repository root
    args = argparse.Namespace(
        simulate="configs/simulate/quickstart.yaml",
        fit="configs/fit/quickstart.yaml",
        out=str(tmp_path / "controls"),
        docs="",
        overrides=[f"out={tmp_path / 'cache'}", "models=[tiny]", "progress=false"],
    )
    with caplog.at_level(logging.INFO):
        quickstart.run(args, models={"tiny": tiny_llama})
    out = capsys.readouterr()
    warnings = [r.getMessage() for r in caplog.records if r.levelno >= logging.WARNING]
    assert not warnings, warnings
    flagged = [line for line in (out.out + out.err).splitlines() if "warning" in line.lower()]
    assert not flagged, "\n".join(flagged)
    assert "| main: partner's next state |" in out.out and "planted problems of this shape" in out.out
