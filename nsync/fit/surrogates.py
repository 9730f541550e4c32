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
    key = test_pairs["t"].to_numpy() if kind == "pseudo_dyad" else test_pairs["run_id"].to_numpy()
    groups = [rows[key == k] for k in pd.unique(key)]
    for k in range(n):
        for group in groups:
            if kind == "pseudo_dyad":
                out[k, group] = _other_episode(group, episode, rng)
            elif len(group) >= 3:  # rows of one run, in utterance order
                out[k, group] = np.roll(group, int(rng.integers(0, len(group))))
    return out


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
) -> np.ndarray:
    """``[chunk, surrogates]``: each source layer's unique share at its chosen target with only
    what the source holds beyond the baseline re-paired (Freedman-Lane style): the source is split
    into its least-squares prediction from the baseline (fitted on training and test rows) and the
    residual, and only the residual's part of the joint prediction moves to another row; the
    baseline and what the source shares with it stay with their row. ``x_joint`` ``[rows, chunk,
    d + k]`` holds source and baseline of every pair, ``y`` ``[rows, targets, d]`` the targets;
    ``baseline_r2`` ``[chunk]`` is the baseline alone's test R² at the chosen target. Where the
    baseline alone validated better (``baseline_only``) the unique share is 0 in every surrogate."""
    out = np.full((len(chosen), len(perms)), np.nan)
    for i, t in enumerate(chosen):
        if t < 0:
            continue
        if baseline_only[i]:
            out[i] = 0.0
            continue
        x, b = x_joint[:, i, :band_start].double(), x_joint[:, i, band_start:].double()
        # Fitted on training and test rows together: on training rows alone (or test rows alone) the
        # split kept some of the baseline in the residual, and planted nulls came out at 9-10% for 5%.
        fit_rows = torch.cat([train_rows, test_rows])
        if b.shape[1] > len(fit_rows) // 2:
            warn_once(
                log,
                "wide_baseline",
                "the baseline has %d columns for %d rows: the source's residual on it is small, and the unique share's surrogate p-value loses power",
                b.shape[1],
                len(fit_rows),
            )
        xm, bm = x[fit_rows].mean(0), b[fit_rows].mean(0)
        bc = b[fit_rows] - bm
        gram = bc.T @ bc
        ridge = 1e-8 * torch.diagonal(gram).mean().clamp(min=1e-12) * torch.eye(gram.shape[0], dtype=gram.dtype)  # numerical only
        coef = torch.linalg.solve(gram + ridge, bc.T @ (x[fit_rows] - xm))
        shared = (b[test_rows] - bm) @ coef + xm  # the source as the baseline predicts it
        residual = x[test_rows] - shared
        w, bias = joint_probe.weights(i, int(t))
        fixed = shared @ w[:band_start] + b[test_rows] @ w[band_start:] + bias
        out[i] = null_r2(y[test_rows, int(t)].double(), residual @ w[:band_start], perms, valid[int(t)], fixed) - baseline_r2[i]
    return out


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
) -> float:
    """How often the surrogate p-value falls at or below ``level`` on planted problems (no Lightning:
    plain numpy ridge, nsync's permutations and nulls). Each episode has ``turns`` pairs at utterance
    indices 0, 2, ...; every state carries a vector per utterance index (``shape``: what the
    pseudo-dyads keep). For SyncR² the target is independent of the source given the index; with
    ``unique`` the source is the baseline mixed plus a private part and the target depends on the
    baseline only. ``effect`` > 0 plants a real (resp. private) coupling: the rate is then the power.

    >>> false_positive_rate(n_rep=3, n=20) <= 1.0
    True
    """
    rng = np.random.default_rng(seed)
    hits = 0
    for r in range(n_rep):
        t = np.tile(np.arange(0, 2 * turns, 2), n_episodes)
        episode = np.repeat(np.arange(n_episodes), turns)
        profile = shape * rng.normal(size=(2 * turns, hidden))
        base = rng.normal(size=(len(t), hidden))
        private = rng.normal(size=(len(t), hidden))
        if unique:
            x = base @ rng.normal(size=(hidden, hidden)) / np.sqrt(hidden) + private + profile[t]
            y = base @ rng.normal(size=(hidden, hidden)) + effect * private + rng.normal(size=base.shape) + profile[t]
            z = np.concatenate([x, base], 1)
        else:
            x = private + profile[t]
            y = effect * private + rng.normal(size=x.shape) + profile[t]
            z = x
        test = np.isin(episode, rng.permutation(n_episodes)[: n_episodes // 3])
        zc, yc = z[~test] - z[~test].mean(0), y[~test] - y[~test].mean(0)
        w = np.linalg.solve(zc.T @ zc + np.eye(z.shape[1]), zc.T @ yc)
        b = y[~test].mean(0) - z[~test].mean(0) @ w
        pairs = pd.DataFrame({"episode_id": episode[test], "run_id": episode[test], "t": t[test]})
        perms = permutations(pairs, n, kind, seed=r)
        valid = torch.ones(hidden, dtype=torch.bool)
        yt = torch.from_numpy(y[test])
        if unique:
            wb = np.linalg.solve(zc[:, hidden:].T @ zc[:, hidden:] + np.eye(hidden), zc[:, hidden:].T @ yc)
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
            )[0]
        else:
            observed = float(r2_rows(yt, torch.from_numpy(z[test] @ w + b), valid))
            null = null_r2(yt, torch.from_numpy(z[test] @ w + b), perms, valid)
        p = p_value(observed, null)
        assert p is not None  # planted problems always have finite surrogates
        hits += p <= level
    return hits / n_rep
