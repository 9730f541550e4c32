"""R² from sums: one formula for the test metric, validation, per-episode sums, the bootstrap,
the surrogates and the time course; and SyncR², the paper's summary of an R² matrix.

Everything that scores a prediction keeps four sums per output dimension: the row count ``n``,
``Σy``, ``Σy²`` and the squared error ``Σ(y - ŷ)²`` (``y`` shifted by a constant, e.g. the training
mean, which changes no R² and keeps the float64 sums small). They add up over batches, DDP ranks
and episodes, so R² of any union or re-weighting of episodes follows from them.

>>> import numpy as np
>>> sync_r2(np.array([[0.2, 0.5], [-0.3, -0.1]]))   # best target per source layer, clipped, mean
0.25
"""

from __future__ import annotations

import warnings

import numpy as np
import torch

#: An output dimension has an R² when its total sum of squares exceeds this share of the largest one.
CONSTANT_TOLERANCE = 1e-9


def r2_from_sums(
    n: torch.Tensor,
    s1: torch.Tensor,
    s2: torch.Tensor,
    sse: torch.Tensor,
    valid: torch.Tensor | None = None,
    center: torch.Tensor | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """(uniform, variance-weighted) R² of each target layer from sums over rows.

    ``s1``, ``s2`` and ``sse`` are ``[..., targets, dims]`` (broadcast against each other), ``n``
    is ``[...]``. Uniform is the mean of the per-dimension R² (scikit-learn's default, the paper's),
    variance-weighted is ``1 - ΣSSE / ΣTSS``; both ``[..., targets]``.

    Output dimensions that are constant have no R² and are left out (scikit-learn would score a
    constant predicted exactly as 1.0): at the last prompt token the embedding output is the
    same for every row, and counting it as perfectly predicted would make SyncR² 1. ``valid``
    (``[targets, dims]``) says which dimensions count; by default those whose total sum of squares
    exceeds :data:`CONSTANT_TOLERANCE` times the largest. A target layer with no valid dimension
    gets NaN. ``center`` replaces the rows' own mean in the total sum of squares (an episode scored
    against the whole test side's mean).

    >>> y = torch.tensor([[1.0], [2.0], [3.0], [4.0]]); p = y + torch.tensor([[0.5], [-0.5], [0.5], [-0.5]])
    >>> u, w = r2_from_sums(torch.tensor(4.0), y.sum(0)[None], (y**2).sum(0)[None], ((y - p)**2).sum(0)[None])
    >>> round(u.item(), 6), round(w.item(), 6)   # sklearn.metrics.r2_score gives 0.8
    (0.8, 0.8)
    """
    n = torch.as_tensor(n, dtype=s1.dtype, device=s1.device)[..., None, None]
    if center is None:
        tss = s2 - s1**2 / n.clamp(min=1)
        enough = n > 1  # one row has no variance around its own mean
    else:
        tss = s2 - 2 * center * s1 + n * center**2
        enough = n > 0
    if valid is None:
        largest = tss.flatten(-2).amax(-1)[..., None, None].clamp(min=1e-300)
        valid = tss > CONSTANT_TOLERANCE * largest
    ok = valid & (tss > 0) & enough
    raw = torch.where(ok, 1 - sse / torch.where(ok, tss, torch.ones_like(tss)), torch.full_like(tss, float("nan")))
    uniform = raw.nanmean(-1)
    weighted = 1 - (sse * ok).sum(-1) / (tss * ok).sum(-1)  # 0 / 0 = NaN when no dimension varies
    return uniform, weighted


def r2_from_rows(y: torch.Tensor, predictions: torch.Tensor, valid: torch.Tensor | None = None) -> torch.Tensor:
    """Uniform R² of ``predictions`` ``[..., rows, dims]`` against ``y`` ``[rows, dims]`` around
    ``y``'s own mean, over the ``valid`` dimensions (``[dims]``): ``[...]``. The sums of
    :func:`r2_from_sums`, taken over rows (the same formula, not a second one).

    >>> y = torch.tensor([[1.0], [2.0], [3.0], [4.0]], dtype=torch.float64)
    >>> round(float(r2_from_rows(y, y + torch.tensor([[0.5], [-0.5], [0.5], [-0.5]], dtype=torch.float64))), 6)
    0.8
    """
    y = y.double()
    s1, s2 = y.sum(-2), (y * y).sum(-2)
    sse = ((y - predictions.double()) ** 2).sum(-2)
    uniform, _ = r2_from_sums(
        torch.tensor(float(y.shape[-2]), dtype=torch.float64),
        s1[None],
        s2[None],
        sse[..., None, :],
        valid=None if valid is None else valid[None],
    )
    return uniform[..., 0]


def valid_dims(sums: dict) -> torch.Tensor:
    """``[targets, dims]``: output dimensions that vary on the full test side (as the test metric),
    from per-episode sums ``n [E]``, ``s1``, ``s2`` ``[E, targets, dims]``."""
    tss = sums["s2"].sum(0) - sums["s1"].sum(0) ** 2 / sums["n"].sum()
    return tss > CONSTANT_TOLERANCE * tss.max().clamp(min=1e-300)


def sync_r2(r2: np.ndarray, clip: bool = True, chosen: np.ndarray | None = None) -> float:
    """SyncR² of one direction: per source layer one target layer's test R² (the one ``chosen``
    for it, by position, -1 for none; by default the best, the paper's rule), negatives clipped
    to 0 (unless ``clip=False``), averaged over source layers.

    >>> sync_r2(np.array([[0.2, 0.5], [-0.3, -0.1]]), clip=False)
    0.2
    >>> sync_r2(np.array([[0.2, 0.5], [-0.3, -0.1]]), chosen=np.array([0, 1]))
    0.1
    >>> sync_r2(np.array([[np.nan, np.nan]]))  # no source layer has an R²: undefined, without a warning
    nan
    """
    best = row_max(r2) if chosen is None else at_chosen(r2, chosen)
    if clip:
        best = np.clip(best, 0.0, None)
    return float(np.nanmean(best)) if np.isfinite(best).any() else float("nan")


def row_max(r2: np.ndarray) -> np.ndarray:
    """Best value per row, ignoring NaN (targets with no variance); NaN for an all-NaN row.

    >>> row_max(np.array([[0.1, np.nan], [np.nan, np.nan]])).tolist()
    [0.1, nan]
    """
    out = np.full(r2.shape[0], np.nan)
    for i, row in enumerate(r2):
        if np.isfinite(row).any():
            out[i] = np.nanmax(row)
    return out


def at_chosen(r2: np.ndarray, chosen: np.ndarray) -> np.ndarray:
    """Each row's value at its chosen column (NaN where none was chosen, -1).

    >>> at_chosen(np.array([[0.1, 0.2], [0.3, 0.4]]), np.array([1, -1])).tolist()
    [0.2, nan]
    """
    chosen = np.asarray(chosen, dtype=int)
    out = np.full(r2.shape[0], np.nan)
    ok = chosen >= 0
    out[ok] = r2[np.flatnonzero(ok), chosen[ok]]
    return out


def choose_targets(test_r2: np.ndarray, val_r2: np.ndarray | None = None) -> np.ndarray:
    """``[source layers]``: each source layer's target layer (position; -1 where nothing can be
    chosen): the best validation R² when ``val_r2`` is given (the test R² is then an honest
    estimate of the chosen cell), else the best test R² (the paper's rule, optimistic).

    >>> choose_targets(np.array([[0.1, 0.3]]), np.array([[0.4, 0.2]])).tolist(), choose_targets(np.array([[0.1, 0.3]])).tolist()
    ([0], [1])
    """
    scores = test_r2 if val_r2 is None else val_r2
    finite = np.isfinite(scores)
    return np.where(finite.any(1), np.argmax(np.where(finite, scores, -np.inf), axis=1), -1)


def same_layer_r2(r2: np.ndarray, source_layers: list[int], target_layers: list[int]) -> float | None:
    """Mean R² of the pairs whose source and target layer have the same index (the diagonal).

    >>> same_layer_r2(np.array([[0.5, 0.1], [0.2, 0.3]]), [1, 2], [1, 2])
    0.4
    """
    common = [(source_layers.index(layer), target_layers.index(layer)) for layer in source_layers if layer in target_layers]
    if not common:
        return None
    values = np.array([r2[i, j] for i, j in common], dtype=float)
    return float(np.nanmean(values)) if np.isfinite(values).any() else None


def mean_best(matrices: list[np.ndarray]) -> float:
    """Mean over matrices of the mean over rows of each row's best finite value (NaN if none).

    >>> round(mean_best([np.array([[0.1, 0.3], [0.2, 0.0]]), np.array([[0.5, 0.1], [0.1, 0.1]])]), 6)
    0.275
    """
    with warnings.catch_warnings(action="ignore", category=RuntimeWarning):  # all-NaN rows and matrices
        return float(np.nanmean([np.nanmean(row_max(m)) for m in matrices]))


def mean_over_sources(values: np.ndarray) -> np.ndarray:
    """NaN-aware mean over the first axis (source layers without a chosen target are left out).

    >>> mean_over_sources(np.array([[1.0, np.nan], [3.0, np.nan]])).tolist()
    [2.0, nan]
    """
    with warnings.catch_warnings(action="ignore", category=RuntimeWarning):
        return np.nanmean(values, axis=0)
