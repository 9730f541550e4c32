"""Variance-partition shares: how much of the partner's next state the speaker's state explains
that a baseline does not.

For a (source layer, target layer) cell three probes are compared on the same pairs, split and
test episodes: the source alone, the baseline alone and both together (banded ridge). With test
R² ``S``, ``B`` and ``J``:

- unique share of the source: ``J - B`` (what the source adds beyond the baseline),
- shared share: ``S + B - J`` (what either explains alone).

A difference of separately fitted conditions (the controls) cannot give these: the two fits
predict different parts of the target. The unique SyncR² follows SyncR²'s rule: per source layer
one target layer, chosen on validation episodes (the best validation unique share), its test value
averaged over source layers; it is not clipped at 0 (a share beyond a baseline can be estimated
below zero, and clipping would bias it upward).
"""

from __future__ import annotations

import numpy as np

from nsync.stats.bootstrap import R2_RANGE
from nsync.stats.r2 import choose_targets

#: The shares reported per baseline, in this order.
QUANTITIES = ("source", "baseline", "joint", "unique", "shared")
#: Each share's range, which its interval and bias-corrected value are kept inside: test R² of a
#: fit is at most 1, and so is what the source adds to the baseline or shares with it.
RANGES = dict.fromkeys(QUANTITIES, R2_RANGE)


def shares_at(source, baseline, joint) -> np.ndarray:
    """``[..., quantities]`` from test R² of the three fits (any matching shapes).

    >>> shares_at(np.array(0.5), np.array(0.4), np.array(0.6)).round(3).tolist()
    [0.5, 0.4, 0.6, 0.2, 0.3]
    """
    source, baseline, joint = (np.asarray(v, dtype=float) for v in (source, baseline, joint))
    return np.stack([source, baseline, joint, joint - baseline, source + baseline - joint], -1)


def baseline_only_cells(val_baseline: np.ndarray | None, val_joint: np.ndarray | None) -> np.ndarray | None:
    """The cells where the baseline alone validated at least as well as source and baseline
    together (the joint model is chosen among the banded fits and the baseline alone: there the
    source gets no weight, so the unique share is 0 rather than the joint fit's extra estimation
    error); None without validation R².

    >>> baseline_only_cells(np.array([[0.3, np.nan]]), np.array([[0.2, 0.1]])).tolist()
    [[True, False]]
    """
    if val_baseline is None or val_joint is None:
        return None
    return np.nan_to_num(val_baseline, nan=-np.inf) >= np.nan_to_num(val_joint, nan=-np.inf)


def choose_unique_targets(val_baseline: np.ndarray | None, val_joint: np.ndarray | None, test_unique: np.ndarray) -> np.ndarray:
    """Per source layer the target layer with the best validation unique share (``J - B``), or
    without validation R² the best test one; -1 where none has a value.

    >>> choose_unique_targets(np.array([[0.1, 0.3]]), np.array([[0.4, 0.35]]), np.array([[0.0, 0.9]])).tolist()
    [0]
    """
    val = None if val_baseline is None or val_joint is None else val_joint - val_baseline
    return choose_targets(test_unique, val)


def joined_shortfall(r2_baseline: dict[str, np.ndarray], parts: dict[str, list[str]], margin: float = 0.005) -> dict[str, float]:
    """For each joined baseline (``parts[name]``: its features, two or more) whose features are
    also fitted alone: the share of (source, target layer) cells where it predicts less than its
    best feature alone by more than ``margin`` (test R² of the baselines alone). A joined baseline
    holds all its features, so in the population it predicts at least as well; a shortfall is its
    penalties failing them.

    >>> joined_shortfall({"a": np.array([[0.3, 0.2]]), "b": np.array([[0.1, 0.4]]), "a+b": np.array([[0.35, 0.3]])}, {"a+b": ["a", "b"]})
    {'a+b': 0.5}
    """
    out = {}
    for name, joined in r2_baseline.items():
        features = parts.get(name, [])
        if len(features) < 2 or not all(p in r2_baseline for p in features):
            continue
        best = np.fmax.reduce([r2_baseline[p] for p in features])
        cells = np.isfinite(joined) & np.isfinite(best)
        if cells.any():
            out[name] = float((joined[cells] < best[cells] - margin).mean())
    return out
