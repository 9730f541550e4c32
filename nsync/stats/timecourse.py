"""The time course: R² by utterance index, with intervals.

Does synchrony grow as a conversation goes on? The test pairs of a fit are grouped by their
source utterance index (``n_bins`` > 0: that many bins of consecutive indices), and a prediction
is scored per bin: R² around the bin's own mean, from per-(episode, bin) sums, so the episode
bootstrap's replicates (the same draws as SyncR²'s) give each bin its interval. Per bin, SyncR² is
the mean over source layers of the clipped R²; the unique share beyond a baseline is the joint
fit's R² minus the baseline's, unclipped.
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass

import numpy as np
import torch

from nsync.stats.bootstrap import ANY, interval
from nsync.stats.r2 import r2_from_sums


def bins_of(t: np.ndarray, n_bins: int = 0) -> tuple[np.ndarray, list[int]]:
    """Each pair's bin and each bin's first utterance index: every index its own bin (``n_bins``
    0), else ``n_bins`` bins of about equally many indices.

    >>> bins_of(np.array([0, 2, 4, 6, 2]))
    (array([0, 1, 2, 3, 1]), [0, 2, 4, 6])
    >>> bins_of(np.array([0, 2, 4, 6, 2]), 2)
    (array([0, 0, 1, 1, 0]), [0, 4])
    """
    levels = np.unique(t)
    if n_bins <= 0 or n_bins >= len(levels):
        return np.searchsorted(levels, t), levels.tolist()
    groups = np.array_split(levels, n_bins)
    first = [int(g[0]) for g in groups]
    return np.searchsorted(first, t, side="right") - 1, first


@dataclass
class Course:
    """A figure by bin: ``estimate`` ``[bins]`` and its bootstrap ``replicates`` ``[n_boot, bins]``
    (None without a bootstrap), bins labelled by their first utterance index."""

    utterance: list[int]
    n_pairs: list[int]
    estimate: np.ndarray
    replicates: np.ndarray | None


@dataclass
class PooledCourse:
    """A course over split seeds: per bin the mean estimate and its basic interval."""

    utterance: list[int]
    n_pairs: list[int]
    value: list[float | None]
    ci95: list[tuple[float, float] | None]


class TimeCourse:
    """Scores predictions of one fit's test rows per (episode, bin).

    ``episode`` ``[rows]``: each test row's index in the fit's test episodes; ``t``: its source
    utterance index; ``draws`` ``[n_boot, episodes]``: the bootstrap's weights (or None).

    >>> course = TimeCourse(np.array([0, 0, 1, 1]), np.array([0, 2, 0, 2]), 2)
    >>> y = torch.tensor([[1.0], [2.0], [3.0], [5.0]])
    >>> course.r2(y, y, torch.ones(1, dtype=torch.bool))[0].tolist()   # perfect predictions: 1 in each bin
    [1.0, 1.0]
    """

    def __init__(self, episode: np.ndarray, t: np.ndarray, n_episodes: int, n_bins: int = 0, draws: np.ndarray | None = None):
        self.bin, self.labels = bins_of(t, n_bins)
        self.n_bins, self.n_episodes = len(self.labels), n_episodes
        self.cell = torch.from_numpy(episode * self.n_bins + self.bin)
        self.draws = None if draws is None else torch.as_tensor(draws, dtype=torch.float64)
        self.n_pairs = np.bincount(self.bin, minlength=self.n_bins).tolist()

    def _sums(self, values: torch.Tensor) -> torch.Tensor:
        """``[episodes, bins, dims]`` sums of ``values`` ``[rows, dims]``."""
        out = torch.zeros(self.n_episodes * self.n_bins, values.shape[1], dtype=torch.float64)
        return out.index_add_(0, self.cell, values.double()).view(self.n_episodes, self.n_bins, -1)

    def r2(self, y: torch.Tensor, predictions: torch.Tensor, valid: torch.Tensor) -> tuple[np.ndarray, np.ndarray | None]:
        """Per bin R² ``[bins]`` and its replicates ``[n_boot, bins]`` (``y``, ``predictions``:
        ``[rows, dims]``; ``valid``: the dimensions that count)."""
        y = y.double()
        n = torch.zeros(self.n_episodes * self.n_bins, dtype=torch.float64).index_add_(0, self.cell, torch.ones(len(y), dtype=torch.float64))
        n = n.view(self.n_episodes, self.n_bins)
        s1, s2, sse = self._sums(y), self._sums(y * y), self._sums((y - predictions.double()) ** 2)
        estimate, _ = r2_from_sums(n.sum(0), s1.sum(0)[:, None], s2.sum(0)[:, None], sse.sum(0)[:, None], valid=valid[None])
        if self.draws is None:
            return estimate[:, 0].numpy(), None
        w = self.draws
        flat = lambda s: (w @ s.reshape(self.n_episodes, -1)).view(len(w), self.n_bins, -1)  # noqa: E731
        reps, _ = r2_from_sums(w @ n, flat(s1)[:, :, None], flat(s2)[:, :, None], flat(sse)[:, :, None], valid=valid[None])
        return estimate[:, 0].numpy(), reps[:, :, 0].numpy()

    def mean_over_sources(self, per_source: list[tuple[np.ndarray, np.ndarray | None] | None], clip: bool) -> Course:
        """One fit's course from each source layer's ``(estimate, replicates)`` (None: no chosen
        target): the mean over source layers (each R² clipped at 0 first with ``clip``, as SyncR²)."""
        done = [p for p in per_source if p is not None]
        out = Course(self.labels, self.n_pairs, np.full(self.n_bins, np.nan), None)
        if done:
            prep = (lambda v: np.clip(v, 0, None)) if clip else (lambda v: v)  # noqa: E731
            with warnings.catch_warnings(action="ignore", category=RuntimeWarning):  # a bin without an R² in any layer
                out.estimate = np.nanmean([prep(e) for e, _ in done], 0)
                out.replicates = None if done[0][1] is None else np.nanmean([prep(r) for _, r in done if r is not None], 0)
        return out


def pool_seeds(fits: list[Course], bounds: tuple[float, float] = ANY) -> PooledCourse:
    """A direction's course from its split seeds' courses: bins matched by their first utterance
    index, estimate and replicates averaged over the seeds that have the bin, a basic bootstrap
    interval per bin inside ``bounds``.

    >>> c = Course([0, 2], [3, 3], np.array([0.1, 0.3]), None)
    >>> pool_seeds([c, Course([0], [2], np.array([0.3]), None)]).value
    [0.2, 0.3]
    """
    labels = sorted({u for f in fits for u in f.utterance})
    value: list[float | None] = []
    ci: list[tuple[float, float] | None] = []
    n_pairs = []
    for u in labels:
        present = [(f, f.utterance.index(u)) for f in fits if u in f.utterance]
        with warnings.catch_warnings(action="ignore", category=RuntimeWarning):
            estimate = float(np.nanmean([f.estimate[k] for f, k in present]))
            reps = None if any(f.replicates is None for f, _ in present) else np.nanmean([f.replicates[:, k] for f, k in present], 0)  # type: ignore[index]
        value.append(estimate if np.isfinite(estimate) else None)
        ci.append(None if reps is None else interval(reps, estimate, bounds=bounds))
        n_pairs.append(int(present[0][0].n_pairs[present[0][1]]))
    return PooledCourse(labels, n_pairs, value, ci)
