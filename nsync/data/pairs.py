"""(source, target) pairs from a cache's turns table.

A pair is the speaker's state before utterance ``t`` and the state of the agent speaking
utterance ``t + lag`` in the same run (with the default lag 1: the partner, whose prompt
already contains utterance ``t``; lag 2 is the speaker's own next state). ``A->B`` takes
sources from the agent who spoke first in the episode (agent 0), ``B->A`` from the other one.

``pairing`` says where the target comes from, keeping the source rows as they are:

- ``partner``: the same run (the main condition).
- ``cross_interaction``: another run of the same episode and model order (another sampling
  seed), same utterance index: shared scenario context without the actual partner.
- ``shuffled_partner``: a run of another episode, same utterance index: breaks the pairing,
  keeps the turn position.
- ``same_time``: the partner's ``listener`` state at utterance ``t`` itself (the partner reading
  the same history, captured with ``capture.listener``); ``lag`` does not apply.
"""

from __future__ import annotations

from typing import Protocol

import numpy as np
import pandas as pd

from nsync.errors import NsyncError
from nsync.registry import Registry

DIRECTIONS = ("A->B", "B->A")


class NoPairsError(NsyncError):
    """A direction has no pairs at this lag (the runs are too short); ``nsync.fit`` skips it."""


class Pairing(Protocol):
    """Where a source row's target comes from (``data.pairing``). Register one with
    ``@PAIRINGS.register("name")``; the experiment recipes built on pairings are the controls
    (:mod:`nsync.analysis.controls`)."""

    #: The target condition it reads instead of ``data.target_condition`` (e.g. ``listener``), or None.
    target_condition: str | None

    def target_utterance(self, src: pd.DataFrame, lag: int) -> pd.Series:
        """The utterance index each source row's target has (in its target run)."""

    def target_runs(self, turns: pd.DataFrame, src: pd.DataFrame, seed: int) -> pd.Series:
        """The run each source row takes its target from (``seed``: for random pairings)."""


#: Registered pairings, by name.
PAIRINGS: Registry[Pairing] = Registry("pairing")
PAIR_COLUMNS = [
    "run_id",
    "episode_id",
    "scenario_id",
    "character_a",
    "character_b",
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

    >>> pairs = build_pairs(cache.turns, "smollm2-135m", "smollm2-135m", "A->B", lag=1)  # doctest: +SKIP
    """
    if direction not in DIRECTIONS:
        raise NsyncError(f"direction must be one of {DIRECTIONS}, got '{direction}'")
    how = PAIRINGS.get(pairing)()
    if lag < 1:
        raise NsyncError(f"lag must be at least 1, got {lag}")
    source_agent = DIRECTIONS.index(direction)
    src = turns[
        (turns["condition"] == source_condition) & (turns["agent"] == source_agent) & (turns["model"] == source_model)
    ]
    if src.empty:
        have = sorted(turns.loc[turns["condition"] == source_condition, "model"].unique())
        raise NsyncError(
            f"no '{source_condition}' utterances of model '{source_model}' as agent {source_agent} in the cache "
            f"(models with that condition: {have})"
        )
    target_condition = how.target_condition or target_condition
    tgt = turns[(turns["condition"] == target_condition) & (turns["model"] == target_model)]
    if how.target_condition == "listener":  # the listener rows of the partner, not of the source agent
        tgt = tgt[tgt["agent"] == 1 - source_agent]
    if tgt.empty:
        hint = ": simulate with capture.listener=true" if target_condition == "listener" else ""
        raise NsyncError(f"no '{target_condition}' utterances of target model '{target_model}' in the cache (pairing {pairing}){hint}")
    src = src.assign(target_utterance=how.target_utterance(src, lag))
    src = src.assign(target_run_id=how.target_runs(turns, src, seed))
    merged = src.merge(
        tgt[["run_id", "utterance", "row"]],
        left_on=["target_run_id", "target_utterance"],
        right_on=["run_id", "utterance"],
        suffixes=("", "_target"),
    )
    pairs = pd.DataFrame(
        {
            "run_id": merged["run_id"],
            "episode_id": merged["episode_id"],
            "scenario_id": merged["scenario_id"],
            "character_a": merged["character_a"],
            "character_b": merged["character_b"],
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


def _runs(turns: pd.DataFrame) -> pd.DataFrame:
    return turns.drop_duplicates("run_id")[["run_id", "episode_id", "order", "seed"]].sort_values("run_id")


@PAIRINGS.register("partner")
class Partner:
    """The same run: the partner's state at ``t + lag`` (the main condition)."""

    target_condition = None

    def target_utterance(self, src: pd.DataFrame, lag: int) -> pd.Series:
        return src["utterance"] + lag

    def target_runs(self, turns: pd.DataFrame, src: pd.DataFrame, seed: int) -> pd.Series:
        return src["run_id"]


@PAIRINGS.register("same_time")
class SameTime(Partner):
    """The partner's listener state at ``t`` itself (``lag`` does not apply)."""

    target_condition = "listener"

    def target_utterance(self, src: pd.DataFrame, lag: int) -> pd.Series:
        return src["utterance"]


@PAIRINGS.register("cross_interaction")
class CrossInteraction(Partner):
    """Another run (sampling seed) of the same episode and model order, same utterance index."""

    def target_runs(self, turns: pd.DataFrame, src: pd.DataFrame, seed: int) -> pd.Series:
        mapping: dict[str, str] = {}
        # Within an (episode, order) group, run i takes its target from the next run (cyclically).
        for _, group in _runs(turns).groupby(["episode_id", "order"]):
            ids = group.sort_values("seed")["run_id"].tolist()
            for i, run in enumerate(ids):
                if len(ids) > 1:
                    mapping[run] = ids[(i + 1) % len(ids)]
        if not mapping:
            raise NsyncError(
                "pairing cross_interaction needs each episode simulated with several sampling seeds (simulate with seeds=[0,1])"
            )
        return src["run_id"].map(mapping)


@PAIRINGS.register("shuffled_partner")
class ShuffledPartner(Partner):
    """A run of another episode (a random order of runs, each paired with the next one of another
    episode), same utterance index: breaks the pairing, keeps the turn position."""

    def target_runs(self, turns: pd.DataFrame, src: pd.DataFrame, seed: int) -> pd.Series:
        runs = _runs(turns)
        ids = runs["run_id"].to_numpy()[np.random.default_rng(seed).permutation(len(runs))]
        episode = dict(zip(runs["run_id"], runs["episode_id"]))
        if len(set(episode.values())) < 2:
            raise NsyncError("pairing shuffled_partner needs at least two episodes")
        mapping: dict[str, str] = {}
        for i, run in enumerate(ids):
            j = (i + 1) % len(ids)
            while episode[ids[j]] == episode[run]:
                j = (j + 1) % len(ids)
            mapping[run] = ids[j]
        return src["run_id"].map(mapping)
