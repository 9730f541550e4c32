"""Train/test splits grouped so that no group is on both sides.

- ``interaction``: by episode (all seeds and orders of an episode together): the paper's.
- ``scenario``: by scenario (held-out scenarios).
- ``persona``: by character: every participant of a test pair's episode is held out, every
  participant of a training pair's episode seen (wherever they sit); pairs whose episode mixes
  the two sets are dropped, so no character is on both sides.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pandas as pd

from nsync.cache.layout import participant_ids
from nsync.errors import NsyncError

SPLITS = ("interaction", "scenario", "persona")


@dataclass
class Split:
    """Boolean masks over a pairs table and the ids on each side."""

    train: np.ndarray
    test: np.ndarray
    kind: str
    seed: int

    def ids(self, pairs: pd.DataFrame) -> dict:
        """Episode ids (and characters, scenarios) of each side, for the results file."""
        out = {}
        for side, mask in (("train", self.train), ("test", self.test)):
            part = pairs[mask]
            out[side] = {
                "episodes": sorted(part["episode_id"].unique().tolist()),
                "scenarios": sorted(part["scenario_id"].unique().tolist()),
                "characters": sorted(_characters(part)),
            }
        return out


def _group_split(groups: pd.Series, test_size: float, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    unique = np.array(sorted(groups.unique()))
    if len(unique) < 2:
        raise NsyncError(f"a grouped split needs at least 2 groups, the data has {len(unique)}; simulate more episodes")
    n_test = min(max(1, round(test_size * len(unique))), len(unique) - 1)
    test_groups = set(rng.permutation(unique)[:n_test])
    test = groups.isin(test_groups).to_numpy()
    return ~test, test


def _cast(pairs: pd.DataFrame) -> pd.Series:
    """Each pair's participants ("|"-joined); pairs tables without the column are dyads."""
    return pairs["characters"] if "characters" in pairs else pairs["character_a"] + "|" + pairs["character_b"]


def _characters(pairs: pd.DataFrame) -> set[str]:
    return {c for cs in _cast(pairs).unique() for c in participant_ids(cs)}


def _persona_split(pairs: pd.DataFrame, test_size: float, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    characters = np.array(sorted(_characters(pairs)))
    casts = _cast(pairs)
    n_agents = max(2, int(round(np.median([len(participant_ids(cs)) for cs in casts]))))
    if len(characters) < 2 * n_agents:
        raise NsyncError(f"a persona split needs at least {2 * n_agents} characters, the data has {len(characters)}")
    # Hold out a share f of characters so that f^n / (f^n + (1-f)^n) = test_size for n agents per episode.
    r = (test_size / (1 - test_size)) ** (1 / n_agents)
    n_test = min(max(n_agents, round(r / (1 + r) * len(characters))), len(characters) - n_agents)
    held = set(rng.permutation(characters)[:n_test])
    held_by_cast = {cs: [c in held for c in participant_ids(cs)] for cs in casts.unique()}
    all_held = casts.map(lambda cs: all(held_by_cast[cs])).to_numpy(dtype=bool)
    none_held = casts.map(lambda cs: not any(held_by_cast[cs])).to_numpy(dtype=bool)
    train, test = none_held, all_held
    if not train.any() or not test.any():
        raise NsyncError("the persona split left one side empty; simulate more episodes per character")
    return train, test


def make_split(pairs: pd.DataFrame, kind: str, test_size: float, seed: int) -> Split:
    """A grouped split of ``pairs``.

    >>> import pandas as pd
    >>> pairs = pd.DataFrame({"episode_id": list("aabbccdd"), "scenario_id": list("xxxxyyyy"), "characters": ["p|q"] * 4 + ["r|s"] * 4})
    >>> split = make_split(pairs, "scenario", test_size=0.5, seed=0)
    >>> sorted(set(pairs.scenario_id[split.test])), sorted(set(pairs.scenario_id[split.train]))   # whole scenarios on one side
    (['x'], ['y'])
    """
    if kind not in SPLITS:
        raise NsyncError(f"split must be one of {SPLITS}, got '{kind}'")
    if not 0 < test_size < 1:
        raise NsyncError(f"test_size must be between 0 and 1, got {test_size}")
    rng = np.random.default_rng(seed)
    if kind == "interaction":
        train, test = _group_split(pairs["episode_id"], test_size, rng)
    elif kind == "scenario":
        train, test = _group_split(pairs["scenario_id"], test_size, rng)
    else:
        train, test = _persona_split(pairs, test_size, rng)
    return Split(train, test, kind, seed)


def validation_part(pairs: pd.DataFrame, train: np.ndarray, kind: str, size: float, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Split the training side again (same grouping) into fitting and validation parts."""
    inner = make_split(pairs[train], kind if kind != "persona" else "interaction", size, seed + 10_000)
    fit, val = np.zeros_like(train), np.zeros_like(train)
    idx = np.flatnonzero(train)
    fit[idx[inner.train]] = True
    val[idx[inner.test]] = True
    return fit, val
