"""``python -m nsync.fit`` end to end on synthetic caches with a known answer."""

import json
import subprocess
import sys

import numpy as np
import pytest

from nsync.config import load_config
from nsync.data.synthetic import planted_r2, write_synthetic_cache
from nsync.fitting import FitConfig, run_fit


def _fit(tmp_path, cache, *overrides, name="run"):
    cfg = load_config(
        FitConfig,
        [f"out={tmp_path / name}", f"data.cache={cache}", "logger.kind=none", "progress=false", *overrides],
        prog="test",
    )
    return run_fit(cfg)


@pytest.fixture(scope="module")
def linear(tmp_path_factory):
    return write_synthetic_cache(tmp_path_factory.mktemp("lin") / "c", "linear", n_episodes=240, turns=10, hidden=8, massive=3000.0)


def test_linear_relation_recovers_analytic_r2(tmp_path, linear):
    res = _fit(tmp_path, linear)
    ab, ba = res["directions"]["A->B"], res["directions"]["B->A"]
    r2 = np.array(ab["r2"])
    assert r2.shape == (3, 3)
    assert abs(r2.mean() - planted_r2(1.0, 1.0)) < 0.02  # every layer pair carries the relation
    assert abs(ab["sync_r2"] - planted_r2(1.0, 1.0)) < 0.02
    assert ba["sync_r2"] < 0.02 and ba["sync_r2_unclipped"] < 0  # no relation in the other direction
    assert res["sync_r2"] == pytest.approx((ab["sync_r2"] + ba["sync_r2"]) / 2, abs=1e-9)
    # the results file has what the paper's analysis and the reviewers need
    saved = json.loads((tmp_path / "run" / "results.json").read_text())
    for key in ("r2", "r2_std", "sync_r2", "best_target_layer", "n_train", "n_test", "same_layer_r2", "sync_r2_unclipped"):
        assert key in saved["directions"]["A->B"]
    split = saved["splits"]["0"]["A->B"]
    assert split["train"]["episodes"] and not set(split["train"]["episodes"]) & set(split["test"]["episodes"])
    for f in ("r2_by_layer.png", "heatmap_A_to_B.png", "heatmap_B_to_A.png", "weights.safetensors", "config.yaml"):
        assert (tmp_path / "run" / f).exists()


def test_independent_targets_give_zero(tmp_path):
    cache = write_synthetic_cache(tmp_path / "none", "none", n_episodes=150, turns=8, hidden=8)
    res = _fit(tmp_path, cache, "data.split_seeds=[0]")
    assert res["sync_r2_unclipped"] < 0.01 and res["sync_r2"] < 0.02


def test_mlp_beats_affine_on_a_nonlinear_relation(tmp_path):
    cache = write_synthetic_cache(tmp_path / "quad", "quadratic", n_episodes=300, turns=10, hidden=4, noise=0.5)
    common = ["data.split_seeds=[0]", "data.directions=[A->B]", "data.source_layers=[1]", "data.target_layers=[1]", "data.val_size=0.15"]
    affine = _fit(tmp_path, cache, *common, name="affine")
    mlp = _fit(tmp_path, cache, *common, "probe=mlp", "mlp.hidden=64", "mlp.max_epochs=150", "mlp.patience=15", "mlp.lr=3e-3", name="mlp")
    a, m = affine["directions"]["A->B"]["r2"][0][0], mlp["directions"]["A->B"]["r2"][0][0]
    assert a < 0.05
    assert m > a + 0.3


def test_persona_and_scenario_splits_run(tmp_path, linear):
    for split in ("persona", "scenario"):
        res = _fit(tmp_path, linear, f"data.split={split}", "data.split_seeds=[0]", name=split)
        s = res["splits"]["0"]["A->B"]
        key = "characters" if split == "persona" else "scenarios"
        assert not set(s["train"][key]) & set(s["test"][key])


def test_wandb_offline_run_and_refusing_to_overwrite(tmp_path, linear, monkeypatch):
    monkeypatch.delenv("WANDB_API_KEY", raising=False)
    monkeypatch.setenv("WANDB_MODE", "offline")
    cfg = load_config(FitConfig, [f"out={tmp_path / 'w'}", f"data.cache={linear}", "data.split_seeds=[0]", "progress=false"], prog="t")
    run_fit(cfg)
    runs = list((tmp_path / "w" / "wandb").glob("offline-run-*"))
    assert runs and list(runs[0].glob("*.wandb"))
    from nsync.errors import NsyncError

    with pytest.raises(NsyncError, match="overwrite=true"):
        run_fit(cfg)


def test_cli_reports_typos_and_missing_cache(tmp_path):
    res = subprocess.run([sys.executable, "-m", "nsync.fit", f"out={tmp_path}/x", "data.cache=/nope", "data.splt=persona"],
                         capture_output=True, text=True)
    assert res.returncode == 2 and "unknown config key 'data.splt'" in res.stderr and "data.split" in res.stderr
    res = subprocess.run([sys.executable, "-m", "nsync.fit", f"out={tmp_path}/x", "data.cache=/nope", "logger.kind=none"],
                         capture_output=True, text=True)
    assert res.returncode == 2 and "not an nsync activation cache" in res.stderr and "Traceback" not in res.stderr
