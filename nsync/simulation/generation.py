"""Batched sampling that records every layer's hidden state from the generation's own passes.

Why not ``model.generate``: it samples a whole batch from one random stream, so an episode's
text would depend on which other episodes share its batch. Here every row has its own
``torch.Generator``, so batched and one-at-a-time runs give the same transcripts, and a row
stops as soon as its first line is complete.
"""

from __future__ import annotations

import contextlib
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from nsync.models import LoadedModel
from nsync.models.forward import accepts, cache_kwarg, decoder_layers, kv_cache
from nsync.simulation.config import SamplingConfig


class HiddenStateRecorder:
    """Forward hooks that keep the residual stream at chosen positions of each forward call.

    Row ``0`` of the result is the embedding output (the input of the first block), row
    ``i`` the output of block ``i - 1``: the raw residual stream, before any final norm.
    By default only the last position is copied, so a long prompt's activations are never held;
    with ``positions`` (``[batch, k]`` indices) the states at those positions of each row are
    (re-reading: many prompt ends from one pass, :mod:`nsync.simulation.capture`).
    """

    def __init__(self, model: nn.Module, positions: torch.Tensor | None = None):
        self.layers = decoder_layers(model)
        self.enabled = True
        self.positions = positions
        self._current: list[torch.Tensor | None] = [None] * (len(self.layers) + 1)
        self._handles: list = []

    def _take(self, h: torch.Tensor) -> torch.Tensor:
        if self.positions is None:
            return h[:, -1, :].detach().clone()
        rows = torch.arange(h.shape[0], device=h.device)[:, None]
        return h[rows, self.positions.to(h.device)].detach()  # advanced indexing copies

    def __enter__(self) -> HiddenStateRecorder:
        def pre_hook(module, args, kwargs):
            if self.enabled:
                self._current[0] = self._take(args[0] if args else kwargs["hidden_states"])

        def make_hook(i: int):
            def hook(module, args, output):
                if self.enabled:
                    self._current[i + 1] = self._take(output[0] if isinstance(output, tuple) else output)

            return hook

        self._handles.append(self.layers[0].register_forward_pre_hook(pre_hook, with_kwargs=True))
        for i, layer in enumerate(self.layers):
            self._handles.append(layer.register_forward_hook(make_hook(i)))
        return self

    def __exit__(self, *exc) -> None:
        for handle in self._handles:
            handle.remove()
        self._handles.clear()

    def pop(self) -> torch.Tensor:
        """States of the last forward call in float32: ``[batch, n_layers + 1, hidden]``, or with
        ``positions`` ``[batch, k, n_layers + 1, hidden]``."""
        if any(t is None for t in self._current):
            raise RuntimeError("no forward pass was recorded")
        out = torch.stack([t.float() for t in self._current], dim=-2)  # type: ignore[union-attr]
        self._current = [None] * len(self._current)
        return out


def reply_complete(text: str, sampling: SamplingConfig) -> bool:
    """Whether a reply generated so far (its text) needs no more tokens: its first non-empty line
    is complete (``first_line_only``) or it holds a stop string. Every generation backend stops by
    this rule, so their replies end at the same token."""
    if sampling.first_line_only and "\n" in text.lstrip():
        return True
    return any(stop in text for stop in sampling.stop_strings if stop)


@dataclass
class Generation:
    """One batched reply: per row the generated token ids and the captured states."""

    tokens: list[list[int]]
    prompt_lengths: list[int]
    states: torch.Tensor | None  # [batch, n_layers + 1, hidden] at the last prompt token
    generated_mean: torch.Tensor | None = None  # [batch, n_layers + 1, hidden]


def _sample(logits: torch.Tensor, generators: list[torch.Generator], temperature: float, top_p: float) -> torch.Tensor:
    """One token per row, each row drawn from its own generator."""
    if temperature <= 0:
        return logits.argmax(dim=-1)
    probs = torch.softmax(logits.float() / temperature, dim=-1)
    if top_p < 1.0:
        sorted_p, order = probs.sort(dim=-1, descending=True)
        drop = sorted_p.cumsum(dim=-1) - sorted_p > top_p  # keep the smallest set reaching top_p
        sorted_p = sorted_p.masked_fill(drop, 0.0)
        probs = torch.zeros_like(probs).scatter(-1, order, sorted_p)
    return torch.stack([torch.multinomial(probs[i], 1, generator=g)[0] for i, g in enumerate(generators)])


def left_pad(prompts: list[list[int]], pad_id: int, device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
    """Token ids and attention mask, padded on the left so every prompt ends at the last column."""
    width = max(len(p) for p in prompts)
    ids = torch.full((len(prompts), width), pad_id, dtype=torch.long)
    mask = torch.zeros((len(prompts), width), dtype=torch.long)
    for i, p in enumerate(prompts):
        ids[i, width - len(p) :] = torch.tensor(p, dtype=torch.long)
        mask[i, width - len(p) :] = 1
    return ids.to(device), mask.to(device)


def prefix_layout(model: nn.Module) -> str | None:
    """How cached keys/values of a prompt prefix can be re-used in a new batch layout.

    ``any``: full-attention decoders (Llama, Mistral, Qwen2, GPT-2): a row's cached prefix and its
    new tokens may sit anywhere in the padded batch. ``contiguous``: models with sliding-window
    layers (Gemma 3): the window is measured in cache columns, so each row's prefix and new tokens
    must be adjacent (every row's pads on the left). None: other attention types, no re-use.
    """
    config: Any = model.config  # a transformers config (nn.Module does not declare it)
    cfg = config.get_text_config() if hasattr(config, "get_text_config") else config
    layer_types = getattr(cfg, "layer_types", None)
    if layer_types is not None:
        kinds = set(layer_types)
        if kinds == {"full_attention"}:
            return "any"
        return "contiguous" if kinds <= {"full_attention", "sliding_attention"} else None
    sliding = getattr(cfg, "sliding_window", None) is not None and getattr(cfg, "use_sliding_window", True)
    return "contiguous" if sliding else "any"


def _growing_cache():
    """A DynamicCache whose layers append into spare capacity instead of ``torch.cat``.

    HF's DynamicLayer copies the whole cache at every decoding step (``torch.cat``); with long
    prompts and 16 rows that copy took about a quarter of each step on a CPU. Falls back to a
    plain DynamicCache on transformers versions without per-layer cache classes.
    """
    from transformers import DynamicCache

    try:
        from transformers.cache_utils import Cache, DynamicLayer
    except ImportError:
        return DynamicCache()

    class GrowingLayer(DynamicLayer):
        def update(self, key_states, value_states, *args, **kwargs):
            if not self.is_initialized:
                self.lazy_initialization(key_states, value_states)
                self._k = self._v = None
                self._len = 0
            n = key_states.shape[-2]
            if self._k is None or self._len + n > self._k.shape[-2] or self._k.shape[0] != key_states.shape[0]:
                capacity = max(2 * (self._len + n), self._len + n + 64)
                k = key_states.new_empty(*key_states.shape[:-2], capacity, key_states.shape[-1])
                v = value_states.new_empty(*value_states.shape[:-2], capacity, value_states.shape[-1])
                if self._len:
                    k[..., : self._len, :] = self._k[..., : self._len, :]
                    v[..., : self._len, :] = self._v[..., : self._len, :]
                self._k, self._v = k, v
            self._k[..., self._len : self._len + n, :] = key_states
            self._v[..., self._len : self._len + n, :] = value_states
            self._len += n
            self.keys, self.values = self._k[..., : self._len, :], self._v[..., : self._len, :]
            return self.keys, self.values

        def batch_select_indices(self, indices: torch.Tensor) -> None:
            if self.is_initialized and self._k is not None:
                self._k, self._v = self._k[indices], self._v[indices]
                self.keys, self.values = self._k[..., : self._len, :], self._v[..., : self._len, :]

    cache = DynamicCache()
    Cache.__init__(cache, layer_class_to_replicate=GrowingLayer)
    return cache


def _layer_kv(cache, layer: int) -> tuple[torch.Tensor, torch.Tensor]:
    if hasattr(cache, "layers"):
        return cache.layers[layer].keys, cache.layers[layer].values
    return cache.key_cache[layer], cache.value_cache[layer]


class PrefixStore:
    """Keys and values of each agent's last prompt, so its next prompt only computes what is new.

    Prompts in every format grow mostly at the end (the history gains lines, the final cue
    changes), so the longest common token prefix with the previous prompt is re-used and
    only the rest goes through the model.
    """

    def __init__(self) -> None:
        self._entries: dict[object, tuple[list[int], list[tuple[torch.Tensor, torch.Tensor]]]] = {}
        self.reused_tokens = 0
        self.computed_tokens = 0

    def lookup(self, key: object, prompt: list[int], up_to: int | None = None) -> tuple[int, list[tuple[torch.Tensor, torch.Tensor]] | None]:
        """Length of the re-usable prefix (at most ``up_to``; at least one token is always left to compute)."""
        entry = self._entries.get(key)
        if entry is None:
            return 0, None
        ids, kv = entry
        n = 0
        limit = min(len(ids), len(prompt) - 1, len(prompt) if up_to is None else up_to)
        while n < limit and ids[n] == prompt[n]:
            n += 1
        return n, kv

    def put(self, key: object, prompt: list[int], kv: list[tuple[torch.Tensor, torch.Tensor]]) -> None:
        self._entries[key] = (prompt, kv)

    def drop(self, predicate) -> None:
        """Forget every entry whose key satisfies ``predicate`` (finished episodes)."""
        for key in [k for k in self._entries if predicate(k)]:
            del self._entries[key]


class Generator:
    """Batched, left-padded generation with hidden-state capture for one model."""

    def __init__(self, lm: LoadedModel, sampling: SamplingConfig):
        self.lm = lm
        self.sampling = sampling
        tok = lm.tokenizer
        eos = {tok.eos_token_id} if tok.eos_token_id is not None else set()
        gen_eos = getattr(getattr(lm.model, "generation_config", None), "eos_token_id", None)
        eos |= set(gen_eos if isinstance(gen_eos, list) else [gen_eos] if gen_eos is not None else [])
        self.eos_ids = eos
        # Token ids whose text holds a newline: only after one of those can a first line be complete.
        vocab = tok.convert_ids_to_tokens(list(range(len(tok))))
        self.newline_ids = {i for i, t in enumerate(vocab) if t is not None and ("\n" in t or "Ċ" in t or "<0x0A>" in t)}
        self._logits_to_keep = accepts(lm.model, "logits_to_keep")
        # transformers 5.2x renamed `past_key_values` to `cache`; support both.
        self._cache_arg = cache_kwarg(lm.model)
        self.layout = prefix_layout(lm.model)
        self.prefixes = PrefixStore() if self.layout is not None else None
        self.processors = sampling.logits_processors()

    def _done(self, row_tokens: list[int], token: int) -> bool:
        if token in self.eos_ids or len(row_tokens) >= self.sampling.max_new_tokens:
            return True
        s = self.sampling
        if s.first_line_only and token in self.newline_ids:
            return reply_complete(self.lm.tokenizer.decode(row_tokens, skip_special_tokens=True), s)
        # stop strings are looked for in the last tokens only: decoding the whole reply every step would cost more
        return bool(s.stop_strings) and reply_complete(self.lm.tokenizer.decode(row_tokens[-16:], skip_special_tokens=True), s)

    def prefill(
        self,
        prompts: list[list[int]],
        keys: Sequence[object] | None = None,
        store: PrefixStore | None = None,
        reuse_up_to: Sequence[int] | None = None,
    ):
        """One forward pass over the prompts (or what is new in them); returns the model output,
        the attention mask and the last positions, ready for decoding. ``store`` replaces the
        generator's own prefix store; ``reuse_up_to`` caps each row's re-used prefix (re-reading
        needs states at earlier positions than the last)."""
        lm, store = self.lm, store if store is not None else self.prefixes
        device = lm.device
        pad = lm.tokenizer.pad_token_id
        if store is None or keys is None:
            ids, mask = left_pad(prompts, pad, device)
            positions = (mask.cumsum(-1) - 1).clamp(min=0)
            return self._forward(ids, mask, positions, _growing_cache()), mask, positions
        caps = reuse_up_to if reuse_up_to is not None else [None] * len(prompts)
        found = [store.lookup(k, p, cap) for k, p, cap in zip(keys, prompts, caps, strict=True)]
        reused = [n for n, _ in found]
        if self.layout == "contiguous":
            # Every row computes as many tokens as the row with the most new ones (re-using a little
            # less of its prefix), so no row has pads between its prefix and its new tokens.
            width = max(len(p) - n for p, n in zip(prompts, reused, strict=True))
            reused = [max(0, len(p) - width) for p in prompts]
        p_max = max(reused)
        suffix_ids, suffix_mask = left_pad([p[n:] for p, n in zip(prompts, reused, strict=True)], pad, device)
        prefix_mask = torch.zeros((len(prompts), p_max), dtype=torch.long, device=device)
        cache = _growing_cache()
        if p_max:
            n_layers = len(next(kv for _, kv in found if kv is not None))
            for layer in range(n_layers):
                ref_k, ref_v = next(kv for _, kv in found if kv is not None)[layer]
                k_all = ref_k.new_zeros((len(prompts), ref_k.shape[0], p_max, ref_k.shape[2]))
                v_all = ref_v.new_zeros((len(prompts), ref_v.shape[0], p_max, ref_v.shape[2]))
                for i, (n, (_, kv)) in enumerate(zip(reused, found, strict=True)):
                    if n and kv is not None:  # right-align each row's prefix so the new tokens follow it directly (n > 0: kv found)
                        k_all[i, :, p_max - n :] = kv[layer][0][:, :n]
                        v_all[i, :, p_max - n :] = kv[layer][1][:, :n]
                cache.update(k_all, v_all, layer)
            for i, n in enumerate(reused):
                prefix_mask[i, p_max - n :] = 1
        mask = torch.cat([prefix_mask, suffix_mask], dim=1)
        offsets = torch.tensor(reused, device=device)[:, None]
        positions = (offsets + suffix_mask.cumsum(-1) - 1).clamp(min=0)
        out = self._forward(suffix_ids, mask, positions, cache)
        new_cache = kv_cache(out)
        n_layers = len(new_cache.layers) if hasattr(new_cache, "layers") else len(new_cache.key_cache)
        layer_kv = [_layer_kv(new_cache, layer) for layer in range(n_layers)]
        for i, (key, prompt) in enumerate(zip(keys, prompts, strict=True)):
            cols = mask[i].nonzero().squeeze(-1)  # this row's prompt tokens, in order
            store.put(key, prompt, [(k[i][:, cols].clone(), v[i][:, cols].clone()) for k, v in layer_kv])
        store.reused_tokens += sum(reused)
        store.computed_tokens += sum(len(p) - n for p, n in zip(prompts, reused, strict=True))
        return out, mask, positions[:, -1:]

    @torch.inference_mode()
    def prompt_states(self, prompts: list[list[int]], keys: Sequence[object] | None = None) -> torch.Tensor:
        """``[batch, n_layers + 1, hidden]`` states at each prompt's last token, no sampling
        (the observer control and teacher-forced re-reading use this)."""
        with HiddenStateRecorder(self.lm.model) as recorder:
            self.prefill(prompts, keys)
            return recorder.pop()

    def _forward(self, ids, mask, positions, cache):
        kwargs = dict(input_ids=ids, attention_mask=mask, position_ids=positions, use_cache=True)
        kwargs[self._cache_arg] = cache
        if self._logits_to_keep:
            kwargs["logits_to_keep"] = 1  # the prompt's logits are never needed
        return self.lm.model(**kwargs)

    @torch.inference_mode()
    def generate(
        self,
        prompts: list[list[int]],
        generators: list[torch.Generator],
        capture: bool = True,
        generated_mean: bool = False,
        keys: Sequence[object] | None = None,
    ) -> Generation:
        """Sample one reply per prompt (token ids) and capture the prompt-end states.

        ``keys`` name whose prompt each row is (e.g. run and agent); with them, the keys and
        values of the row's previous prompt are re-used for the shared prefix.
        """
        batch = len(prompts)
        recorder = HiddenStateRecorder(self.lm.model) if capture or generated_mean else None
        tokens: list[list[int]] = [[] for _ in range(batch)]
        sums = None
        states = None
        with recorder if recorder is not None else contextlib.nullcontext():
            out, mask, positions = self.prefill(prompts, keys)
            if recorder is not None:
                states = recorder.pop()
                recorder.enabled = generated_mean
            rows = list(range(batch))  # the original row of each position in the running batch
            while rows:
                logits = out.logits[:, -1, :]
                if self.processors is not None:  # each row's own prompt and reply so far, without pads
                    logits = torch.cat(
                        [
                            self.processors(torch.tensor([prompts[r] + tokens[r]], device=logits.device), logits[pos : pos + 1].float())
                            for pos, r in enumerate(rows)
                        ]
                    )
                nxt = _sample(logits, [generators[r] for r in rows], self.sampling.temperature, self.sampling.top_p)
                finished = []
                for pos, r in enumerate(rows):
                    tokens[r].append(int(nxt[pos]))
                    if self._done(tokens[r], tokens[r][-1]):
                        finished.append(pos)
                if generated_mean:
                    # the new tokens belong to their replies: feed them all, then drop finished rows
                    out, mask, positions = self._decode(nxt, mask, positions, out)
                    step = recorder.pop()  # type: ignore[union-attr]
                    idx = torch.tensor(rows)
                    sums = torch.zeros(batch, *step.shape[1:]).index_add_(0, idx, step) if sums is None else sums.index_add_(0, idx, step)
                keep = [pos for pos in range(len(rows)) if pos not in set(finished)]
                if not keep:
                    break
                if finished:
                    # finished rows leave the batch, so later steps compute only the rows still talking
                    index = torch.tensor(keep, device=mask.device)
                    kv_cache(out).batch_select_indices(index)
                    mask, positions, nxt = mask[index], positions[index], nxt[index]
                    out.logits = out.logits[index]
                    rows = [rows[pos] for pos in keep]
                if not generated_mean:
                    out, mask, positions = self._decode(nxt, mask, positions, out)
        mean = sums / torch.tensor([len(t) for t in tokens], dtype=sums.dtype)[:, None, None] if sums is not None else None
        return Generation(tokens, [len(p) for p in prompts], states if capture else None, mean)

    def _decode(self, nxt: torch.Tensor, mask: torch.Tensor, positions: torch.Tensor, out):
        """Feed one new token per running row."""
        mask = torch.cat([mask, mask.new_ones((mask.shape[0], 1))], dim=1)
        positions = positions[:, -1:] + 1
        return self._forward(nxt[:, None], mask, positions, kv_cache(out)), mask, positions


def prompt_states(lm: LoadedModel, prompts: list[list[int]]) -> torch.Tensor:
    """States at the last token of each prompt from one batched forward pass (no sampling)."""
    return Generator(lm, SamplingConfig()).prompt_states(prompts)
