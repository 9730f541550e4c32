"""Bootstrap over episodes for SyncR².

Episodes, not pairs, are the unit that is resampled (the utterances of one conversation are not
independent): replicate ``b`` draws the run's test episodes with replacement, as many as there
are, and gives each the number of times it was drawn as its weight. The draws depend only on the
set of test episodes and the seed, so two runs with the same test episodes (the main condition
and a control on one cache and split seed) share their replicates, and the difference of their
replicates is a paired bootstrap of the difference.
"""

from __future__ import annotations

import hashlib
import warnings

import numpy as np


class EpisodeBootstrap:
    """Replicate weights for sets of test episodes.

    >>> boot = EpisodeBootstrap(n_boot=4, seed=0)
    >>> w = boot.weights(["e3", "e1"])
    >>> w.shape, bool((w.sum(1) == 2).all())
    ((4, 2), True)
    """

    def __init__(self, n_boot: int = 1000, seed: int = 0):
        self.n_boot, self.seed = n_boot, seed

    def weights(self, episodes) -> np.ndarray:
        """``[n_boot, len(episodes)]``: how often each episode is drawn in each replicate."""
        episodes = [str(e) for e in episodes]
        order = sorted(episodes)
        # Seeded by the episode set, so every run with these test episodes gets the same draws.
        digest = hashlib.sha256(("\n".join(order) + f"|{self.seed}").encode()).digest()
        rng = np.random.default_rng(int.from_bytes(digest[:8], "little"))
        n = len(order)
        drawn = rng.multinomial(n, np.full(n, 1.0 / n), size=self.n_boot).astype(np.float64)
        position = {e: i for i, e in enumerate(order)}
        return drawn[:, [position[e] for e in episodes]]


def replicate_r2(sums: dict, weights: np.ndarray, n_targets: int) -> np.ndarray:
    """``[n_boot, n_targets]`` uniform-average R² of every replicate from per-episode sums.

    ``sums`` holds ``n [E]``, ``s1``, ``s2``, ``sse`` ``[E, n_targets * d_out]`` (from
    :class:`nsync.probes.metrics.EpisodeSums`). Output dimensions constant on the full test side
    have no R², as in :class:`nsync.probes.metrics.LayerR2`. With all weights 1 this is the test R².
    """
    full_tss = np.sum(sums["s2"], 0) - np.sum(sums["s1"], 0) ** 2 / np.sum(sums["n"])
    valid = full_tss > 1e-9 * max(full_tss.max(), 1e-300)
    n = weights @ np.asarray(sums["n"], dtype=np.float64)  # [B]
    s1 = weights @ np.asarray(sums["s1"], dtype=np.float64)
    s2 = weights @ np.asarray(sums["s2"], dtype=np.float64)
    sse = weights @ np.asarray(sums["sse"], dtype=np.float64)
    with np.errstate(divide="ignore", invalid="ignore"):
        tss = s2 - s1**2 / n[:, None]
        ok = valid[None, :] & (tss > 0) & (n[:, None] > 1)
        raw = np.where(ok, 1 - sse / np.where(ok, tss, 1.0), np.nan)
    b = weights.shape[0]
    raw = raw.reshape(b, n_targets, -1)
    with warnings.catch_warnings(action="ignore", category=RuntimeWarning):
        return np.nanmean(raw, axis=2)


def restrict_targets(sums: dict, n_targets: int, keep) -> dict:
    """The per-episode sums of some target layers only (the bootstrap re-picks the best target
    among the few best on the full test side: all of them would cost 10x more for the same answer)."""
    e = len(sums["n"])
    return {"n": sums["n"], **{k: np.asarray(sums[k]).reshape(e, n_targets, -1)[:, keep].reshape(e, -1) for k in ("s1", "s2", "sse")}}


def episode_r2(sums: dict, n_targets: int) -> np.ndarray:
    """``[episodes, n_targets]`` R² of each test episode on its own, against the variance around
    the whole test side's mean (an episode's few pairs have almost no variance of their own):
    ``1 - SSE_e / sum_e (y - mean_test)²``, averaged uniformly over output dimensions."""
    n = np.asarray(sums["n"], dtype=np.float64)
    s1, s2, sse = (np.asarray(sums[k], dtype=np.float64) for k in ("s1", "s2", "sse"))
    mean = s1.sum(0) / n.sum()
    full_tss = s2.sum(0) - s1.sum(0) ** 2 / n.sum()
    valid = full_tss > 1e-9 * max(full_tss.max(), 1e-300)
    tss = s2 - 2 * mean[None, :] * s1 + n[:, None] * mean[None, :] ** 2
    with np.errstate(divide="ignore", invalid="ignore"):
        raw = np.where(valid[None, :] & (tss > 0), 1 - sse / tss, np.nan)
    with warnings.catch_warnings(action="ignore", category=RuntimeWarning):
        return np.nanmean(raw.reshape(len(n), n_targets, -1), axis=2)


def replicate_sync_r2(per_source_layer: list[np.ndarray], clip: bool = True) -> np.ndarray:
    """``[n_boot]`` SyncR² replicates from each source layer's ``[n_boot, n_targets]`` R²: best
    target per replicate, negatives clipped to 0, mean over source layers (as :func:`nsync.results.sync_r2`)."""
    stack = np.stack(per_source_layer)  # [S, B, T]
    with warnings.catch_warnings(action="ignore", category=RuntimeWarning):  # all-NaN rows
        best = np.nanmax(stack, axis=2)
        if clip:
            best = np.clip(best, 0.0, None)
        return np.nanmean(best, axis=0)


def interval(replicates: np.ndarray, level: float = 0.95) -> tuple[float, float] | None:
    """Percentile interval of the finite replicates (None without any)."""
    r = np.asarray(replicates, dtype=float)
    r = r[np.isfinite(r)]
    if not len(r):
        return None
    lo, hi = np.percentile(r, [50 * (1 - level), 50 * (1 + level)])
    return float(lo), float(hi)
