"""The communication subspace of a fit (``subspace.max_rank``): each source layer's affine map to
its chosen target layer, reduced to every rank up to a cap, scored on the test episodes with the
episode bootstrap's replicates (:mod:`nsync.stats.subspace` has the statistics).

Per (split seed, direction) a :class:`SubspaceFit` holds each source layer's test R² by rank, its
replicates, the alignment of its predictive subspace with the source's dominant dimensions, and
how much of the partner's state in that subspace observable features explain (:data:`TRACKED`);
:func:`summarise` gives a direction's :class:`~nsync.fit.results.SubspaceResult` over its split
seeds, :func:`pool` the run's (mean over directions, then split seeds, as SyncR²).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from nsync.cache import ActivationCache
from nsync.data.bands import BandReader, Baseline
from nsync.fit.direction import ChunkFit, DirectionContext
from nsync.fit.results import SubspaceResult, nan_to_none
from nsync.stats import bootstrap as boot
from nsync.stats.r2 import mean_over_sources
from nsync.stats.subspace import (
    alignment,
    dimensionality,
    dominant_dimensions,
    predictive_directions,
    rank_predictions,
    ranks_to_try,
    tracked_share,
)

#: What the shared dimensions may follow, each a set of observable features of every pair:
#: ``shape`` the conversation's shape at the target (utterance index, prompt length, the last two
#: replies' lengths: the ``context`` baseline), ``topic`` a text embedding of the source
#: utterance's history (where the cache holds one: ``nsync reread kind=text``), ``speaker`` who
#: speaks (the source character), ``all`` the three together.
TRACKED = ("shape", "topic", "speaker", "all")


def observable_features(ctx: DirectionContext) -> dict[str, torch.Tensor]:
    """Per :data:`TRACKED` name its ``[pairs, k]`` features (``topic`` missing without a text embedding)."""
    dm = ctx.dm
    cache = ActivationCache.open(ctx.cfg.data.cache)
    reader = BandReader(cache, dm.pairs, dm.source_model, dm.target_model, dm.target_condition, dm.index["fit"])
    out = {"shape": reader.read(Baseline.parse("context"), dm.source_layers[:1]).per_source[0]}
    if text := sorted(m for m in cache.manifest["models"] if m.startswith("text:")):
        out["topic"] = reader.read(Baseline.parse(text[0]), dm.source_layers[:1]).per_source[0]
    speaker = np.where(dm.pairs["source_agent"].to_numpy() == 0, dm.pairs["character_a"], dm.pairs["character_b"])
    if "characters" in dm.pairs:  # groups: the source agent's place in the cast
        cast = dm.pairs["characters"].str.split("|")
        speaker = np.array([c[a] for c, a in zip(cast, dm.pairs["source_agent"], strict=True)])
    names = sorted(set(speaker))
    out["speaker"] = torch.from_numpy((speaker[:, None] == np.array(names)[None, :]).astype(np.float32))
    out["all"] = torch.cat(list(out.values()), 1)
    return out


@dataclass
class SubspaceFit:
    """One (split seed, direction): per source layer (NaN where it has no chosen target)."""

    ranks: list[int]
    r2: np.ndarray  # [sources, ranks] test R² of the reduced-rank map
    replicates: np.ndarray | None  # [sources, n_boot, ranks]
    alignment: np.ndarray  # [sources, ranks] share of the rank-r predictive subspace inside the source's top-r components
    random: np.ndarray  # [ranks] a random subspace's share (r / the training rows' span)
    tracked: np.ndarray  # [sources, TRACKED] test R² of the partner's state in the subspace from each feature set (NaN: none)


class SubspaceCollector:
    """Scores each chunk's chosen cells at every rank (affine probes: their maps are linear)."""

    def __init__(self, ctx: DirectionContext):
        self.ctx = ctx
        dm = ctx.dm
        self.ranks = ranks_to_try(ctx.cfg.subspace.max_rank, dm.d_out)
        self.train = torch.from_numpy(dm.index["train"])  # the rows the map was fitted on (fit and validation)
        self.test = torch.from_numpy(dm.index["test"])
        self.codes = dm.group[self.test]  # each test row's episode, as the probe's per-episode sums have it
        self.top = min(ctx.cfg.subspace.max_rank, dm.d_out)  # the most directions a reduced map keeps
        # the space the ridge map was fitted in: the probe's feature scale, or the states as stored
        self.scale = dm.x_std if ctx.cfg.affine.scale else torch.ones(len(dm.source_layers), dm.d_in, dtype=torch.float64)
        n_sources, n_ranks = len(dm.source_layers), len(self.ranks)
        # the fit's first replicates (episode-keyed, so paired with SyncR²'s); each costs an R² at every rank
        self.draws = None if ctx.draws is None or not ctx.cfg.subspace.bootstrap else ctx.draws[: ctx.cfg.subspace.bootstrap]
        self.r2 = np.full((n_sources, n_ranks), np.nan)
        self.replicates = np.full((n_sources, len(self.draws), n_ranks), np.nan) if self.draws is not None else None
        self.alignment = np.full((n_sources, n_ranks), np.nan)
        self.random = np.full(n_ranks, np.nan)
        self.features = observable_features(ctx)
        self.tracked = np.full((n_sources, len(TRACKED)), np.nan)

    def add(self, chunk: ChunkFit) -> None:
        dm = self.ctx.dm
        for i, s in enumerate(chunk.sources):
            t = chunk.target(i)
            if t is None:
                continue
            w, b = (v.double() for v in chunk.probe.weights(i, t))
            x_train, x_test = dm.x[self.train, s].double(), dm.x[self.test, s].double()
            train_pred = x_train @ w + b
            centre = train_pred.mean(0)  # taken off targets and predictions alike (sums of squares in float64 stay exact)
            directions = predictive_directions(train_pred, self.top)
            preds = [p - centre for p in rank_predictions(x_test @ w + b, centre, directions, self.ranks, dm.d_out)]
            sums = self._episode_sums(dm.y[self.test, t].double() - centre, preds)
            self.r2[s] = boot.replicate_r2(sums, np.ones((1, len(self.ctx.dm.test_episodes))))[0]
            if self.replicates is not None and self.draws is not None:
                self.replicates[s] = boot.replicate_r2(sums, self.draws)
            components = dominant_dimensions(x_train, self.scale[s], self.top)
            for k, r in enumerate(self.ranks):
                self.alignment[s, k], self.random[k] = alignment(w, directions, self.scale[s], components, r)
            self._track(s, t, directions, centre)

    def _track(self, s: int, t: int, directions: torch.Tensor, centre: torch.Tensor) -> None:
        """The partner's next state in this source layer's subspace (its own dimensionality), and
        how much of it each feature set explains on the test rows (fitted on the training rows)."""
        dims = dimensionality(self.r2[s], self.ranks, self.ctx.cfg.subspace.share)
        if dims is None:
            return
        dm = self.ctx.dm
        rows = torch.cat([self.train, self.test])
        coords = (dm.y[rows, t].double() - centre) @ directions[:, :dims]
        train, test = np.arange(len(self.train)), np.arange(len(self.train), len(rows))
        for k, name in enumerate(TRACKED):
            if name in self.features:
                self.tracked[s, k] = tracked_share(self.features[name][rows], coords, train, test)

    def _episode_sums(self, y: torch.Tensor, preds: list[torch.Tensor]) -> dict[str, torch.Tensor]:
        """Per test episode ``n``, and ``s1``, ``s2``, ``sse`` ``[E, ranks, d]`` (the ranks in the target's place)."""
        n_ep, d = len(self.ctx.dm.test_episodes), y.shape[1]

        def per_episode(values: torch.Tensor) -> torch.Tensor:
            return torch.zeros(n_ep, d, dtype=torch.float64).index_add_(0, self.codes, values)

        n = torch.zeros(n_ep, dtype=torch.float64).index_add_(0, self.codes, torch.ones(len(y), dtype=torch.float64))
        s1, s2 = per_episode(y), per_episode(y * y)
        sse = torch.stack([per_episode((y - p) ** 2) for p in preds], 1)
        return {"n": n, "s1": s1[:, None].expand_as(sse), "s2": s2[:, None].expand_as(sse), "sse": sse}

    def finish(self) -> SubspaceFit:
        return SubspaceFit(self.ranks, self.r2, self.replicates, self.alignment, self.random, self.tracked)


def sync_curve(r2: np.ndarray) -> np.ndarray:
    """SyncR² by rank ``[..., ranks]`` from per-source-layer R² ``[sources, ..., ranks]`` of one
    fit: each clipped at 0 and averaged over source layers, as SyncR² is (its full rank is SyncR²)."""
    return mean_over_sources(np.clip(r2, 0, None))


def dimensionality_interval(curve_replicates: np.ndarray | None, ranks: list[int], share: float) -> tuple[int, int] | None:
    """The 2.5th and 97.5th percentiles of the replicates' dimensionality (a rank: the percentile
    interval; replicates where the full map predicts nothing are left out)."""
    if curve_replicates is None:
        return None
    dims = np.asarray(dimensionality(curve_replicates, ranks, share))
    dims = dims[dims > 0]
    if not len(dims):
        return None
    lo, hi = np.percentile(dims, [2.5, 97.5], method="inverted_cdf")
    return int(lo), int(hi)


def summarise(fits: list[SubspaceFit], share: float) -> SubspaceResult:
    """A direction's subspace from its split seeds' fits."""
    ranks = fits[0].ranks
    r2 = mean_over_sources(np.stack([f.r2 for f in fits]))  # [sources, ranks], mean over split seeds
    curve = boot.pool([(0, sync_curve(f.r2)) for f in fits])  # each seed's SyncR² by rank, then their mean: as SyncR²
    reps = None
    if all(f.replicates is not None for f in fits):
        reps = boot.pool([(0, sync_curve(f.replicates)) for f in fits])  # type: ignore[arg-type]  # one joint draw over split seeds
    over_seeds = {name: mean_over_sources(np.stack([getattr(f, name) for f in fits])) for name in ("alignment", "random", "tracked")}
    return _result(ranks, r2, curve, reps, over_seeds["alignment"], over_seeds["random"], share, over_seeds["tracked"])


def pool(per_fit: list[tuple[int, SubspaceFit]], share: float) -> tuple[SubspaceResult, np.ndarray | None]:
    """The run's subspace (mean over directions, then split seeds) and its SyncR²-by-rank replicates."""
    ranks = per_fit[0][1].ranks
    curve = boot.pool([(seed, sync_curve(f.r2)) for seed, f in per_fit])
    reps = None
    if all(f.replicates is not None for _, f in per_fit):
        reps = boot.pool([(seed, sync_curve(f.replicates)) for seed, f in per_fit])  # type: ignore[arg-type]
    r2 = boot.pool([(seed, f.r2) for seed, f in per_fit], skip_nan=True)
    aligned = boot.pool([(seed, f.alignment) for seed, f in per_fit], skip_nan=True)
    tracked = boot.pool([(seed, f.tracked) for seed, f in per_fit], skip_nan=True)
    random = boot.pool([(seed, f.random) for seed, f in per_fit], skip_nan=True)
    return _result(ranks, r2, curve, reps, aligned, random, share, tracked), reps


def _result(ranks, r2, curve, reps, aligned, random, share, tracked) -> SubspaceResult:
    by_layer = [dimensionality(row, ranks, share) for row in r2]
    at_dim = [None if d is None else float(aligned[s, ranks.index(d)]) for s, d in enumerate(by_layer)]
    dim = dimensionality(curve, ranks, share)
    ci = [boot.interval(reps[:, k], float(curve[k]), bounds=boot.SYNC_R2_RANGE) for k in range(len(ranks))] if reps is not None else None
    return SubspaceResult(
        ranks=ranks,
        share=share,
        sync_r2_by_rank=nan_to_none(curve.tolist()),
        sync_r2_by_rank_ci95=ci,
        dimensionality=dim,
        dimensionality_ci95=dimensionality_interval(reps, ranks, share),
        r2_by_rank=nan_to_none(r2.tolist()),
        dimensionality_by_source_layer=by_layer,
        alignment_by_source_layer=nan_to_none(at_dim),
        random_alignment_by_source_layer=nan_to_none([None if d is None else float(random[ranks.index(d)]) for d in by_layer]),
        alignment=None if dim is None else nan_to_none(float(mean_over_sources(aligned[:, ranks.index(dim)]))),
        random_alignment=None if dim is None else nan_to_none(float(random[ranks.index(dim)])),
        tracks={name: nan_to_none(float(mean_over_sources(tracked[:, k]))) for k, name in enumerate(TRACKED)},
    )
