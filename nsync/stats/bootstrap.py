"""The episode bootstrap: replicate weights, replicate R², pooling over fits, intervals.

Episodes, not pairs, are the unit that is resampled (the utterances of one conversation are not
independent). Replicate ``b`` gives every episode a weight drawn from Poisson(1), the number of
times it is drawn (the Poisson bootstrap: the multinomial draw of n episodes with replacement,
without fixing n). An episode's weights depend only on its id and the seed, so

- two runs with the same test episodes (the main condition and a control on one cache and split
  seed) share their replicates, and the difference of their replicates is a bootstrap of the
  difference paired by episode id;
- the split seeds of one run, whose test sides overlap, are resampled jointly: an episode drawn
  twice counts twice in every split seed that tests it, so averaging the seeds' replicates
  (:func:`pool`) resamples the run's episodes once (independent draws per seed would treat
  overlapping test sides as independent samples, and the interval would be too narrow).

Every R² here comes from per-episode sums through :func:`nsync.stats.r2.r2_from_sums`.
"""

from __future__ import annotations

import hashlib
import warnings
from collections.abc import Sequence

import numpy as np
import torch

from nsync.stats.r2 import r2_from_sums, valid_dims

#: How replicates weight episodes (recorded in results.json; runs pair only with the same scheme).
SCHEME = "poisson-by-episode"


class EpisodeBootstrap:
    """Replicate weights of test episodes: Poisson(1) counts keyed by episode id.

    >>> boot = EpisodeBootstrap(n_boot=4, seed=0)
    >>> w = boot.weights(["e3", "e1"])
    >>> w.shape, bool((boot.weights(["e1", "e7"])[:, 0] == w[:, 1]).all())   # e1's draws, in any set
    ((4, 2), True)
    """

    def __init__(self, n_boot: int = 1000, seed: int = 0):
        self.n_boot, self.seed = n_boot, seed

    def weights(self, episodes) -> np.ndarray:
        """``[n_boot, len(episodes)]``: how often each episode is drawn in each replicate."""
        out = np.empty((self.n_boot, len(episodes)))
        for i, episode in enumerate(episodes):
            digest = hashlib.sha256(f"{episode}|{self.seed}".encode()).digest()
            out[:, i] = np.random.default_rng(int.from_bytes(digest[:8], "little")).poisson(1.0, self.n_boot)
        return out


def replicate_targets(chosen: int | None, n_targets: int) -> list[int]:
    """The target layers a source layer's replicates pick the best of: the one chosen on
    validation episodes, or (``chosen`` None: the best is picked on the test side, the paper's
    rule) all of them, re-picked in every replicate as the estimate picked it.

    >>> replicate_targets(2, 4), replicate_targets(None, 3)
    ([2], [0, 1, 2])
    """
    return [int(chosen)] if chosen is not None else list(range(n_targets))


def pool(per_fit: Sequence[tuple[int, np.ndarray]], skip_nan: bool = False) -> np.ndarray:
    """A run's figure (or its replicates, its surrogates) from each fit's, as SyncR² is pooled:
    the mean over the fits of a split seed (its directions), then over split seeds, in the order
    they first appear. Replicates pair by index, which the episode-keyed weights make one joint
    draw over seeds and directions. ``skip_nan``: a direction without a value (NaN) leaves its
    split seed's mean to the others.

    >>> pool([(0, np.array([1.0, 2.0])), (0, np.array([3.0, 4.0])), (1, np.array([0.0, 0.0]))]).tolist()
    [1.0, 1.5]
    """
    seeds = list(dict.fromkeys(seed for seed, _ in per_fit))
    with warnings.catch_warnings(action="ignore", category=RuntimeWarning):  # all-NaN with skip_nan
        within = [(np.nanmean if skip_nan else np.mean)(np.stack([v for s, v in per_fit if s == seed]), axis=0) for seed in seeds]
    return np.mean(np.stack(within), axis=0)


class ReplicateR2:
    """R² of bootstrap replicates for one set of test episodes: the target-side sums of each
    replicate (``n``, ``Σy``, ``Σy²``) are the same for every source layer, so they are computed
    once per target layer and kept; a source layer adds its squared errors.

    ``sums`` holds ``n [E]`` and ``s1``, ``s2`` ``[E, targets, dims]`` (from
    :class:`nsync.probes.metrics.LayerR2`); ``weights`` is ``[n_boot, E]``.
    """

    def __init__(self, sums: dict, weights: np.ndarray):
        self.w = torch.as_tensor(weights, dtype=torch.float64)
        self.s1, self.s2 = sums["s1"], sums["s2"]
        self.n = self.w @ sums["n"].double()
        self.valid = valid_dims(sums)
        self._targets: dict[int, tuple[torch.Tensor, torch.Tensor]] = {}

    def _target(self, t: int) -> tuple[torch.Tensor, torch.Tensor]:
        if t not in self._targets:
            self._targets[t] = (self.w @ self.s1[:, t].double(), self.w @ self.s2[:, t].double())
        return self._targets[t]

    def __call__(self, sse: torch.Tensor, targets: list[int]) -> np.ndarray:
        """``[n_boot, len(targets)]`` uniform R² from one source layer's ``sse`` ``[E, targets, dims]``."""
        s1, s2 = (torch.stack(parts, 1) for parts in zip(*(self._target(t) for t in targets), strict=True))
        sse_b = torch.stack([self.w @ sse[:, t].double() for t in targets], 1)
        uniform, _ = r2_from_sums(self.n, s1, s2, sse_b, valid=self.valid[targets])
        return uniform.numpy()


def replicate_r2(sums: dict, weights: np.ndarray, targets: list[int] | None = None) -> np.ndarray:
    """``[n_boot, len(targets)]`` uniform R² of every replicate from per-episode sums of one source
    layer: ``n [E]``, ``s1``, ``s2``, ``sse`` ``[E, targets, dims]``. With all weights 1 this is
    the test R²."""
    targets = list(range(sums["s1"].shape[1])) if targets is None else list(targets)
    return ReplicateR2(sums, weights)(sums["sse"], targets)


def episode_r2(sums: dict, targets: list[int] | None = None) -> np.ndarray:
    """``[episodes, targets]`` R² of each test episode on its own, against the variance around the
    whole test side's mean (an episode's few pairs have almost no variance of their own):
    ``1 - SSE_e / sum_e (y - mean_test)²``, averaged uniformly over output dimensions."""
    t = slice(None) if targets is None else list(targets)
    mean = sums["s1"].sum(0) / sums["n"].sum()
    uniform, _ = r2_from_sums(sums["n"], sums["s1"][:, t], sums["s2"][:, t], sums["sse"][:, t], valid=valid_dims(sums)[t], center=mean[t])
    return uniform.numpy()


def replicate_sync_r2(per_source_layer: list[np.ndarray], clip: bool = True) -> np.ndarray:
    """``[n_boot]`` SyncR² replicates from each source layer's ``[n_boot, n_targets]`` R²: best
    target per replicate, negatives clipped to 0, mean over source layers (as :func:`nsync.stats.r2.sync_r2`)."""
    stack = np.stack(per_source_layer)  # [S, B, T]
    with warnings.catch_warnings(action="ignore", category=RuntimeWarning):  # all-NaN rows
        best = np.nanmax(stack, axis=2)
        if clip:
            best = np.clip(best, 0.0, None)
        return np.nanmean(best, axis=0)


#: How :func:`interval` turns replicates into an interval. ``basic`` (the reverse percentile
#: interval, ``2 θ̂ - q``) was chosen on evidence: on planted problems with episode effects
#: (``experiments/benchmarks/bootstrap_coverage.py``) the percentile interval of SyncR² covered the
#: population value 61-83% of the time for a nominal 95%, the basic one 83-95%, because SyncR²'s
#: replicates sit below the estimate by about as much as the estimate sits below the population
#: value (R² around a small test side's own mean, a best-of-targets and a clip at 0).
INTERVAL_METHODS = ("basic", "percentile")

#: The ranges the population values lie in, which intervals and bias-corrected values are kept
#: inside: an R² is at most 1; SyncR² (clipped at 0) lies in [0, 1]; a difference of two SyncR² in
#: [-1, 1].
R2_RANGE = (-np.inf, 1.0)
SYNC_R2_RANGE = (0.0, 1.0)
DIFFERENCE_RANGE = (-1.0, 1.0)
ANY = (-np.inf, np.inf)


def interval(
    replicates: np.ndarray, estimate: float | None, level: float = 0.95, method: str = "basic", bounds: tuple[float, float] = ANY
) -> tuple[float, float] | None:
    """Bootstrap interval for ``estimate`` from its finite ``replicates`` (None without any),
    inside ``bounds``, the range the population value lies in.

    ``basic``: ``[2 θ̂ - q_hi, 2 θ̂ - q_lo]``, which corrects for the estimator's bias as the
    replicates show it; it always holds :func:`bias_corrected` (the replicates' mean lies between
    their quantiles), and it holds the raw estimate whenever the bias is smaller than the spread.
    ``percentile``: ``[q_lo, q_hi]``.

    Where the interval leaves ``bounds`` its ends are moved to them: the population value lies in
    the range, so this never changes whether the interval holds it (its coverage is the unbounded
    interval's), it only drops values the quantity cannot take. Where the whole interval lies
    beyond one bound (replicates so skewed that ``2 θ̂ - q`` overshoots on both ends) the percentile
    interval, which lies among the replicates, is used instead, moved inside the range the same way
    and widened to hold :func:`bias_corrected` as the basic interval does
    (``experiments/benchmarks/bootstrap_coverage.py`` measures the coverage of both on planted
    problems where the basic interval escapes).

    >>> tuple(round(x, 6) for x in interval(np.array([0.1, 0.2, 0.3]), 0.25, level=0.5))
    (0.25, 0.35)
    >>> interval(np.array([0.0, 0.0, 0.1]), 0.02, level=0.5, bounds=SYNC_R2_RANGE)   # 2θ̂ - q_hi = -0.01
    (0.0, 0.04)
    """
    if method not in INTERVAL_METHODS:
        raise ValueError(f"unknown interval method '{method}'; use one of {INTERVAL_METHODS}")
    r = np.asarray(replicates, dtype=float)
    r = r[np.isfinite(r)]
    if not len(r) or estimate is None or not np.isfinite(estimate):
        return None
    q_lo, q_hi = np.percentile(r, [50 * (1 - level), 50 * (1 + level)])
    lo, hi = (2 * estimate - q_hi, 2 * estimate - q_lo) if method == "basic" else (q_lo, q_hi)
    if lo > bounds[1] or hi < bounds[0]:
        centre = np.clip(2 * estimate - r.mean(), *bounds)  # bias_corrected's value
        lo, hi = min(q_lo, centre), max(q_hi, centre)
    return float(np.clip(lo, *bounds)), float(np.clip(hi, *bounds))


def bias_corrected(estimate: float | None, replicates: np.ndarray, bounds: tuple[float, float] = ANY) -> float | None:
    """``2 θ̂ - mean(replicates)``: the estimate minus the bias its replicates show, inside ``bounds``.

    >>> round(bias_corrected(0.3, np.array([0.2, 0.22, 0.24])), 6)
    0.38
    >>> bias_corrected(0.9, np.array([0.5, 0.7]), bounds=R2_RANGE)
    1.0
    """
    r = np.asarray(replicates, dtype=float)
    r = r[np.isfinite(r)]
    if not len(r) or estimate is None or not np.isfinite(estimate):
        return None
    return float(np.clip(2 * estimate - r.mean(), *bounds))


def intervals(
    names: Sequence[str], estimate: np.ndarray, replicates: np.ndarray, bounds: dict[str, tuple[float, float]] | None = None
) -> tuple[dict[str, tuple[float, float] | None], dict[str, float | None]]:
    """Per named quantity the basic interval and the bias-corrected value of ``estimate``
    ``[quantities]`` from its ``replicates`` ``[quantities, n_boot]``, each inside its ``bounds``.

    >>> ci, corrected = intervals(["a"], np.array([0.3]), np.array([[0.2, 0.22, 0.24]]))
    >>> round(corrected["a"], 6)
    0.38
    """
    bounds = bounds or {}
    ci = {q: interval(replicates[i], estimate[i], bounds=bounds.get(q, ANY)) for i, q in enumerate(names)}
    corrected = {q: bias_corrected(estimate[i], replicates[i], bounds=bounds.get(q, ANY)) for i, q in enumerate(names)}
    return ci, corrected
