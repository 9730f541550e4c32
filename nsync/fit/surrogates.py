"""Significance by surrogates: permutation p-values for SyncR² and the unique share.

A surrogate re-pairs the test side: each test target keeps its row and is scored against the
prediction made from another row's source state, so everything but the pairing is kept:

- ``pseudo_dyad``: the source of a row of another episode at the same utterance index (as the
  ``shuffled_partner`` control: the conversation's position is kept, the partner is not);
- ``circular_shift``: within each run, the sources shifted by a random number of pairs (0 among
  them: the shifts form a group, which keeps the p-value exact; the episode is kept, the timing
  is not); runs with fewer than three pairs keep their own. It assumes states carry nothing tied
  to the utterance index (on planted data with such a shape its false-positive rate is 100%):
  use it on residuals (``data.remove_context=true``) or where pseudo-dyads are too few.

The fitted probes stay as they are: an affine probe's prediction is linear in the source, so a
surrogate costs a permutation of predicted rows and one sum of squares, not a refit. Under the
null (the source says nothing about the target beyond what the permutation keeps) the real
pairing and its surrogates are exchangeable, so ``p = (1 + #{null >= observed}) / (1 + N)`` is a
valid p-value. For the unique share only what the source holds beyond the baseline is re-paired
(the residual of the source on the baseline, Freedman-Lane style); the baseline, and what the
source shares with it, stay with their row.
"""

from __future__ import annotations

import logging
from typing import NamedTuple

import numpy as np
import pandas as pd
import torch

from nsync.errors import warn_once
from nsync.fit.config import SURROGATE_KINDS as KINDS  # noqa: E402,F401  (the old names, for older code)
from nsync.fit.config import SurrogateConfig  # noqa: E402,F401

log = logging.getLogger("nsync.fit")


def permutations(test_pairs: pd.DataFrame, n: int, kind: str = "pseudo_dyad", seed: int = 0) -> np.ndarray:
    """``[n, rows]``: for each surrogate, the row whose source each test row is scored against.

    >>> pairs = pd.DataFrame({"episode_id": ["a", "b", "c", "a"], "run_id": ["a", "b", "c", "a"], "t": [0, 0, 0, 2]})
    >>> p = permutations(pairs, 2, seed=1)
    >>> bool((p[:, :3] != np.arange(3)).all() and (p[:, 3] == 3).all())   # other episodes at t=0; t=2 has no other
    True
    """
    rng = np.random.default_rng(seed)
    rows = np.arange(len(test_pairs))
    out = np.tile(rows, (n, 1))
    episode = test_pairs["episode_id"].to_numpy()
    key = strata(test_pairs, kind)
    groups = [rows[key == k] for k in pd.unique(key)]
    for k in range(n):
        for group in groups:
            if kind == "pseudo_dyad":
                out[k, group] = _other_episode(group, episode, rng)
            elif len(group) >= 3:  # rows of one run, in utterance order
                out[k, group] = np.roll(group, int(rng.integers(0, len(group))))
    return out


def strata(pairs: pd.DataFrame, kind: str = "pseudo_dyad") -> np.ndarray:
    """What a surrogate of ``kind`` keeps for each row of ``pairs``: its utterance index
    (pseudo-dyads re-pair within it) or its run (circular shifts move within it)."""
    return pairs["t"].to_numpy() if kind == "pseudo_dyad" else pairs["run_id"].to_numpy()


def _other_episode(group: np.ndarray, episode: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """Each row of ``group`` paired with a row of another episode (itself when there is none)."""
    order = group[rng.permutation(len(group))]
    source = order.copy()
    for i, row in enumerate(order):
        for step in range(1, len(order)):
            candidate = order[(i + step) % len(order)]
            if episode[candidate] != episode[row]:
                source[i] = candidate
                break
    out = np.empty_like(group)
    out[np.searchsorted(group, order)] = source
    return out


def r2_rows(y: torch.Tensor, predictions: torch.Tensor, valid: torch.Tensor) -> torch.Tensor:
    """``[surrogates]`` uniform R² of ``predictions`` ``[surrogates, rows, dims]`` (or ``[rows,
    dims]``) against ``y`` ``[rows, dims]``, over the ``valid`` dimensions, around ``y``'s mean."""
    tss = ((y - y.mean(0)) ** 2).sum(0)
    sse = ((y - predictions) ** 2).sum(-2)
    return (1 - sse[..., valid] / tss[valid]).mean(-1)


def null_r2(y: torch.Tensor, predictions: torch.Tensor, perms: np.ndarray, valid: torch.Tensor, fixed: torch.Tensor | None = None) -> np.ndarray:
    """``[surrogates]``: R² of each surrogate, the rows of ``predictions`` re-paired by ``perms``
    (``fixed``: a part of the prediction that stays with its row, e.g. the baseline's)."""
    out = np.empty(len(perms))
    for k, perm in enumerate(perms):
        pred = predictions[torch.from_numpy(perm)]
        out[k] = float(r2_rows(y, pred if fixed is None else pred + fixed, valid))
    return out


def p_value(observed: float, null: np.ndarray) -> float | None:
    """``(1 + #{null >= observed}) / (1 + N)`` over the finite surrogates (None without any).

    >>> p_value(0.5, np.array([0.1, 0.6, 0.2, 0.3]))
    0.4
    """
    null = np.asarray(null, dtype=float)
    null = null[np.isfinite(null)]
    if not len(null) or observed is None or not np.isfinite(observed):
        return None
    return float((1 + (null >= observed).sum()) / (1 + len(null)))


def null_summary(null: np.ndarray | None) -> dict[str, float] | None:
    """What a p-value was read against: the surrogate null's median, 95th percentile and size (finite
    surrogates; None without any), so a reader sees how far above chance the observed value lies.

    >>> null_summary(np.arange(101.0))
    {'median': 50.0, 'p95': 95.0, 'n': 101}
    """
    if null is None:
        return None
    null = np.asarray(null, dtype=float)
    null = null[np.isfinite(null)]
    if not len(null):
        return None
    return {"median": float(np.median(null)), "p95": float(np.quantile(null, 0.95)), "n": int(len(null))}


def chosen_predictions(probe, x_test: torch.Tensor, y_test: torch.Tensor, chosen: np.ndarray) -> dict[int, tuple[torch.Tensor, torch.Tensor]]:
    """Per source position with a chosen target: ``(y, prediction)`` ``[rows, d]`` float64 of the
    test rows at that target, both around the probe's ``target_shift`` (any probe type).
    ``x_test`` ``[rows, chunk, d]``, ``y_test`` ``[rows, targets, d]``; ``chosen``: target positions (-1: none)."""
    out = {}
    y_centred = y_test.float() - probe.target_shift.cpu()  # the probe predicts around target_shift
    with torch.no_grad():
        for s, pred in probe.source_predictions(x_test):
            t = int(chosen[s])
            if t >= 0:
                out[s] = (y_centred[:, t].double(), pred[:, t].double())
    return out


def chunk_nulls(predictions: dict[int, tuple[torch.Tensor, torch.Tensor]], chosen: np.ndarray, perms: np.ndarray, valid: torch.Tensor) -> np.ndarray:
    """``[chunk, surrogates]``: each source layer's test R² at its chosen target with the test rows
    re-paired (``predictions`` from :func:`chosen_predictions`; re-pairing sources re-pairs
    predictions, which are row-wise for any probe)."""
    out = np.full((len(chosen), len(perms)), np.nan)
    for s, (y, pred) in predictions.items():
        out[s] = null_r2(y, pred, perms, valid[int(chosen[s])])
    return out


def unique_nulls(
    joint_probe,
    x_joint: torch.Tensor,
    train_rows: torch.Tensor,
    test_rows: torch.Tensor,
    y: torch.Tensor,
    band_start: int,
    chosen: np.ndarray,
    baseline_r2: np.ndarray,
    baseline_only: np.ndarray,
    perms: np.ndarray,
    valid: torch.Tensor,
    row_strata: np.ndarray,
) -> np.ndarray:
    """``[chunk, surrogates]``: each source layer's unique share at its chosen target with only
    what the source holds beyond the baseline re-paired (Freedman-Lane style): the source is split
    into its least-squares prediction from the baseline (fitted on training and test rows) and the
    residual, and only the residual's part of the joint prediction moves to another row; the
    baseline and what the source shares with it stay with their row. ``x_joint`` ``[rows, chunk,
    d + k]`` holds source and baseline of every pair, ``y`` ``[rows, targets, d]`` the targets;
    ``baseline_r2`` ``[chunk]`` is the baseline alone's test R² at the chosen target. Where the
    baseline alone validated better (``baseline_only``) the unique share is 0 in every surrogate.
    ``row_strata`` (:func:`strata` of the training rows, then the test rows) is what the
    permutations keep: it joins the baseline in the split, so the residual holds no part of the
    conversation's shape the baseline lacks (a part the surrogates keep, so re-pairing it in some
    rows only put planted nulls at 10-85% for 5% with baselines of 50-700 columns)."""
    out = np.full((len(chosen), len(perms)), np.nan)
    # Fitted on training and test rows together: on training rows alone (or test rows alone) the
    # split kept some of the baseline in the residual, and planted nulls came out at 9-10% for 5%.
    fit_rows = torch.cat([train_rows, test_rows])
    for i, t in enumerate(chosen):
        if t < 0:
            continue
        if baseline_only[i]:
            out[i] = 0.0
            continue
        x, b = x_joint[:, i, :band_start].double(), x_joint[:, i, band_start:].double()
        split = baseline_split(x[fit_rows], b[fit_rows], row_strata)
        shared = split.shared[len(train_rows) :]  # the test rows' part
        if split.kept < split.rank:
            warn_once(
                log,
                f"wide_baseline_{b.shape[1]}_{len(fit_rows)}",
                "the baseline has %d columns for %d rows: the unique share's surrogates split the source on its %d leading "
                "principal components (at most half the rows, %.1f%% of its variance with every column at unit variance)",
                b.shape[1],
                len(fit_rows),
                split.kept,
                100 * split.variance_kept,
            )
        residual = x[test_rows] - shared
        w, bias = joint_probe.weights(i, int(t))
        fixed = shared @ w[:band_start] + b[test_rows] @ w[band_start:] + bias
        if not bool((residual.abs() > 1e-9 * x[test_rows].abs().max().clamp(min=1e-300)).any()):
            continue  # the baseline explains the source exactly: nothing to re-pair, no p-value (NaN)
        out[i] = null_r2(y[test_rows, int(t)].double(), residual @ w[:band_start], perms, valid[int(t)], fixed) - baseline_r2[i]
    return out


class BaselineSplit(NamedTuple):
    shared: torch.Tensor  # [n, d] the source rows as the baseline and the strata predict them
    kept: int  # principal components of the baseline used
    rank: int  # principal components it has
    variance_kept: float  # their share of its variance, every column at unit variance


def baseline_split(x: torch.Tensor, b: torch.Tensor, row_strata: np.ndarray | None = None, max_share: float = 0.5) -> BaselineSplit:
    """The source rows ``x`` ``[n, d]`` as the baseline rows ``b`` ``[n, k]`` and the rows' strata
    predict them (least squares on the baseline and one intercept per stratum: by Frisch-Waugh, on
    the baseline centred within strata), and how many of the baseline's principal components that used.

    A baseline with more columns than about half the rows predicts any source in-sample (at ``k >=
    n - 1`` exactly), which would leave nothing to re-pair; so it is reduced to its leading
    principal components (of its columns at unit variance), at most ``max_share`` of the rows (the
    residual keeps at least half its degrees of freedom). Components below float64 noise are
    dropped at any width.

    >>> b = torch.randn(40, 3, dtype=torch.float64)
    >>> split = baseline_split(b @ torch.ones(3, 2, dtype=torch.float64) + 1, b)
    >>> split.kept, split.rank, bool(torch.allclose(split.shared, b @ torch.ones(3, 2, dtype=torch.float64) + 1))
    (3, 3, True)
    """
    xc, bc = _centre_within(x, row_strata), _centre_within(b, row_strata)
    u, s, _ = torch.linalg.svd(_standardised(bc), full_matrices=False)
    rank = int((s > s.max().clamp(min=1e-300) * 1e-10 * max(b.shape)).sum())
    n_strata = 1 if row_strata is None else len(pd.unique(row_strata))
    kept = min(rank, max(1, int(max_share * len(x)) - n_strata))
    u = u[:, :kept]
    return BaselineSplit(x - (xc - u @ (u.T @ xc)), kept, rank, float((s[:kept] ** 2).sum() / (s**2).sum().clamp(min=1e-300)))


def _standardised(bc: torch.Tensor) -> torch.Tensor:
    """Centred columns at unit variance (constant ones stay 0): the components are chosen on the
    baseline's correlations, so a band at a small scale (a text embedding beside a residual stream
    with massive dimensions) is not dropped for its scale. Least squares on all of them is the same."""
    scale = bc.norm(dim=0)
    return bc / torch.where(scale > 0, scale, 1.0)


def _centre_within(a: torch.Tensor, row_strata: np.ndarray | None) -> torch.Tensor:
    """``a`` ``[n, d]`` less each row's stratum mean (the overall mean without strata)."""
    if row_strata is None:
        return a - a.mean(0)
    codes = torch.from_numpy(pd.factorize(row_strata)[0])
    sums = torch.zeros(int(codes.max()) + 1, a.shape[1], dtype=a.dtype).index_add_(0, codes, a)
    counts = torch.bincount(codes).to(a.dtype)[:, None]
    return a - (sums / counts)[codes]


class _PlainProbe:
    """A fitted linear map as :func:`unique_nulls` sees a probe (``weights(source, target)``)."""

    def __init__(self, w: torch.Tensor, b: torch.Tensor):
        self.w, self.b = w, b

    def weights(self, source: int, target: int) -> tuple[torch.Tensor, torch.Tensor]:
        return self.w, self.b


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
            base_r2 = float(r2_rows(yt, torch.from_numpy(base_pred), valid))
            observed = float(r2_rows(yt, torch.from_numpy(z[test] @ w + b), valid)) - base_r2
            null = unique_nulls(
                _PlainProbe(torch.from_numpy(w), torch.from_numpy(b)),
                torch.from_numpy(z)[:, None],
                torch.from_numpy(np.flatnonzero(~test)),
                torch.from_numpy(np.flatnonzero(test)),
                torch.from_numpy(y)[:, None],
                hidden,
                np.array([0]),
                np.array([base_r2]),
                np.array([False]),
                perms,
                valid[None],
                strata(pd.DataFrame({"t": t, "run_id": episode}).iloc[np.r_[np.flatnonzero(~test), np.flatnonzero(test)]], kind),
            )[0]
        else:
            observed = float(r2_rows(yt, torch.from_numpy(z[test] @ w + b), valid))
            null = null_r2(yt, torch.from_numpy(z[test] @ w + b), perms, valid)
        p = p_value(observed, null)
        assert p is not None  # planted problems always have finite surrogates
        hits += p <= level
    return hits / n_rep
