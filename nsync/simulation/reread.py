"""Teacher-forced re-reading of a cache's transcripts by another network (no generation).

``python -m nsync reread`` adds a model's states to an existing cache, one row per utterance
(condition ``teacher_forced``, aligned with the interactive rows), for two controls:

- ``kind=untrained``: the same architecture with random weights reads every speaker's prompt
  exactly as the speaker saw it: how much of R² the text carries through a network that knows
  nothing.
- ``kind=trained``: a model as loaded reads the prompts (a model that did not take part).
- ``kind=text``: a sentence embedding of the source utterance and the history before it
  (``Turn k: NAME said: ...`` lines up to and including utterance ``t``): the text-only baseline.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Optional

import numpy as np
import pandas as pd
from omegaconf import MISSING
from tqdm.auto import tqdm

from nsync.cache import ActivationCache, CacheWriter, ModelInfo
from nsync.errors import NsyncError, configure_logging

log = logging.getLogger("nsync.reread")
KINDS = ("untrained", "trained", "text")


@dataclass
class RereadConfig:
    """Add teacher-forced states of another network to an activation cache."""

    cache: str = field(default=MISSING, metadata={"help": "activation cache folder (from nsync simulate)"})
    kind: str = field(default="untrained", metadata={"help": f"one of {KINDS}"})
    model: Optional[str] = field(
        default=None,
        metadata={"help": "zoo model (untrained/trained; default: the cache's first model) or text embedder (text; default all-minilm-l6-v2)"},
    )
    name: Optional[str] = field(default=None, metadata={"help": "model name in the cache (default: MODEL@untrained, MODEL@reread, or text:EMBEDDER)"})
    init_seed: int = field(default=0, metadata={"help": "seed of the untrained weights"})
    scenarios: Optional[str] = field(
        default=None, metadata={"help": "scenario source for the prompts (default: the one the cache was simulated from)"}
    )
    prompt_format: Optional[str] = field(default=None, metadata={"help": "prompt format (default: the cache's)"})
    device: str = field(default="cpu", metadata={"help": "cpu, cuda, cuda:N or auto"})
    dtype: str = field(default="float32", metadata={"help": "model precision"})
    batch_size: int = field(default=16, metadata={"help": "runs read together"})
    max_text_tokens: int = field(default=256, metadata={"help": "text embedder window; longer histories keep their end"})
    progress: bool = field(default=True, metadata={"help": "show a progress bar"})

    def __post_init__(self) -> None:
        if self.kind not in KINDS:
            raise NsyncError(f"kind must be one of {KINDS}, got '{self.kind}'")
        if self.batch_size < 1:
            raise NsyncError("batch_size must be at least 1")


def _utterances(cache: ActivationCache) -> pd.DataFrame:
    """One row per (run, utterance): the interactive rows, in run and utterance order."""
    t = cache.turns
    inter = t[t["condition"] == "interactive"]
    return inter.sort_values(["run_id", "utterance"]).drop(columns=["row"]).reset_index(drop=True)


def reread(cfg: RereadConfig, lm=None, embedder=None) -> tuple[str, int]:
    """Add ``cfg.kind`` states to the cache; return (model name in the cache, rows added).
    ``lm`` / ``embedder`` override loading (tests pass tiny models)."""
    cache = ActivationCache.open(cfg.cache)
    utt = _utterances(cache)
    if cfg.kind == "text":
        from nsync.models import TextEmbedder

        embedder = embedder or TextEmbedder(cfg.model or "all-minilm-l6-v2", cfg.device, cfg.max_text_tokens)
        name = cfg.name or f"text:{embedder.name}"
        info = ModelInfo(name, f"text:{embedder.path}", None, 0, embedder.hidden_size, ["mean_pool"], derived={"kind": "text"})
    else:
        from nsync.models import ModelConfig, load_model, untrained_copy

        if lm is None:
            base = cfg.model or cache.simulated_models[0]
            lm = load_model(ModelConfig(name=base, device=cfg.device, dtype=cfg.dtype))
            if cfg.kind == "untrained":
                lm = untrained_copy(lm, cfg.init_seed)
        name = cfg.name or (lm.name if cfg.kind == "untrained" else f"{lm.name}@reread")
        derived = {"kind": cfg.kind} | ({"init_seed": cfg.init_seed} if cfg.kind == "untrained" else {})
        info = ModelInfo(name, lm.source, lm.checksum, lm.n_layers, lm.hidden_size, derived=derived)
    if name in cache.manifest["models"] and not cache.manifest["models"][name].get("derived"):
        raise NsyncError(f"'{name}' is a simulated model of this cache; choose another name")
    done = set(cache.turns.loc[(cache.turns["model"] == name) & (cache.turns["condition"] == "teacher_forced"), "run_id"])
    todo = utt[~utt["run_id"].isin(done)]
    if todo.empty:
        log.info("%s already holds teacher-forced states of %s", cfg.cache, name)
        return name, 0
    runs = list(dict.fromkeys(todo["run_id"]))
    bar = tqdm(total=len(todo), desc=f"re-reading ({cfg.kind})", unit="utt", disable=not cfg.progress)
    with CacheWriter.extend(cfg.cache, [info]) as writer:
        for i in range(0, len(runs), cfg.batch_size):
            part = todo[todo["run_id"].isin(runs[i : i + cfg.batch_size])]
            if cfg.kind == "text":
                states = embedder(_history_texts(part, cache, cfg))[:, None, :]
                prompt_lengths = np.zeros(len(part), dtype=int)
            else:
                states, prompt_lengths = _prompt_states(lm, part, cache, cfg)
            rows = part.assign(model=name, partner_model=name, condition="teacher_forced", n_prompt_tokens=prompt_lengths, n_new_tokens=0)
            writer.write_shard(rows.to_dict("records"), {(name, "teacher_forced"): states})
            bar.update(len(part))
        bar.close()
        writer.finalize()
    return name, len(todo)


def _episodes(cache: ActivationCache, cfg: RereadConfig):
    from nsync.scenarios import load_scenarios

    return {e.id: e for e in load_scenarios(cache.scenario_source(cfg.scenarios)).episodes}


def _histories(part: pd.DataFrame):
    """Per run: the utterances in order (for prompts and history texts)."""
    from nsync.simulation.prompts import conversations

    return conversations(part)


def _history_texts(part: pd.DataFrame, cache: ActivationCache, cfg: RereadConfig) -> list[str]:
    """The text-only source of each row: the history up to and including its utterance."""
    from nsync.simulation.prompts import history_text

    try:
        episodes = _episodes(cache, cfg)
    except NsyncError:
        episodes = {}  # no scenario source: speakers are named by their character ids
    texts = []
    for _, rows, history in _histories(part):
        first = rows.iloc[0]
        episode = episodes.get(first.episode_id) or _NamedEpisode(first)
        for k in range(len(rows)):
            texts.append(history_text(episode, history[: k + 1]))
    return texts


class _NamedEpisode:
    """The speakers' names of a run (their character ids), enough for :func:`history_text`."""

    def __init__(self, row):
        from types import SimpleNamespace

        from nsync.cache.layout import participant_ids

        self.characters = [SimpleNamespace(name=c) for c in participant_ids(row.characters)]


def _prompt_states(lm, part: pd.DataFrame, cache: ActivationCache, cfg: RereadConfig) -> tuple[np.ndarray, np.ndarray]:
    """Each row's prompt as its speaker saw it, read by ``lm`` (:func:`nsync.simulation.capture.read_states`:
    an agent's prompts that extend each other in one pass, the others re-using its previous prompt)."""
    from nsync.simulation.capture import read_states
    from nsync.simulation.generation import Generator, SamplingConfig
    from nsync.simulation.prompts import encode, prompt_format, render

    episodes = _episodes(cache, cfg)
    written = cache.manifest.get("config", {})
    fmt = prompt_format(lm, cfg.prompt_format or written.get("prompt_format", "sotopia"))
    layout = written.get("prompt_layout", "fields")
    per_run = list(_histories(part))
    missing = sorted({rows.iloc[0].episode_id for _, rows, _ in per_run} - set(episodes))
    if missing:
        raise NsyncError(f"episodes {missing[:3]} of the cache are not in the scenario source; set scenarios=...")
    prompts: dict[tuple[str, int], list[int]] = {}
    for run_id, rows, h in per_run:
        episode = episodes[rows.iloc[0].episode_id]
        for k in range(len(h)):  # the prompt of utterance k's speaker, before it
            prompts[(run_id, k)] = encode(lm, render(lm.tokenizer, fmt, episode, h[k].agent, h[:k], layout=layout))
    rows = list(part.itertuples())
    order = [(r.run_id, r.utterance) for r in rows]
    states = read_states(Generator(lm, SamplingConfig()), [prompts[key] for key in order], [(r.run_id, int(r.agent)) for r in rows])
    return states.numpy(), np.array([len(prompts[key]) for key in order])


def main(argv: Sequence[str]) -> None:
    from nsync.config import load_config

    configure_logging()
    cfg = load_config(RereadConfig, argv, prog="nsync reread")
    start = time.perf_counter()
    name, n = reread(cfg)
    print(f"re-read {n} utterances as '{name}' (condition teacher_forced) in {time.perf_counter() - start:.1f} s")
    print(ActivationCache.open(cfg.cache).summary())
    print(f"wrote {cfg.cache}")
