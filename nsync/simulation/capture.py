"""Capture by re-reading: every layer's state at the end of many prompts from few forward passes.

The state at a prompt's last token depends only on the prompt, so generation and capture can be
separated: the text may come from any engine (:mod:`nsync.simulation.remote`), and the states are
read afterwards by the model's weights in ``transformers``, prefill only. A causal model's state at
a position depends only on the tokens up to it, so a prompt that is a prefix of a longer one is read
inside that one's pass: where a prompt format only appends (the ``chat`` format: each of an agent's
speaking prompts is a prefix of its next), one pass over an agent's whole conversation gives its
state at every cue. Which prompts share a pass is found by comparing tokens
(:func:`plan_readings`), so no format has to declare it.

>>> plan = plan_readings([[1, 2, 3], [1, 2], [1, 9]])
>>> [(r.tokens, r.ends) for r in plan]
[([1, 2, 3], [(0, 2), (1, 1)]), ([1, 9], [(2, 1)])]
"""

from __future__ import annotations

from collections.abc import Hashable, Sequence
from dataclasses import dataclass, field

import torch

from nsync.simulation.generation import Generator, HiddenStateRecorder, PrefixStore, SamplingConfig  # noqa: F401  (SamplingConfig: the example)


@dataclass
class Reading:
    """One forward pass: its tokens and the prompts read in it (``(prompt index, position of the
    prompt's last token)``)."""

    tokens: list[int]
    ends: list[tuple[int, int]] = field(default_factory=list)


def plan_readings(prompts: Sequence[list[int]], groups: Sequence[Hashable] | None = None) -> list[Reading]:
    """The fewest passes that read every prompt: longest first, each prompt joins the first pass
    (of its ``group``, e.g. its run: prompts of different runs never share a prefix worth a look)
    whose tokens start with it, or starts a pass of its own. Identical prompts share one."""
    order = sorted(range(len(prompts)), key=lambda i: -len(prompts[i]))
    by_group: dict[Hashable, list[Reading]] = {}
    plan: list[Reading] = []
    for i in order:
        prompt = list(prompts[i])
        if not prompt:
            raise ValueError(f"prompt {i} is empty: there is no last token to read")
        candidates = by_group.setdefault(None if groups is None else groups[i], [])
        n = len(prompt)
        for reading in candidates:
            if reading.tokens[n - 1] == prompt[-1] and reading.tokens[:n] == prompt:  # last token first: a cheap reject
                reading.ends.append((i, n - 1))
                break
        else:
            reading = Reading(prompt, [(i, n - 1)])
            candidates.append(reading)
            plan.append(reading)
    return plan


@torch.inference_mode()
def read_states(
    generator: Generator,
    prompts: Sequence[list[int]],
    groups: Sequence[Hashable] | None = None,
    max_batch_tokens: int = 16384,
    single_pass: bool = False,
) -> torch.Tensor:
    """``[len(prompts), n_layers + 1, hidden]`` float32: each prompt's state at its last token, as
    the generation's capture records it (:class:`~nsync.simulation.generation.HiddenStateRecorder`).

    ``groups`` name whose prompts each is (e.g. run, agent and view): with ``single_pass``, prompts
    that are prefixes of a longer one are read in its pass (:func:`plan_readings`), else each in a
    pass of its own (the same tokens computed, with less padding: faster on a CPU); the passes run
    shortest first, each re-using the keys and values of the group's previous pass for their common
    prefix (as generation does), so a format that re-renders its prompt every turn still computes
    mostly what is new. Passes of one round are batched, left-padded, up to ``max_batch_tokens``
    padded tokens per batch.

    >>> from nsync.models.tiny import tiny_model
    >>> lm = tiny_model("llama")
    >>> read_states(Generator(lm, SamplingConfig()), [[5, 6, 7], [5, 6]]).shape[0]
    2
    """
    groups = list(groups) if groups is not None else list(range(len(prompts)))
    if single_pass:
        plan = plan_readings(prompts, groups)
    else:
        plan = [Reading(list(p), [(i, len(p) - 1)]) for i, p in enumerate(prompts)]
    group_of = {id(r): groups[r.ends[0][0]] for r in plan}
    per_group: dict[Hashable, list[Reading]] = {}
    for reading in plan:
        per_group.setdefault(group_of[id(reading)], []).append(reading)
    # round r holds every group's r-th pass, shortest first: what a pass re-uses was computed in an earlier round
    rounds: list[list[Reading]] = []
    for readings in per_group.values():
        for r, reading in enumerate(sorted(readings, key=lambda x: len(x.tokens))):
            if r == len(rounds):
                rounds.append([])
            rounds[r].append(reading)
    store = PrefixStore() if generator.layout is not None else None
    out: torch.Tensor | None = None
    for batch in (b for readings in rounds for b in _batches(readings, max_batch_tokens)):
        k = max(len(r.ends) for r in batch)
        # positions counted from each row's end (-1: its last token), which is the last column
        # whatever was re-used and however the rows are padded; short rows repeat their last end
        back = torch.tensor([[p - len(r.tokens) for _, p in r.ends] + [-1] * (k - len(r.ends)) for r in batch])
        # a pass re-uses no more of its group's previous pass than reaches its first prompt end
        reuse_up_to = [min(p for _, p in r.ends) for r in batch]
        keys = [group_of[id(r)] for r in batch] if store is not None else None
        with HiddenStateRecorder(generator.lm.model, back) as recorder:
            generator.prefill([r.tokens for r in batch], keys, store, reuse_up_to)
            states = recorder.pop().cpu()  # [batch, k, n_layers + 1, hidden]
        if out is None:
            out = torch.empty(len(prompts), *states.shape[2:])
        for row, reading in enumerate(batch):
            for j, (i, _) in enumerate(reading.ends):
                out[i] = states[row, j]
    return out if out is not None else torch.empty(0)


def _batches(readings: list[Reading], max_batch_tokens: int) -> list[list[Reading]]:
    """Batches of similar length, each at most ``max_batch_tokens`` padded tokens (at least one
    pass), counting the re-used prefix too: its keys and values are held for the batch."""
    ordered = sorted(readings, key=lambda r: len(r.tokens))
    out: list[list[Reading]] = []
    for reading in ordered:
        if out and (len(out[-1]) + 1) * len(reading.tokens) <= max_batch_tokens:
            out[-1].append(reading)
        else:
            out.append([reading])
    return out
