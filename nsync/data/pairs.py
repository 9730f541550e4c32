"""(source, target) pairs from a cache's turns table.

A direction names whose states are sources and whose are targets:

- ``i->j`` (agent indices, any number of agents): for a source utterance ``t`` by agent ``i``,
  the target is agent ``j``'s state at its ``lag``-th utterance after ``t``. ``all`` is every
  ordered pair of the cache's agents.
- ``A->B`` / ``B->A`` (the dyad names): sources from agent 0 / agent 1, the target is the
  utterance ``t + lag`` of the run, whoever speaks it (with two agents, lag 1 is the partner,
  whose prompt already contains utterance ``t``, and lag 2 the speaker's own next state).

With two agents taking turns, ``0->1`` at lag 1 and ``A->B`` at lag 1 are the same pairs.

``pairing`` says where the target comes from, keeping the source rows as they are:

- ``partner``: the same run (the main condition).
- ``cross_interaction``: another run of the same episode and model order (another sampling
  seed), same utterance position: shared scenario context without the actual partner.
- ``shuffled_partner``: a run of another episode, same utterance position: breaks the pairing,
  keeps the turn position.
- ``same_time``: the target agent's ``listener`` state at utterance ``t`` itself (that agent
  reading the same history, captured with ``capture.listener``); ``lag`` does not apply.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Protocol

import numpy as np
import pandas as pd

from nsync.cache.layout import flagged
from nsync.cache.reader import next_utterances
from nsync.errors import NsyncError
from nsync.registry import Registry

#: The dyad names of directions (agent 0's sources, agent 1's sources).
DIRECTIONS = ("A->B", "B->A")
ALL = "all"
_AGENT_PAIR = re.compile(r"^\s*(\d+)\s*->\s*(\d+)\s*$")


@dataclass(frozen=True)
class Direction:
    """A parsed direction: the source agent, the target agent, and whether the target is found by
    position (``A->B``: utterance ``t + lag``, whoever speaks it) or by agent (``i->j``).

    >>> Direction.parse("2->0"), Direction.parse("A->B").by_position
    (Direction(source=2, target=0, by_position=False), True)
    """

    source: int
    target: int
    by_position: bool = False

    @classmethod
    def parse(cls, name: str) -> Direction:
        if name in DIRECTIONS:
            source = DIRECTIONS.index(name)
            return cls(source, 1 - source, by_position=True)
        match = _AGENT_PAIR.match(str(name))
        if match is None or match.group(1) == match.group(2):
            raise NsyncError(f"direction '{name}' is not one of {DIRECTIONS}, '{ALL}', or 'i->j' with two different agent indices (e.g. 2->0)")
        return cls(int(match.group(1)), int(match.group(2)))


def check_directions(names: list[str]) -> None:
    """Raise a clear error for a direction that does not parse (``all`` is fine)."""
    if not names:
        raise NsyncError(f"data.directions must list some of {DIRECTIONS}, '{ALL}' or agent pairs like 0->1")
    for name in names:
        if name != ALL:
            Direction.parse(name)


def resolve_directions(names: list[str], agents: list[int]) -> list[str]:
    """``names`` with ``all`` replaced by every ordered pair of ``agents``, duplicates dropped.

    >>> resolve_directions(["all"], [0, 1, 2])
    ['0->1', '0->2', '1->0', '1->2', '2->0', '2->1']
    """
    out: list[str] = []
    for name in names:
        expanded = [f"{i}->{j}" for i in agents for j in agents if i != j] if name == ALL else [name]
        out += [n for n in expanded if n not in out]
    return out


class NoPairsError(NsyncError):
    """A direction has no pairs: the runs are too short for this lag, or the models never take these
    roles (a two-model cache simulated in one order); ``nsync.fit`` skips it."""


class Pairing(Protocol):
    """Where a source row's target comes from (``data.pairing``). Register one with
    ``@PAIRINGS.register("name")``; the experiment recipes built on pairings are the controls
    (:mod:`nsync.analysis.controls`)."""

    #: The target condition it reads instead of ``data.target_condition`` (e.g. ``listener``), or None.
    target_condition: str | None

    def target_offset(self, lag: int) -> int:
        """How far from the source utterance the target is: k > 0 the target agent's k-th next
        utterance (``A->B``: utterance ``t + k``), 0 its row at ``t``, k < 0 its ``-k``-th before."""

    def target_runs(self, turns: pd.DataFrame, src: pd.DataFrame, seed: int) -> pd.Series:
        """The run each source row takes its target from (``seed``: for random pairings)."""


#: Registered pairings, by name.
PAIRINGS: Registry[type[Pairing]] = Registry("pairing")
PAIR_COLUMNS = [
    "run_id",
    "episode_id",
    "scenario_id",
    "character_a",
    "character_b",
    "characters",
    "source_agent",
    "target_agent",
    "seed",
    "order",
    "t",
    "source_row",
    "target_row",
    "target_run_id",
    "target_utterance",
]


def build_pairs(
    turns: pd.DataFrame,
    source_model: str,
    target_model: str,
    direction: str = "A->B",
    lag: int = 1,
    source_condition: str = "interactive",
    target_condition: str = "interactive",
    pairing: str = "partner",
    seed: int = 0,
) -> pd.DataFrame:
    """One row per pair; ``source_row`` indexes ``cache.states(source_model, layer, source_condition)``,
    ``target_row`` indexes ``cache.states(target_model, layer, target_condition)`` (``listener``
    for ``pairing="same_time"``). ``seed`` draws the other episode of ``shuffled_partner``.

    >>> from nsync.cache import ActivationCache
    >>> from nsync.testing import example_cache
    >>> pairs = build_pairs(ActivationCache.open(example_cache()).turns, "synthetic", "synthetic", "A->B", lag=1)
    >>> len(pairs), pairs.t.unique().tolist()    # 3 pairs in each of 40 episodes, at utterances 0, 2, 4
    (120, [0, 2, 4])
    """
    d = Direction.parse(direction)
    how = PAIRINGS.get(pairing)()
    if hasattr(how, "target_utterance"):
        raise NsyncError(
            f"pairing '{pairing}' defines target_utterance(src, lag), which nsync no longer calls; define "
            "target_offset(lag) instead (e.g. return -lag for the partner's utterance before; see docs/extending.md)"
        )
    if lag < 1:
        raise NsyncError(f"lag must be at least 1, got {lag}")
    src = turns[(turns["condition"] == source_condition) & (turns["agent"] == d.source) & (turns["model"] == source_model)]
    if src.empty:
        # A skipped direction, not a failed fit: in a two-model cache simulated in one order the
        # source model never speaks as the other agent (nsync.fit fails only when no direction has pairs).
        have = sorted(turns.loc[turns["condition"] == source_condition, "model"].unique())
        raise NoPairsError(
            f"no '{source_condition}' utterances of model '{source_model}' as agent {d.source} in the cache "
            f"(models with that condition: {have}; agents: {sorted(turns['agent'].unique().tolist())})"
        )
    target_condition = how.target_condition or target_condition
    offset = how.target_offset(lag)
    candidates = turns[(turns["condition"] == target_condition) & (turns["model"] == target_model)]
    if not (d.by_position and offset != 0):  # by position: whoever speaks then; else the target agent's rows
        candidates = candidates[candidates["agent"] == d.target]
    if candidates.empty:
        hint = ": simulate with capture.listener=true" if target_condition == "listener" else ""
        raise NoPairsError(
            f"no '{target_condition}' utterances of target model '{target_model}' as agent {d.target} in the cache (pairing {pairing}){hint}"
        )
    target_runs = np.asarray(how.target_runs(turns, src, seed), dtype=object)
    t = src["utterance"].to_numpy()
    if d.by_position:
        found = next_utterances(candidates, target_runs, t + offset, 0)
    else:
        found = next_utterances(candidates, target_runs, t, offset)
    keep = found >= 0
    target = candidates.iloc[found[keep]]
    merged = src[keep].assign(
        target_run_id=target_runs[keep],
        row_target=target["row"].to_numpy(),
        target_utterance=target["utterance"].to_numpy(),
        agent_target=target["agent"].to_numpy(),
    )
    pairs = pd.DataFrame(
        {
            "run_id": merged["run_id"],
            "episode_id": merged["episode_id"],
            "scenario_id": merged["scenario_id"],
            "character_a": merged["character_a"],
            "character_b": merged["character_b"],
            "characters": merged["characters"],
            "source_agent": d.source,
            "target_agent": merged["agent_target"],  # by position, whoever spoke: the source agent at an even lag
            "seed": merged["seed"],
            "order": merged["order"],
            "t": merged["utterance"],
            "source_row": merged["row"],
            "target_row": merged["row_target"],
            "target_run_id": merged["target_run_id"],
            "target_utterance": merged["target_utterance"],
        }
    )
    if pairs.empty:
        raise NoPairsError(f"no {direction} pairs with lag {lag} and pairing {pairing}: the runs are too short or the models do not meet")
    return pairs.sort_values(["run_id", "t"]).reset_index(drop=True)


def drop_flagged(pairs: pd.DataFrame, turns: pd.DataFrame, names: list[str]) -> pd.DataFrame:
    """``pairs`` without those whose source or target utterance (its interactive row: the reply
    spoken there) carries one of the flags ``names`` (``data.exclude_flags``).

    A cache without a ``flag`` column (imported, or written before flags) loses nothing.
    """
    if not names or pairs.empty or "flag" not in turns:
        return pairs
    inter = turns[turns["condition"] == "interactive"]
    bad = inter[flagged(inter["flag"], names)]
    keys = set(zip(bad["run_id"], bad["utterance"].astype(int), strict=True))
    if not keys:
        return pairs
    source = [(r, int(t)) in keys for r, t in zip(pairs["run_id"], pairs["t"], strict=True)]
    target = [(r, int(t)) in keys for r, t in zip(pairs["target_run_id"], pairs["target_utterance"], strict=True)]
    return pairs[~(np.array(source, dtype=bool) | np.array(target, dtype=bool))].reset_index(drop=True)


def _runs(turns: pd.DataFrame) -> pd.DataFrame:
    return turns.drop_duplicates("run_id")[["run_id", "episode_id", "order", "seed"]].sort_values("run_id")


@PAIRINGS.register("partner")
class Partner:
    """The same run: the target agent's state ``lag`` utterances on (the main condition)."""

    target_condition: str | None = None

    def target_offset(self, lag: int) -> int:
        return lag

    def target_runs(self, turns: pd.DataFrame, src: pd.DataFrame, seed: int) -> pd.Series:
        return src["run_id"]


@PAIRINGS.register("same_time")
class SameTime(Partner):
    """The target agent's listener state at ``t`` itself (``lag`` does not apply)."""

    target_condition: str | None = "listener"

    def target_offset(self, lag: int) -> int:
        return 0


@PAIRINGS.register("cross_interaction")
class CrossInteraction(Partner):
    """Another run (sampling seed) of the same episode and model order, same utterance position."""

    def target_runs(self, turns: pd.DataFrame, src: pd.DataFrame, seed: int) -> pd.Series:
        mapping: dict[str, str] = {}
        # Within an (episode, order) group, run i takes its target from the next run (cyclically).
        for _, group in _runs(turns).groupby(["episode_id", "order"]):
            ids = group.sort_values("seed")["run_id"].tolist()
            for i, run in enumerate(ids):
                if len(ids) > 1:
                    mapping[run] = ids[(i + 1) % len(ids)]
        if not mapping:
            raise NsyncError("pairing cross_interaction needs each episode simulated with several sampling seeds (simulate with seeds=[0,1])")
        return src["run_id"].map(mapping)


@PAIRINGS.register("shuffled_partner")
class ShuffledPartner(Partner):
    """A run of another episode (a random order of runs, each paired with the next one of another
    episode), same utterance index: breaks the pairing, keeps the turn position."""

    def target_runs(self, turns: pd.DataFrame, src: pd.DataFrame, seed: int) -> pd.Series:
        runs = _runs(turns)
        ids = runs["run_id"].to_numpy()[np.random.default_rng(seed).permutation(len(runs))]
        episode = dict(zip(runs["run_id"], runs["episode_id"], strict=True))
        if len(set(episode.values())) < 2:
            raise NsyncError("pairing shuffled_partner needs at least two episodes")
        mapping: dict[str, str] = {}
        for i, run in enumerate(ids):
            j = (i + 1) % len(ids)
            while episode[ids[j]] == episode[run]:
                j = (j + 1) % len(ids)
            mapping[run] = ids[j]
        return src["run_id"].map(mapping)
