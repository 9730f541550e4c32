"""(source, target) pairs from a cache's turns table.

A pair is the speaker's state before utterance ``t`` and the state of the agent speaking
utterance ``t + lag`` in the same run (with the default lag 1: the partner, whose prompt
already contains utterance ``t``). ``A->B`` takes sources from the agent who spoke first in
the episode (agent 0), ``B->A`` from the other one.
"""

from __future__ import annotations

import pandas as pd

from nsync.errors import NsyncError

DIRECTIONS = ("A->B", "B->A")
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
]


def build_pairs(
    turns: pd.DataFrame,
    source_model: str,
    target_model: str,
    direction: str = "A->B",
    lag: int = 1,
    source_condition: str = "interactive",
) -> pd.DataFrame:
    """One row per pair; ``source_row`` indexes ``cache.states(source_model, layer, source_condition)``,
    ``target_row`` indexes ``cache.states(target_model, layer, "interactive")``.

    >>> pairs = build_pairs(cache.turns, "smollm2-135m", "smollm2-135m", "A->B", lag=1)  # doctest: +SKIP
    """
    if direction not in DIRECTIONS:
        raise NsyncError(f"direction must be one of {DIRECTIONS}, got '{direction}'")
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
    tgt = turns[(turns["condition"] == "interactive") & (turns["model"] == target_model)]
    src = src.assign(target_utterance=src["utterance"] + lag)
    merged = src.merge(
        tgt[["run_id", "utterance", "row"]],
        left_on=["run_id", "target_utterance"],
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
        }
    )
    return pairs.sort_values(["run_id", "t"]).reset_index(drop=True)
