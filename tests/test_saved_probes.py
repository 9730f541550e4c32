"""Probes load back from a run folder and score another cache (nsync.probes.load_probes)."""

from __future__ import annotations

import pytest

from nsync.config import load_config
from nsync.errors import NsyncError
from nsync.fit import FitConfig, run_fit
from nsync.probes import load_probes, score_cache
from nsync.testing.synthetic import planted_r2, write_synthetic_cache


def _fit(cache, out, *overrides):
    args = [f"data.cache={cache}", f"out={out}", "data.split_seeds=[0]", "bootstrap=0", "surrogates.n=0", "time_bins=-1",
            "logger.kind=none", "progress=false", "save_weights=true", *overrides]  # fmt: skip
    return run_fit(load_config(FitConfig, args, prog="test"))


@pytest.mark.parametrize("alphas", ["affine.alphas=[0.1]", "affine.alphas=[0.1,10,1000]"])
def test_loaded_probes_reproduce_the_fit_and_score_another_cache(tmp_path, alphas):
    cache = write_synthetic_cache(tmp_path / "c", "linear", n_episodes=120, turns=8, hidden=8, massive=300.0)
    result = _fit(cache, tmp_path / "fit", alphas, "affine.scale=true", "data.test_size=0.3")  # not the default: scored as fitted
    probes = load_probes(tmp_path / "fit")
    assert sorted(probes) == [(d, s) for d in ("A->B", "B->A") for s in result.source_layers]
    # the same cache, split and test pairs: each probe's R² is the one results.json reports at its chosen target
    same = score_cache(probes, cache)
    for direction, d in result.directions.items():
        for i, s in enumerate(result.source_layers):
            assert probes[(direction, s)].target_layer == d.chosen_target_layer[0][i]
            assert same.loc[(direction, s), "r2"] == pytest.approx(d.chosen_r2_by_source_layer[i], abs=1e-4)
    # another cache with the same planted map (the same seed: its first 120 episodes are the fit's, 80 more are new),
    # under another model's name of the same width: the probes carry over
    other = write_synthetic_cache(tmp_path / "o", "linear", n_episodes=200, turns=8, hidden=8, massive=300.0, model="another")
    scores = score_cache(probes, other, part="all")
    assert (scores.loc["A->B", "r2"] > planted_r2(1.0, 1.0) - 0.1).all()  # the planted relation, found in new data
    assert (scores.loc["B->A", "r2"] < 0.05).all()  # none the other way


def test_loading_needs_saved_weights(tmp_path):
    cache = write_synthetic_cache(tmp_path / "c", "linear", n_episodes=30, turns=6, hidden=4)
    _fit(cache, tmp_path / "fit", "save_weights=false")
    with pytest.raises(NsyncError, match="holds no weights.safetensors; fit with save_weights=true"):
        load_probes(tmp_path / "fit")


def test_mlp_probes_load_back_and_reproduce_the_fit(tmp_path):
    """An MLP probe's network and standardisation come back as a module that predicts the fit's test R²."""
    cache = write_synthetic_cache(tmp_path / "c", "linear", n_episodes=100, turns=8, hidden=6)
    result = _fit(cache, tmp_path / "fit", "probe=mlp", "mlp.hidden=32", "mlp.max_epochs=60", "mlp.lr=0.01", "data.test_size=0.3")
    probes = load_probes(tmp_path / "fit")
    assert sorted(probes) == [(d, s) for d in ("A->B", "B->A") for s in result.source_layers]
    assert all(p.weight is None and p.module is not None and not p.module.training for p in probes.values())
    same = score_cache(probes, cache)
    for direction, d in result.directions.items():
        for i, s in enumerate(result.source_layers):
            assert same.loc[(direction, s), "r2"] == pytest.approx(d.chosen_r2_by_source_layer[i], abs=1e-3)
    assert (same.loc["A->B", "r2"] > 0.3).all()  # the planted relation
