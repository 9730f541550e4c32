"""The communication subspace: in how many dimensions the speaker's state predicts the partner's.

Reduced-rank regression as Semedo, Zandvakili, Machens, Yu and Kohn (Neuron 2019) use it between
two brain areas, on the map a fit already has: the fitted probe's predictions of the training
pairs are decomposed into their principal directions ``V`` (right singular vectors, by falling
variance), and the rank-``r`` map keeps the first ``r``: ``ŷ_r = ŷ V_r V_rᵀ`` (predictions
around the training mean). That is reduced-rank ridge regression (the ridge solution projected
on the top ``r`` directions of its own fitted values): one SVD per cell, no new fit.

- :func:`rank_predictions` gives the test predictions at every rank up to a cap;
- :func:`dimensionality` is the smallest rank whose test R² reaches a share (90%) of the full
  map's: the *dimensionality of synchrony*;
- :func:`alignment` asks whether the predictive dimensions lie along the source's own dominant
  dimensions: the share of the rank-``r`` predictive subspace (in the source's space) inside the
  source's top-``r`` principal components, against ``r / k`` for a random subspace of that size in
  the ``k``-dimensional span of the training rows (where a ridge map lies).
"""

from __future__ import annotations

import numpy as np
import torch


def leading_directions(rows: torch.Tensor, k: int) -> torch.Tensor:
    """``[cols, k']`` the first ``k`` principal directions of ``rows`` ``[n, cols]`` (right singular
    vectors of the centred rows, by falling variance; ``k'`` is at most ``n - 1`` and ``cols``).
    An exact SVD where the matrix is small; where it is large (the paper's 7B shape: thousands of
    rows of 4,096) a randomized one with a fixed seed (the same every run), which costs
    ``rows x cols x k`` instead of ``rows x cols x min(rows, cols)``.

    >>> p = torch.tensor([[2.0, 0.0], [-2.0, 0.0], [0.0, 1.0], [0.0, -1.0]])
    >>> leading_directions(p, 2).abs().tolist()
    [[1.0, 0.0], [0.0, 1.0]]
    """
    centred = rows.double() - rows.double().mean(0)
    n, cols = centred.shape
    k = max(1, min(k, n - 1, cols))
    if min(n, cols) <= 4 * k + 64:
        return torch.linalg.svd(centred, full_matrices=False)[2][:k].T
    with torch.random.fork_rng(devices=[]):  # its own draws: the fit's random state is left alone
        torch.manual_seed(0)
        return torch.svd_lowrank(centred, q=k + 16, niter=6)[2][:, :k]


def predictive_directions(train_predictions: torch.Tensor, k: int) -> torch.Tensor:
    """``[d_out, k']`` orthonormal directions of the target space, by the variance of the training
    predictions ``[rows, d_out]`` along them: the first ``k`` (:func:`leading_directions`)."""
    return leading_directions(train_predictions, k)


def rank_predictions(test_predictions: torch.Tensor, centre: torch.Tensor, directions: torch.Tensor, ranks: list[int], full: int):
    """Per rank in ``ranks`` the reduced-rank test predictions ``[rows, d_out]``: the full map's
    predictions ``test_predictions`` around ``centre`` (the training mean of the predictions)
    projected on the first ``r`` ``directions``; rank ``full`` (the target's width) gives the
    predictions back.

    >>> v = torch.eye(2, dtype=torch.float64)
    >>> [p.tolist() for p in rank_predictions(torch.tensor([[3.0, 4.0]]), torch.zeros(2), v[:, :1], [1, 2], full=2)]
    [[[3.0, 0.0]], [[3.0, 4.0]]]
    """
    coords = (test_predictions.double() - centre.double()) @ directions  # [rows, k]
    for r in ranks:
        yield test_predictions.double() if r >= full else coords[:, :r] @ directions[:, :r].T + centre.double()


def ranks_to_try(max_rank: int, d_out: int) -> list[int]:
    """Every rank from 1 up to ``max_rank`` (at most ``d_out``), then the full rank.

    >>> ranks_to_try(3, 8), ranks_to_try(16, 4)
    ([1, 2, 3, 8], [1, 2, 3, 4])
    """
    return list(range(1, min(max_rank, d_out) + 1)) + ([d_out] if max_rank < d_out else [])


def dimensionality(r2_by_rank: np.ndarray, ranks: list[int], share: float = 0.9) -> int | None:
    """The smallest rank whose R² reaches ``share`` of the full rank's (the last of ``ranks``);
    None where the full map predicts nothing (R² <= 0) or no rank is finite. ``r2_by_rank``
    ``[..., ranks]``: a leading axis (replicates) gives one value per row (-1 for None).

    >>> dimensionality(np.array([0.1, 0.28, 0.3, 0.3]), [1, 2, 3, 8])
    2
    >>> dimensionality(np.array([[0.1, 0.3], [0.2, -0.1]]), [1, 2]).tolist()
    [2, -1]
    """
    r2 = np.asarray(r2_by_rank, dtype=float)
    if r2.ndim > 1:
        return np.array([(-1 if (d := dimensionality(row, ranks, share)) is None else d) for row in r2.reshape(-1, r2.shape[-1])]).reshape(
            r2.shape[:-1]
        )  # type: ignore[return-value]
    full = r2[-1]
    if not np.isfinite(full) or full <= 0:
        return None
    reached = np.flatnonzero(np.nan_to_num(r2, nan=-np.inf) >= share * full)
    return int(ranks[reached[0]])


def dominant_dimensions(source_rows: torch.Tensor, source_scale: torch.Tensor, k: int) -> tuple[torch.Tensor, int]:
    """The source's first ``k`` principal components ``[d_in, k']`` in the space the ridge map was
    fitted in (every dimension divided by ``source_scale``: the probe's feature scale, ones where
    it did not scale), and how many components the rows have at all (``min(rows - 1, d_in)``: a
    ridge map lies in their span)."""
    z = source_rows.double() / source_scale.double().clamp(min=1e-12)
    return leading_directions(z, k), min(z.shape[0] - 1, z.shape[1])


def alignment(
    weight: torch.Tensor, directions: torch.Tensor, source_scale: torch.Tensor, components: tuple[torch.Tensor, int], rank: int
) -> tuple[float, float]:
    """The share of the rank-``rank`` predictive subspace inside the source's top-``rank``
    principal components, and a random subspace's expected share: ``rank / k`` for the ``k``
    components the training rows have (``components``: :func:`dominant_dimensions`, in the same
    scaled space; a ridge map fitted there lies in their span).

    ``weight`` ``[d_in, d_out]`` maps source states to predictions (``y = x @ weight + b``);
    ``directions``: :func:`predictive_directions`. The predictive subspace is the span of the
    map's rows along the first ``rank`` directions, in the scaled source space.

    >>> _ = torch.manual_seed(0)
    >>> x = torch.randn(500, 4) * torch.tensor([3.0, 2.0, 1.0, 0.5])
    >>> w = torch.zeros(4, 2); w[0, 0] = 1.0                         # predicts from the source's first dimension
    >>> share, random = alignment(w, torch.eye(2, dtype=torch.float64), torch.ones(4), dominant_dimensions(x, torch.ones(4), 1), 1)
    >>> round(share, 2), random
    (1.0, 0.25)
    """
    top, k = components
    rank = min(rank, directions.shape[1], top.shape[1])  # no more dimensions than the rows give
    scale = source_scale.double().clamp(min=1e-12)
    mapped = (weight.double() * scale[:, None]) @ directions[:, :rank]  # x W = (x / scale) (scale W)
    q, _ = torch.linalg.qr(mapped)
    return float((top[:, :rank].T @ q).pow(2).sum() / rank), rank / k


def tracked_share(features: torch.Tensor, coords: torch.Tensor, train: np.ndarray, test: np.ndarray) -> float:
    """How much of the shared signal ``coords`` ``[rows, r]`` (states in the communication
    subspace) observable ``features`` ``[rows, k]`` explain: ridge regression (penalty chosen by
    leave-one-out on the ``train`` rows, features standardised) scored on the ``test`` rows, R²
    uniform over the subspace's dimensions (NaN where no coordinate varies on the test rows).

    >>> g = torch.Generator().manual_seed(0)
    >>> f = torch.randn(400, 3, generator=g); c = f[:, :1] * 2 + 0.1 * torch.randn(400, 1, generator=g)
    >>> round(tracked_share(f, c, np.arange(300), np.arange(300, 400)), 2)
    1.0
    """
    from sklearn.linear_model import RidgeCV
    from sklearn.metrics import r2_score
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    x, y = features.double().numpy(), coords.double().numpy()
    if not len(test) or not (y[test].std(0) > 0).any():
        return float("nan")
    model = make_pipeline(StandardScaler(), RidgeCV(alphas=np.logspace(-2, 4, 7)))
    model.fit(x[train], y[train])
    varying = y[test].std(0) > 0
    predicted = model.predict(x[test]).reshape(len(test), -1)  # one coordinate comes back 1-dimensional
    return float(r2_score(y[test][:, varying], predicted[:, varying]))
