"""The captured states are the model's real hidden states, whatever the batch layout."""

import pytest
import torch

from nsync.models.tiny import tiny_model
from nsync.simulation.generation import Generator, SamplingConfig, prompt_states

TEXTS = [
    "Imagine you are Maya Okafor. Turn 0: Tomasz said: I would like to negotiate the price.",
    "Hi",
    "Scenario: two friends split a sofa, a television and a coffee machine.",
]


def _prompts(lm):
    return [lm.tokenizer(t)["input_ids"] for t in TEXTS]


@pytest.mark.parametrize("arch", ["llama", "qwen2", "gemma3", "gpt2"])
def test_captured_state_equals_separate_forward_pass(arch):
    lm = tiny_model(arch)
    prompts = _prompts(lm)
    out = Generator(lm, SamplingConfig(max_new_tokens=5)).generate(prompts, [torch.Generator() for _ in prompts])
    for i, p in enumerate(prompts):
        with torch.no_grad():
            ref = lm.model(torch.tensor([p]), output_hidden_states=True).hidden_states
        # hidden_states[l] is the input of block l, i.e. the output of block l - 1 ...
        for layer in range(lm.n_layers):
            torch.testing.assert_close(out.states[i, layer], ref[layer][0, -1], atol=1e-5, rtol=0)
        # ... and the last entry has the final norm applied; ours is the raw residual stream.
        final_norm = lm.model.model.norm if hasattr(lm.model, "model") else lm.model.transformer.ln_f
        with torch.no_grad():
            torch.testing.assert_close(final_norm(out.states[i, -1]), ref[-1][0, -1], atol=1e-5, rtol=0)


def test_batched_equals_one_at_a_time(tiny_llama):
    gen = Generator(tiny_llama, SamplingConfig(max_new_tokens=12, first_line_only=False))
    prompts = _prompts(tiny_llama)
    seeds = [11, 12, 13]
    batched = gen.generate(prompts, [torch.Generator().manual_seed(s) for s in seeds])
    for i, p in enumerate(prompts):
        single = gen.generate([p], [torch.Generator().manual_seed(seeds[i])])
        assert single.tokens[0] == batched.tokens[i]
        torch.testing.assert_close(single.states[0], batched.states[i], atol=1e-4, rtol=0)


@pytest.mark.parametrize("arch", ["llama", "gemma3"])
def test_prefix_reuse_gives_same_tokens_and_states(arch):
    lm = tiny_model(arch)  # tiny-gemma3: sliding window 64, prompts longer than it
    tok = lm.tokenizer
    base = tok(TEXTS[0] * 3)["input_ids"]
    assert len(base) > 64
    first = [base, base[:15]]
    second = [base + tok(" and more")["input_ids"], base[:15] + tok(" a longer new part")["input_ids"], base[:30]]
    reusing = Generator(lm, SamplingConfig(max_new_tokens=8, temperature=0))
    assert reusing.prefixes is not None and reusing.layout == ("any" if arch == "llama" else "contiguous")
    reusing.generate(first, [torch.Generator() for _ in first], keys=["a", "b"])
    got = reusing.generate(second, [torch.Generator() for _ in second], keys=["a", "b", "c"])
    if arch == "llama":
        assert reusing.prefixes.reused_tokens == len(base) + 15
    else:  # every row computes as many tokens as the one with the most new ones ("c": all 30)
        assert reusing.prefixes.reused_tokens == len(second[0]) - 30
    plain = Generator(lm, SamplingConfig(max_new_tokens=8, temperature=0))
    plain.prefixes = None
    want = plain.generate(second, [torch.Generator() for _ in second])
    assert got.tokens == want.tokens
    torch.testing.assert_close(got.states, want.states, atol=1e-5, rtol=0)


def test_prompt_states_match_generation_capture(tiny_llama):
    prompts = _prompts(tiny_llama)
    gen = Generator(tiny_llama, SamplingConfig(max_new_tokens=3)).generate(prompts, [torch.Generator() for _ in prompts])
    torch.testing.assert_close(prompt_states(tiny_llama, prompts), gen.states, atol=1e-5, rtol=0)


def test_generated_mean_is_mean_over_reply_tokens(tiny_llama):
    prompt = _prompts(tiny_llama)[0]
    out = Generator(tiny_llama, SamplingConfig(max_new_tokens=6, first_line_only=False)).generate(
        [prompt], [torch.Generator().manual_seed(0)], generated_mean=True
    )
    full = torch.tensor([prompt + out.tokens[0]])
    with torch.no_grad():
        # reference: a plain forward over prompt + reply; mean over the reply's positions
        hs = tiny_llama.model(full, output_hidden_states=True).hidden_states
    n = len(out.tokens[0])
    ref = torch.stack([h[0, -n:].mean(0) for h in hs[:-1]])
    torch.testing.assert_close(out.generated_mean[0, :-1], ref, atol=1e-5, rtol=0)


def test_stops_at_first_line_eos_and_max_tokens(tiny_llama, monkeypatch):
    """Each row stops on its own: after the token that completes its first line, at end of
    sequence, or at max_new_tokens; the others keep going."""
    import nsync.simulation.generation as generation

    tok = tiny_llama.tokenizer
    gen = Generator(tiny_llama, SamplingConfig(max_new_tokens=5, first_line_only=True))
    word = tok("hello", add_special_tokens=False)["input_ids"][0]
    newline = min(i for i in gen.newline_ids if tok.decode([i]) == "\n")
    eos = min(gen.eos_ids)
    script = [[word, word, newline, word, word, word], [word] * 6, [word, eos, word, word, word, word]]
    generators = [torch.Generator() for _ in script]
    row_of = {id(g): i for i, g in enumerate(generators)}
    steps = [0] * len(script)

    def scripted(logits, running, temperature, top_p):  # one token per running row, from its script
        out = []
        for g in running:
            row = row_of[id(g)]
            out.append(script[row][steps[row]])
            steps[row] += 1
        return torch.tensor(out)

    monkeypatch.setattr(generation, "_sample", scripted)
    out = gen.generate(_prompts(tiny_llama), generators)
    assert out.tokens == [script[0][:3], script[1][:5], script[2][:2]]


@pytest.mark.parametrize("setting", [dict(no_repeat_ngram=2), dict(repetition_penalty=1.5), dict(no_repeat_ngram=3, repetition_penalty=1.2)])
def test_repetition_settings_match_transformers_generate(tiny_llama, setting):
    """Greedy replies under no_repeat_ngram / repetition_penalty, batched, equal HF's
    ``generate`` with no_repeat_ngram_size / repetition_penalty one prompt at a time."""
    hf_names = {"no_repeat_ngram": "no_repeat_ngram_size", "repetition_penalty": "repetition_penalty"}
    prompts = _prompts(tiny_llama)
    gen = Generator(tiny_llama, SamplingConfig(temperature=0, max_new_tokens=12, first_line_only=False, **setting))
    got = gen.generate(prompts, [torch.Generator() for _ in prompts], capture=False).tokens
    plain = Generator(tiny_llama, SamplingConfig(temperature=0, max_new_tokens=12, first_line_only=False))
    assert plain.generate(prompts, [torch.Generator() for _ in prompts], capture=False).tokens != got  # the setting matters here
    eos = sorted(gen.eos_ids)
    for p, tokens in zip(prompts, got):
        with torch.no_grad():
            ref = tiny_llama.model.generate(torch.tensor([p]), do_sample=False, max_new_tokens=12, eos_token_id=eos,
                                            pad_token_id=tiny_llama.tokenizer.pad_token_id,
                                            **{hf_names[k]: v for k, v in setting.items()})[0, len(p):].tolist()
        assert tokens == ref
    if "no_repeat_ngram" in setting:
        n = setting["no_repeat_ngram"]
        for p, tokens in zip(prompts, got):
            seq = p + tokens
            grams = [tuple(seq[i : i + n]) for i in range(len(seq) - n + 1)]
            new = grams[len(p) - n + 1 :]  # every n-gram that ends in the reply
            assert all(g not in grams[:i + len(p) - n + 1] for i, g in enumerate(new))
