"""``python -m nsync.fit`` end to end on synthetic caches with a known answer."""

import json
import os
import subprocess
import sys

import numpy as np
import pytest

from nsync.config import load_config
from nsync.errors import NsyncError
from nsync.testing.synthetic import planted_r2, write_synthetic_cache
from nsync.fit import FitConfig, FitResult, run_fit


def _fit(tmp_path, cache, *overrides, name="run"):
    """A fit without bootstrap, surrogates or time course unless ``overrides`` ask (these tests check neither)."""
    cfg = load_config(
        FitConfig,
        [f"out={tmp_path / name}", f"data.cache={cache}", "logger.kind=none", "progress=false", "bootstrap=0", "surrogates.n=0",
         "time_bins=-1", *overrides],
        prog="test",
    )
    return run_fit(cfg)


@pytest.fixture(scope="module")
def linear(tmp_path_factory):
    return write_synthetic_cache(tmp_path_factory.mktemp("lin") / "c", "linear", n_episodes=240, turns=10, hidden=8, massive=3000.0)


def test_linear_relation_recovers_analytic_r2(tmp_path, linear):
    res = _fit(tmp_path, linear)
    ab, ba = res.directions["A->B"], res.directions["B->A"]
    r2 = np.array(ab.r2)
    assert r2.shape == (3, 3)
    assert abs(r2.mean() - planted_r2(1.0, 1.0)) < 0.02  # every layer pair carries the relation
    assert abs(ab.sync_r2 - planted_r2(1.0, 1.0)) < 0.02
    assert ba.sync_r2 < 0.02 and ba.sync_r2_unclipped < 0  # no relation in the other direction
    assert res.sync_r2 == pytest.approx((ab.sync_r2 + ba.sync_r2) / 2, abs=1e-9)
    # the results file has what the paper's analysis and the reviewers need
    saved = json.loads((tmp_path / "run" / "results.json").read_text())
    for key in ("r2", "r2_std", "sync_r2", "best_target_layer", "n_train", "n_test", "same_layer_r2", "sync_r2_unclipped"):
        assert key in saved["directions"]["A->B"]
    assert FitResult.load(tmp_path / "run") == res  # the typed result round-trips
    assert res.source_layer_names == ["embed", "blocks.0.resid_post", "blocks.1.resid_post"]
    split = saved["splits"]["0"]["A->B"]
    assert split["train"]["episodes"] and not set(split["train"]["episodes"]) & set(split["test"]["episodes"])
    for f in ("r2_by_layer.png", "heatmap_A_to_B.png", "heatmap_B_to_A.png", "weights.safetensors", "config.yaml"):
        assert (tmp_path / "run" / f).exists()


def test_independent_targets_give_zero(tmp_path):
    cache = write_synthetic_cache(tmp_path / "none", "none", n_episodes=150, turns=8, hidden=8)
    res = _fit(tmp_path, cache, "data.split_seeds=[0]")
    assert res.sync_r2_unclipped < 0.01 and res.sync_r2 < 0.02


@pytest.mark.slow
def test_mlp_beats_affine_on_a_nonlinear_relation(tmp_path):
    cache = write_synthetic_cache(tmp_path / "quad", "quadratic", n_episodes=300, turns=10, hidden=4, noise=0.5)
    common = ["data.split_seeds=[0]", "data.directions=[A->B]", "data.source_layers=[1]", "data.target_layers=[1]", "data.val_size=0.15"]
    affine = _fit(tmp_path, cache, *common, name="affine")
    mlp = _fit(tmp_path, cache, *common, "probe=mlp", "mlp.hidden=64", "mlp.max_epochs=150", "mlp.patience=15", "mlp.lr=3e-3", name="mlp")
    a, m = affine.directions["A->B"].r2[0][0], mlp.directions["A->B"].r2[0][0]
    assert a < 0.05
    assert m > a + 0.3


def test_persona_and_scenario_splits_run(tmp_path, linear):
    for split in ("persona", "scenario"):
        res = _fit(tmp_path, linear, f"data.split={split}", "data.split_seeds=[0]", name=split)
        s = res.splits["0"]["A->B"]
        key = "characters" if split == "persona" else "scenarios"
        assert not set(s["train"][key]) & set(s["test"][key])


def test_wandb_offline_run_and_refusing_to_overwrite(tmp_path, linear, monkeypatch):
    monkeypatch.delenv("WANDB_API_KEY", raising=False)
    monkeypatch.delenv("WANDB_SILENT", raising=False)
    monkeypatch.setenv("WANDB_MODE", "offline")
    cfg = load_config(FitConfig, [f"out={tmp_path / 'w'}", f"data.cache={linear}", "data.split_seeds=[0]", "progress=false",
                                   "partition.baselines=[own_past]"], prog="t")
    run_fit(cfg)
    assert "WANDB_SILENT" not in os.environ  # quiet through the run's settings, not the process environment
    runs = list((tmp_path / "w" / "wandb").glob("offline-run-*"))
    assert runs and list(runs[0].glob("*.wandb"))
    logged = next(runs[0].glob("*.wandb")).read_bytes()  # the offline run's records
    assert b"partition/own_past/unique" in logged and b"partition_matrix" in logged and b"sync_r2" in logged
    assert b"sync_r2_ci95_low/A_to_B" in logged and b"partition/own_past/B_to_A/unique_ci95_high" in logged  # each direction's own
    from nsync.errors import NsyncError

    with pytest.raises(NsyncError, match="overwrite=true"):
        run_fit(cfg)


@pytest.mark.slow
def test_cli_reports_typos_and_missing_cache(tmp_path):
    res = subprocess.run([sys.executable, "-m", "nsync.fit", f"out={tmp_path}/x", "data.cache=/nope", "data.splt=persona"],
                         capture_output=True, text=True)
    assert res.returncode == 2 and "unknown config key 'data.splt'" in res.stderr and "data.split" in res.stderr
    res = subprocess.run([sys.executable, "-m", "nsync.fit", f"out={tmp_path}/x", "data.cache=/nope", "logger.kind=none"],
                         capture_output=True, text=True)
    assert res.returncode == 2 and "not an nsync activation cache" in res.stderr and "Traceback" not in res.stderr


@pytest.mark.slow
@pytest.mark.parametrize(("solver", "hidden"), [("primal", 8), ("dual", 8), ("dual", 300)], ids=["primal", "dual", "dual-kernel"])
def test_affine_fit_under_ddp_equals_one_process(tmp_path, solver, hidden):
    """Two processes (gloo on CPU) each fit their share of the rows; the all-reduced sums (primal)
    or the gathered rows (dual; with 300 dimensions for about 190 training rows, its kernel form)
    give the same results as one process, and only rank 0 writes."""
    cache = write_synthetic_cache(tmp_path / "c", "linear", n_episodes=60, turns=8, hidden=hidden, massive=3000.0, dtype="float16")
    common = [sys.executable, "-m", "nsync.fit", f"data.cache={cache}", "logger.kind=none", "progress=false", "data.split_seeds=[0,1]",
              "affine.alphas=[0.1,10]", "bootstrap=100", f"affine.solver={solver}"]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    for devices in (1, 2):
        res = subprocess.run([*common, f"out={tmp_path / f'd{devices}'}", f"devices={devices}"], capture_output=True, text=True, env=env, timeout=600)
        assert res.returncode == 0, res.stderr[-2000:]
    one, two = FitResult.load(tmp_path / "d1"), FitResult.load(tmp_path / "d2")
    assert two.sync_r2 == pytest.approx(one.sync_r2, abs=1e-6)  # float32 products in another order
    assert two.sync_r2 > 0.1 or hidden == 300  # 300 dimensions from ~190 rows: no signal left, the R² matrices are compared
    for direction in one.directions:
        a, b = one.directions[direction], two.directions[direction]
        assert b.chosen_target_layer == a.chosen_target_layer
        np.testing.assert_allclose(np.array(b.r2, dtype=float), np.array(a.r2, dtype=float), atol=1e-6)
        assert b.alpha == a.alpha and b.n_train == a.n_train and b.n_test == a.n_test
    assert two.sync_r2_ci95 == pytest.approx(one.sync_r2_ci95, abs=1e-6)
    assert not list(tmp_path.glob("d2/.*tmp"))


def test_alpha_grid_with_a_constant_target_layer(tmp_path, caplog):
    """The embedding at the last prompt token is constant: it has no R², and it must neither pick
    the alpha (a NaN mean made argmax take the first alpha every time) nor change other layers' R²."""
    cache = write_synthetic_cache(tmp_path / "c", "linear", n_episodes=80, turns=8, hidden=24, noise=2.5, constant_first_layer=True)
    common = ["data.split_seeds=[0]", "data.directions=[A->B]", "affine.alphas=[0.1,1000]", "data.val_size=0.25", "bootstrap=0"]
    every = _fit(tmp_path, cache, *common, "data.target_layers=[0,1,2]", name="all")  # named: the constant one too
    some = _fit(tmp_path, cache, *common, "data.target_layers=[1,2]", name="some")
    r2_all, r2_some = np.array(every.directions["A->B"].r2, dtype=float), np.array(some.directions["A->B"].r2, dtype=float)
    assert np.isnan(r2_all[:, 0]).all()  # constant target: no R²
    np.testing.assert_allclose(r2_all[:, 1:], r2_some, atol=1e-9)  # the constant layer changes nothing else
    alpha = np.array(every.directions["A->B"].alpha[0], dtype=float)
    # 24 noisy inputs, ~200 rows: shrinkage wins (source layer 0 is constant: every alpha predicts the mean)
    assert np.isnan(alpha[:, 0]).all() and (alpha[1:, 1:] == 1000).all()
    assert r2_all[1:, 1:].min() > 0.02
    # not named: the constant target layer is left out, with one info line (no warning)
    caplog.clear()
    with caplog.at_level("INFO"):
        default = _fit(tmp_path, cache, *common, name="default")
    assert default.target_layers == [1, 2] and "target layers [0] (embed) hold the same state in every row" in caplog.text
    np.testing.assert_allclose(np.array(default.directions["A->B"].r2, dtype=float), r2_some, atol=1e-9)
    assert not [r for r in caplog.records if r.levelname == "WARNING" and "no validation R²" in r.getMessage()]
    # one alpha per source layer, from the mean over the target layers that have an R²
    per_source = _fit(tmp_path, cache, *common, "affine.alpha_per=source", name="per_source")
    assert (np.array(per_source.directions["A->B"].alpha[0], dtype=float)[1:] == 1000).all()


def test_a_results_file_of_another_shape_is_a_clear_error(tmp_path):
    from nsync.errors import NsyncError
    from nsync.fit.results import SCHEMA_VERSION

    (tmp_path / "results.json").write_text(json.dumps({"schema_version": SCHEMA_VERSION, "control": "partner"}))
    with pytest.raises(NsyncError, match="does not match results schema .*overwrite=true"):
        FitResult.load(tmp_path)


def test_syncr2_takes_the_target_layer_chosen_on_validation(tmp_path):
    cache = write_synthetic_cache(tmp_path / "c", "linear", n_episodes=80, turns=8, hidden=6, n_layers=3, scale=0.5)
    res = _fit(tmp_path, cache, "data.directions=[A->B]", "data.split_seeds=[0]")
    d = res.directions["A->B"]
    assert res.target_choice == d.target_choice == "validation"
    r2 = np.array(d.r2, dtype=float)
    chosen = [res.target_layers.index(t) for t in d.chosen_target_layer[0]]
    at_chosen = r2[np.arange(len(chosen)), chosen]
    # SyncR² is the clipped test R² at the chosen cells, averaged; the paper's rule takes each row's best
    assert d.sync_r2 == pytest.approx(np.clip(at_chosen, 0, None).mean(), abs=1e-12)
    np.testing.assert_allclose(d.r2_by_source_layer, at_chosen, atol=1e-12)
    assert d.sync_r2_test_picked == pytest.approx(np.clip(np.nanmax(r2, 1), 0, None).mean(), abs=1e-12)
    paper = _fit(tmp_path, cache, "data.directions=[A->B]", "data.split_seeds=[0]", "target_choice=test", name="paper")
    assert paper.target_choice == "test" and paper.sync_r2 == pytest.approx(paper.directions["A->B"].sync_r2_test_picked)
    assert paper.directions["A->B"].n_train == d.n_train  # validation rows are refitted into the probe
    np.testing.assert_allclose(np.array(paper.directions["A->B"].r2, dtype=float), r2, atol=1e-6)  # the same probes (float32 sums)


def test_overwrite_leaves_no_artefact_of_the_earlier_run(tmp_path, linear):
    _fit(tmp_path, linear, "data.split_seeds=[0]", "bootstrap=20", "save_weights=true")
    assert (tmp_path / "run" / "bootstrap.npy").is_file() and (tmp_path / "run" / "weights.safetensors").is_file()
    _fit(tmp_path, linear, "data.split_seeds=[0]", "bootstrap=0", "save_weights=false", "overwrite=true")
    left = sorted(p.name for p in (tmp_path / "run").iterdir() if not p.name.endswith(".png") and not p.name.startswith("."))
    assert left == ["config.yaml", "episode_sync.csv", "results.json"]  # nothing of the first run's bootstrap or weights


def test_a_results_file_of_another_schema_version_is_refused(tmp_path, linear):
    _fit(tmp_path, linear, "data.split_seeds=[0]", "data.directions=[A->B]", "bootstrap=0")
    raw = json.loads((tmp_path / "run" / "results.json").read_text())
    raw["schema_version"] = 2
    (tmp_path / "old").mkdir()
    (tmp_path / "old" / "results.json").write_text(json.dumps(raw))
    with pytest.raises(NsyncError, match="schema version 2, this nsync reads version 3; re-run"):
        FitResult.load(tmp_path / "old")


def test_too_few_training_episodes_for_validation_fall_back_to_the_test_side(tmp_path, caplog):
    cache = write_synthetic_cache(tmp_path / "c", "linear", n_episodes=4, turns=4, hidden=4, n_layers=1)
    res = _fit(tmp_path, cache, "data.split_seeds=[0]", "data.test_size=0.5", "bootstrap=0")
    assert res.target_choice == "test" and "chosen on the test side" in caplog.text
    from nsync.errors import NsyncError

    with pytest.raises(NsyncError, match="pairs left to fit after holding out validation"):  # an alpha grid needs them
        _fit(tmp_path, cache, "data.split_seeds=[0]", "data.test_size=0.5", "affine.alphas=[0.1,1]", "overwrite=true")


def test_an_undefined_syncr2_is_skipped_or_an_error_that_says_why(tmp_path, caplog):
    """10 episodes of 4 utterances: B->A has one pair per episode, too few to choose a target layer
    on validation. Beside A->B it is skipped with the reason (as a direction without pairs); alone
    the fit stops naming it, its test side and the way out."""
    cache = write_synthetic_cache(tmp_path / "c", "linear", n_episodes=10, turns=4, hidden=8)
    result = _fit(tmp_path, cache)
    assert list(result.directions) == ["A->B"] and np.isfinite(result.sync_r2)
    assert "no source layer has a SyncR²" in result.skipped_directions["B->A"]
    assert any(r.getMessage().startswith("skipping B->A: no source layer has a SyncR²") for r in caplog.records)
    with pytest.raises(NsyncError, match=r"SyncR² is undefined in every direction: B->A: no source layer .* simulate more or longer episodes"):
        _fit(tmp_path, cache, "data.directions=[B->A]", name="alone")
    assert json.loads((tmp_path / "alone" / "status.json").read_text())["state"] == "failed"


def test_too_few_test_episodes_print_raw_values_and_say_why(tmp_path, caplog, capsys):
    """Below MIN_TEST_EPISODES the intervals and p-values are stored, not printed; the headline says why."""
    from nsync.fit.summary import print_summary
    from nsync.stats.sample_size import MIN_TEST_EPISODES

    cache = write_synthetic_cache(tmp_path / "c", "linear", n_episodes=40, turns=6, hidden=8)  # 8 test episodes
    result = _fit(tmp_path, cache, "bootstrap=100", "surrogates.n=20")
    assert result.test_episodes == 8 < MIN_TEST_EPISODES and result.sync_r2_ci95 is not None and result.sync_r2_p_value is not None
    assert "only 8 test episodes, fewer than the 20" in result.few_test_episodes
    assert any("only 8 test episodes" in r.getMessage() for r in caplog.records if r.levelname == "WARNING")
    print_summary(result, load_config(FitConfig, [f"out={tmp_path / 'run'}", f"data.cache={cache}"], prog="test"))
    out = capsys.readouterr().out
    assert out.startswith(f"SyncR² {result.sync_r2:.3f} (raw; no interval: only 8 test episodes") and "permutation p-value" not in out
    enough = _fit(tmp_path, write_synthetic_cache(tmp_path / "d", "linear", n_episodes=100, turns=6, hidden=8), "bootstrap=100", name="enough")
    assert enough.test_episodes == 20 and enough.few_test_episodes is None and "[" in enough.headline()
