"""Significance by surrogates: re-pairings of the test rows, their nulls, permutation p-values.

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
(the residual of the source on the baseline, Freedman-Lane style: :func:`unique_null`); the
baseline, and what the source shares with it, stay with their row.
"""

from __future__ import annotations

import logging
from typing import NamedTuple

import numpy as np
import pandas as pd
import torch

from nsync.errors import warn_once
from nsync.stats.r2 import r2_from_rows

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


def null_r2(y: torch.Tensor, predictions: torch.Tensor, perms: np.ndarray, valid: torch.Tensor, fixed: torch.Tensor | None = None) -> np.ndarray:
    """``[surrogates]``: R² of each surrogate, the rows of ``predictions`` ``[rows, dims]``
    re-paired by ``perms`` (``fixed``: a part of the prediction that stays with its row, e.g. the
    baseline's), against ``y`` ``[rows, dims]`` over its ``valid`` dimensions.

    >>> y = torch.arange(8.0, dtype=torch.float64).reshape(4, 2)
    >>> null_r2(y, y, np.array([[0, 1, 2, 3]]), torch.ones(2, dtype=torch.bool)).tolist()   # the identity re-pairing
    [1.0]
    """
    out = np.empty(len(perms))
    for k, perm in enumerate(perms):
        pred = predictions[torch.from_numpy(perm)]
        out[k] = float(r2_from_rows(y, pred if fixed is None else pred + fixed, valid))
    return out


def p_value(observed: float | None, null: np.ndarray) -> float | None:
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


def unique_null(
    source: torch.Tensor,
    baseline: torch.Tensor,
    y_test: torch.Tensor,
    weight: torch.Tensor,
    bias: torch.Tensor,
    train_rows: torch.Tensor,
    test_rows: torch.Tensor,
    perms: np.ndarray,
    valid: torch.Tensor,
    row_strata: np.ndarray,
    baseline_r2: float,
) -> np.ndarray | None:
    """``[surrogates]``: the unique share of one source layer at one target beyond a baseline,
    with only what the source holds beyond the baseline re-paired (Freedman-Lane style): the
    source is split into its least-squares prediction from the baseline (fitted on training and
    test rows) and the residual, and only the residual's part of the joint prediction moves to
    another row; the baseline and what the source shares with it stay with their row.

    ``source`` ``[rows, d]`` and ``baseline`` ``[rows, k]`` hold every pair of the fit, ``y_test``
    ``[test rows, dims]`` the target at the test rows; ``weight`` ``[d + k, dims]`` and ``bias``
    the joint fit's map; ``baseline_r2`` the baseline alone's test R² there. ``row_strata``
    (:func:`strata` of the training rows, then the test rows) is what the permutations keep: it
    joins the baseline in the split, so the residual holds no part of the conversation's shape the
    baseline lacks (a part the surrogates keep, so re-pairing it in some rows only put planted
    nulls at 10-85% for 5% with baselines of 50-700 columns). None where the baseline explains the
    source exactly (nothing to re-pair).
    """
    d = source.shape[1]
    x, b = source.double(), baseline.double()
    # Fitted on training and test rows together: on training rows alone (or test rows alone) the
    # split kept some of the baseline in the residual, and planted nulls came out at 9-10% for 5%.
    fit_rows = torch.cat([train_rows, test_rows])
    split = baseline_split(x[fit_rows], b[fit_rows], row_strata)
    shared = split.shared[len(train_rows) :]  # the test rows' part
    if split.kept < split.rank:  # how the surrogates were built: information, nothing for the user to change
        warn_once(
            log,
            f"wide_baseline_{b.shape[1]}",  # once per baseline width, not per direction
            "the baseline has %d columns for %d rows: the unique share's surrogates split the source on its %d leading "
            "principal components (at most half the rows, %.1f%% of its variance with every column at unit variance)",
            b.shape[1],
            len(fit_rows),
            split.kept,
            100 * split.variance_kept,
            level=logging.INFO,
        )
    residual = x[test_rows] - shared
    if not bool((residual.abs() > 1e-9 * x[test_rows].abs().max().clamp(min=1e-300)).any()):
        return None
    fixed = shared @ weight[:d] + b[test_rows] @ weight[d:] + bias
    return null_r2(y_test.double(), residual @ weight[:d], perms, valid, fixed) - baseline_r2


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
