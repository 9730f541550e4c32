"""How often the surrogate p-values fall at or below their level on planted nulls (and their power
on planted effects): ``experiments/benchmarks/surrogate_fpr.py``, ``tests/test_surrogates.py``."""

from __future__ import annotations

import numpy as np
import pandas as pd
import torch

from nsync.stats.r2 import r2_from_rows
from nsync.stats.surrogates import null_r2, p_value, permutations, strata, unique_null


def false_positive_rate(
    n_rep: int = 200,
    n: int = 100,
    kind: str = "pseudo_dyad",
    unique: bool = False,
    level: float = 0.05,
    effect: float = 0.0,
    seed: int = 0,
    n_episodes: int = 60,
    turns: int = 8,
    hidden: int = 4,
    shape: float = 1.0,
    baseline_width: int | None = None,
    decay: float = 0.0,
    alpha: float = 1.0,
    massive: float = 1.0,
) -> float:
    """How often the surrogate p-value falls at or below ``level`` on planted problems (no Lightning:
    plain numpy ridge, nsync's permutations and nulls). Each episode has ``turns`` pairs at utterance
    indices 0, 2, ...; every state carries a vector per utterance index (``shape``: what the
    pseudo-dyads keep). For SyncR² the target is independent of the source given the index; with
    ``unique`` the source is the baseline mixed plus a private part and the target depends on the
    baseline only. ``effect`` > 0 plants a real (resp. private) coupling: the rate is then the power.
    ``baseline_width`` (default ``hidden``) columns of baseline, its principal components' scales
    falling as ``j ** -decay`` (0: a flat spectrum, the hardest case for a baseline wider than half
    the rows); ``massive`` scales the second half of the baseline's columns as the probes see them
    (a band at another scale).

    >>> false_positive_rate(n_rep=3, n=20) <= 1.0
    True
    """
    rng = np.random.default_rng(seed)
    hits = 0
    for r in range(n_rep):
        t = np.tile(np.arange(0, 2 * turns, 2), n_episodes)
        episode = np.repeat(np.arange(n_episodes), turns)
        profile = shape * rng.normal(size=(2 * turns, hidden))
        k = baseline_width or hidden
        scale = np.arange(1, k + 1) ** -decay
        base = rng.normal(size=(len(t), k)) * scale / np.sqrt(np.mean(scale**2))
        if decay:  # the spectrum falls through correlations between columns, as a model's states do, not their scales
            base = base @ np.linalg.qr(rng.normal(size=(k, k)))[0]
        private = rng.normal(size=(len(t), hidden))
        if unique:
            x = base @ rng.normal(size=(k, hidden)) / np.sqrt(k) + private + profile[t]
            y = base @ rng.normal(size=(k, hidden)) * np.sqrt(hidden / k) + effect * private + rng.normal(size=private.shape) + profile[t]
            z = np.concatenate([x, base * np.where(np.arange(k) < k // 2, 1.0, massive)], 1)
        else:
            x = private + profile[t]
            y = effect * private + rng.normal(size=x.shape) + profile[t]
            z = x
        test = np.isin(episode, rng.permutation(n_episodes)[: n_episodes // 3])
        zc, yc = z[~test] - z[~test].mean(0), y[~test] - y[~test].mean(0)
        w = np.linalg.solve(zc.T @ zc + alpha * np.eye(z.shape[1]), zc.T @ yc)
        b = y[~test].mean(0) - z[~test].mean(0) @ w
        pairs = pd.DataFrame({"episode_id": episode[test], "run_id": episode[test], "t": t[test]})
        perms = permutations(pairs, n, kind, seed=r)
        valid = torch.ones(hidden, dtype=torch.bool)
        yt = torch.from_numpy(y[test])
        if unique:
            wb = np.linalg.solve(zc[:, hidden:].T @ zc[:, hidden:] + alpha * np.eye(k), zc[:, hidden:].T @ yc)
            base_pred = (z[test, hidden:] - z[~test, hidden:].mean(0)) @ wb + y[~test].mean(0)
            base_r2 = float(r2_from_rows(yt, torch.from_numpy(base_pred), valid))
            observed = float(r2_from_rows(yt, torch.from_numpy(z[test] @ w + b), valid)) - base_r2
            zt = torch.from_numpy(z)
            repaired = unique_null(
                zt[:, :hidden],
                zt[:, hidden:],
                torch.from_numpy(y[test]),
                torch.from_numpy(w),
                torch.from_numpy(b),
                torch.from_numpy(np.flatnonzero(~test)),
                torch.from_numpy(np.flatnonzero(test)),
                perms,
                valid,
                strata(pd.DataFrame({"t": t, "run_id": episode}).iloc[np.r_[np.flatnonzero(~test), np.flatnonzero(test)]], kind),
                base_r2,
            )
            null = np.full(n, np.nan) if repaired is None else repaired
        else:
            observed = float(r2_from_rows(yt, torch.from_numpy(z[test] @ w + b), valid))
            null = null_r2(yt, torch.from_numpy(z[test] @ w + b), perms, valid)
        p = p_value(observed, null)
        assert p is not None  # planted problems always have finite surrogates
        hits += p <= level
    return hits / n_rep
