"""The variance partition as an analysis of the fit: for every chunk of source layers and every
baseline, the baseline alone and the source beside it are fitted on the same pairs and split, and
the source's unique and shared shares (:mod:`nsync.stats.partition`) are scored at each source
layer's chosen target, with the episode bootstrap's replicates (paired with SyncR²'s), the
surrogates' null of the unique share and its time course.

The baseline's features are read by :class:`nsync.data.bands.BandReader`; both extra fits are
banded ridge (:class:`nsync.probes.AffineProbe` with ``band_start``), their penalties chosen per
cell on validation (:mod:`nsync.fit.penalties`).
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

import numpy as np
import torch

from nsync.cache import ActivationCache
from nsync.data.bands import INDICATOR_BANDS, BandReader, Baseline, BaselineFeatures, check_baselines
from nsync.fit.direction import ChunkFit, DirectionContext, chosen_predictions
from nsync.fit.penalties import baseline_bands, joint_bands
from nsync.fit.results import PartitionDirection, PartitionSummary, TimeCourseResult, nan_to_none
from nsync.stats import bootstrap as boot
from nsync.stats.partition import QUANTITIES, RANGES, baseline_only_cells, choose_unique_targets, joined_shortfall, shares_at
from nsync.stats.r2 import mean_over_sources
from nsync.stats.surrogates import null_summary, p_value, strata, unique_null
from nsync.stats.timecourse import Course, pool_seeds

log = logging.getLogger("nsync.fit")


@dataclass
class Fitted:
    """A tested probe's results as matrices ``[sources, targets]`` (band ratios ``[sources,
    targets, bands after the first]``), its per-episode sums, and the probe."""

    probe: object
    test_r2: np.ndarray
    val_r2: np.ndarray | None
    ratio: np.ndarray | None
    sse: torch.Tensor  # [E, sources, targets, dims]

    @classmethod
    def of(cls, probe, n_sources: int, n_tgt: int, on_validation: bool) -> Fitted:
        res = probe.results
        assert res.test_r2 is not None and res.episode_sums is not None  # set by the test stage of every (affine) probe
        as_cells = lambda t, *rest: None if t is None else t.reshape(n_sources, n_tgt, *rest).numpy()  # noqa: E731
        val = as_cells(res.val_r2) if on_validation else None
        return cls(probe, res.test_r2.reshape(n_sources, n_tgt).numpy(), val, as_cells(res.ratio, -1), res.episode_sums["sse"])

    def row(self, values: np.ndarray, i: int) -> np.ndarray:
        """Chunk position ``i``'s row (a fit of one row serves every source layer)."""
        return values[0] if values.shape[0] == 1 else values[i]

    def sse_of(self, i: int) -> torch.Tensor:
        return self.sse[:, 0] if self.sse.shape[1] == 1 else self.sse[:, i]


@dataclass
class PartitionFit:
    """One baseline's partition of one (split seed, direction): matrices ``[sources, targets]``,
    the chosen targets, per source layer each quantity's estimate, their mean over source layers
    and its replicates ``[quantities, n_boot]``, the unique share's null and time course."""

    r2_baseline: np.ndarray
    r2_joint: np.ndarray
    ratio: np.ndarray  # [sources, targets, bands] each band's penalty over the source's in the joint fit (0: the baseline alone validated better)
    baseline_ratio: np.ndarray | None  # [sources, targets, bands - 1] the baseline alone's penalty of each later band over the first's
    chosen: np.ndarray
    by_source_layer: np.ndarray  # [sources, quantities]
    estimate: np.ndarray  # [quantities]
    replicates: np.ndarray | None
    null_unique: np.ndarray | None
    time_course: Course | None
    direction: str = ""


@dataclass
class ChunkShares:
    """One baseline's figures for one chunk (the rows of :class:`PartitionFit`)."""

    r2_baseline: np.ndarray
    r2_joint: np.ndarray
    ratio: np.ndarray
    baseline_ratio: np.ndarray | None
    chosen: np.ndarray
    estimates: np.ndarray  # [chunk, quantities]
    replicates: np.ndarray | None  # [chunk, quantities, n_boot]
    null_unique: np.ndarray | None  # [chunk, surrogates]
    by_time: list | None


class BaselinePartition:
    """One baseline's fits beside every chunk of one direction."""

    def __init__(self, ctx: DirectionContext, name: str, features: BaselineFeatures):
        self.ctx, self.name, self.features = ctx, name, features
        # The last baseline-alone fit and the band it fitted: a band that does not depend on the source
        # layer (one tensor for all) is fitted once per direction; one that does, once per chunk.
        self.fitted_alone: tuple[torch.Tensor, Fitted] | None = None
        self.parts: list[ChunkShares] = []

    def shared_band(self, chunk: ChunkFit) -> bool:
        """Whether every source layer of the chunk has the same baseline band (one fit serves them all)."""
        bands = [self.features.per_source[s] for s in chunk.sources]
        return all(b is bands[0] for b in bands)

    def baseline_x(self, chunk: ChunkFit) -> torch.Tensor:
        """The baseline's rows for the chunk: ``[rows, 1, k]`` where one band serves it, else ``[rows, chunk, k]``."""
        bands = [self.features.per_source[s] for s in chunk.sources]
        return bands[0][:, None] if self.shared_band(chunk) else torch.stack(bands, 1)

    def fit_alone(self, chunk: ChunkFit) -> Fitted:
        ctx, shared = self.ctx, self.shared_band(chunk)
        band = self.features.per_source[chunk.sources[0]]
        if shared and self.fitted_alone is not None and self.fitted_alone[0] is band:
            return self.fitted_alone[1]
        design = baseline_bands(ctx.cfg.partition, self.features.starts, self.features.fixed)
        probe = ctx.fit_probe(ctx.dm.with_source_data(self.baseline_x(chunk), design), f"{chunk.prefix}partition/{self.name}/")
        fitted = Fitted.of(probe, 1 if shared else len(chunk.sources), ctx.n_targets, ctx.on_validation)
        self.fitted_alone = (band, fitted) if shared else None
        return fitted

    def fit_joint(self, chunk: ChunkFit, base: Fitted) -> tuple[Fitted, torch.Tensor, np.ndarray | None]:
        """The joint fit, its design rows and the baseline alone's band ratios per cell."""
        ctx, n = self.ctx, len(chunk.sources)
        base_ratio = None if base.ratio is None else np.broadcast_to(base.ratio, (n, *base.ratio.shape[1:])).copy()
        joint_x = torch.cat([ctx.dm.x[:, chunk.sources], torch.stack([self.features.per_source[s] for s in chunk.sources], 1)], -1)
        # cells the baseline alone chose nothing for (no variance on the validation side) may take any
        design_ratio = None if base_ratio is None else np.where(np.isnan(base_ratio), float(ctx.cfg.partition.feature_ratios[0]), base_ratio)
        design = joint_bands(ctx.cfg.partition, ctx.dm.d_in, self.features.starts, design_ratio)
        probe = ctx.fit_probe(ctx.dm.with_source_data(joint_x, design), f"{chunk.prefix}partition/{self.name}/")
        return Fitted.of(probe, n, ctx.n_targets, ctx.on_validation), joint_x, base_ratio

    def add(self, chunk: ChunkFit) -> None:
        n, n_tgt = len(chunk.sources), self.ctx.n_targets
        base = self.fit_alone(chunk)
        joint, joint_x, base_ratio = self.fit_joint(chunk, base)
        r2_b = np.stack([base.row(base.test_r2, i) for i in range(n)])
        val_b = None if base.val_r2 is None else np.stack([base.row(base.val_r2, i) for i in range(n)])
        r2_j, val_j = joint.test_r2.copy(), None if joint.val_r2 is None else joint.val_r2.copy()
        ratio = np.full((n, n_tgt, len(self.features.starts) + 1), np.nan) if joint.ratio is None else joint.ratio.copy()
        baseline_only = baseline_only_cells(val_b, val_j)
        if baseline_only is None:  # both or neither: the same data module's validation rows
            baseline_only = np.zeros_like(r2_j, dtype=bool)
        else:
            val_j[baseline_only] = val_b[baseline_only]  # type: ignore[index]  # both set where baseline_only is
        r2_j[baseline_only], ratio[baseline_only] = r2_b[baseline_only], 0.0  # every feature's ratio
        chosen = choose_unique_targets(val_b, val_j, r2_j - r2_b)
        estimates, replicates = self.scores(chunk, base, joint, r2_b, r2_j, baseline_only, chosen)
        nulls = self.nulls(chunk, joint, joint_x, r2_b, baseline_only, chosen) if self.ctx.perms is not None else None
        by_time = self.by_time(chunk, base, joint, joint_x, baseline_only, chosen) if self.ctx.course is not None else None
        self.parts.append(ChunkShares(r2_b, r2_j, ratio, base_ratio, chosen, estimates, replicates, nulls, by_time))

    def scores(self, chunk: ChunkFit, base: Fitted, joint: Fitted, r2_b, r2_j, baseline_only, chosen) -> tuple[np.ndarray, np.ndarray | None]:
        """Per source layer each quantity's test estimate ``[chunk, quantities]`` and its replicates ``[chunk, quantities, n_boot]``."""
        n, replicate_r2 = len(chunk.sources), self.ctx.replicate_r2
        estimates = np.full((n, len(QUANTITIES)), np.nan)
        replicates = None if replicate_r2 is None else np.full((n, len(QUANTITIES), self.ctx.cfg.bootstrap), np.nan)
        for i in range(n):
            t = int(chosen[i])
            if t < 0:
                continue
            estimates[i] = shares_at(chunk.r2[i, t], r2_b[i, t], r2_j[i, t])
            if replicates is not None:
                assert replicate_r2 is not None
                sse = [chunk.sums["sse"][:, i], base.sse_of(i), base.sse_of(i) if baseline_only[i, t] else joint.sse[:, i]]
                replicates[i] = shares_at(*[replicate_r2(s, [t])[:, 0] for s in sse]).T
        return estimates, replicates

    def nulls(self, chunk: ChunkFit, joint: Fitted, joint_x: torch.Tensor, r2_b, baseline_only, chosen) -> np.ndarray:
        """``[chunk, surrogates]`` the unique share with only the source's own part re-paired (0
        where the baseline alone validated better; NaN where the baseline explains the source)."""
        ctx, dm, d = self.ctx, self.ctx.dm, self.ctx.dm.d_in
        assert ctx.perms is not None
        train, test = torch.from_numpy(dm.index["train"]), torch.from_numpy(dm.index["test"])
        row_strata = strata(dm.pairs.iloc[np.concatenate([dm.index["train"], dm.index["test"]])], ctx.cfg.surrogates.kind)
        out = np.full((len(chosen), len(ctx.perms)), np.nan)
        for i, t in enumerate(int(c) for c in chosen):
            if t < 0:
                continue
            if baseline_only[i, t]:
                out[i] = 0.0
                continue
            w, bias = joint.probe.weights(i, t)  # type: ignore[attr-defined]
            x = joint_x[:, i]
            null = unique_null(x[:, :d], x[:, d:], dm.y[test, t], w, bias, train, test, ctx.perms, chunk.valid[t], row_strata, float(r2_b[i, t]))
            if null is not None:
                out[i] = null
        return out

    def by_time(self, chunk: ChunkFit, base: Fitted, joint: Fitted, joint_x: torch.Tensor, baseline_only, chosen) -> list:
        """Per source layer the unique share by utterance bin (joint minus baseline) and its replicates."""
        ctx, course = self.ctx, self.ctx.course
        assert course is not None and ctx.y_test is not None
        test = torch.from_numpy(ctx.dm.index["test"])
        joint_pred = chosen_predictions(joint.probe, joint_x[test], ctx.y_test, chosen)
        shared = self.shared_band(chunk)
        with torch.no_grad():
            base_pred = dict(base.probe.source_predictions(self.baseline_x(chunk)[test]))  # type: ignore[attr-defined]
        y_base = (ctx.y_test.float() - base.probe.target_shift.cpu()).double()  # type: ignore[attr-defined]
        out: list = []
        for i, t in enumerate(int(c) for c in chosen):
            if t < 0:
                out.append(None)
                continue
            b_est, b_reps = course.r2(y_base[:, t], base_pred[0 if shared else i][:, t].double(), chunk.valid[t])
            j_est, j_reps = (b_est, b_reps) if baseline_only[i, t] else course.r2(*joint_pred[i], chunk.valid[t])
            out.append((j_est - b_est, None if b_reps is None or j_reps is None else j_reps - b_reps))
        return out

    def finish(self) -> PartitionFit:
        parts, course = self.parts, self.ctx.course
        estimates = np.concatenate([p.estimates for p in parts])
        cat = lambda name: None if getattr(parts[0], name) is None else np.concatenate([getattr(p, name) for p in parts])  # noqa: E731
        replicates, nulls = cat("replicates"), cat("null_unique")
        return PartitionFit(
            r2_baseline=np.concatenate([p.r2_baseline for p in parts]),
            r2_joint=np.concatenate([p.r2_joint for p in parts]),
            ratio=np.concatenate([p.ratio for p in parts]),
            baseline_ratio=cat("baseline_ratio"),
            chosen=np.concatenate([p.chosen for p in parts]),
            by_source_layer=estimates,
            estimate=mean_over_sources(estimates),
            replicates=None if replicates is None else mean_over_sources(replicates),
            null_unique=None if nulls is None else mean_over_sources(nulls),
            time_course=None
            if course is None
            else course.mean_over_sources([x for p in parts if p.by_time is not None for x in p.by_time], clip=False),
            direction=self.ctx.direction,
        )


def read_baselines(ctx: DirectionContext) -> dict[str, BaselinePartition]:
    """Every baseline of ``partition.baselines``, its features read for the direction's pairs."""
    cfg, dm = ctx.cfg, ctx.dm
    cache = ActivationCache.open(cfg.data.cache)
    check_baselines(cfg.partition.baselines, cache)
    layer = cfg.partition.layer if cfg.partition.layer == "same" else int(cfg.partition.layer)
    reader = BandReader(cache, dm.pairs, dm.source_model, dm.target_model, dm.target_condition, dm.index["fit"], layer)
    return {name: BaselinePartition(ctx, name, reader.read(Baseline.parse(name), dm.source_layers)) for name in cfg.partition.baselines}


def pool_baseline(name: str, fits: list[tuple[int, PartitionFit]], layer: str) -> tuple[PartitionSummary, dict[str, np.ndarray]]:
    """One baseline's partition of the run (mean over directions, then split seeds, as SyncR²) and
    the replicates behind its intervals, ``"<baseline>/<quantity>"`` -> ``[n_boot]``."""
    estimate = boot.pool([(seed, f.estimate) for seed, f in fits], skip_nan=True)
    ci: dict[str, tuple[float, float] | None] = {}
    corrected: dict[str, float | None] = {}
    p, null, out = None, None, {}
    replicates = [(seed, f.replicates) for seed, f in fits if f.replicates is not None]
    if len(replicates) == len(fits):
        reps = boot.pool(replicates)  # [Q, B]
        out = {f"{name}/{q}": reps[i] for i, q in enumerate(QUANTITIES)}
        ci, corrected = boot.intervals(QUANTITIES, estimate, reps, RANGES)
    nulls = [(seed, f.null_unique) for seed, f in fits if f.null_unique is not None]
    if len(nulls) == len(fits):
        null = boot.pool(nulls)
        p = p_value(estimate[QUANTITIES.index("unique")], null)
    values = {q: nan_to_none(float(v)) for q, v in zip(QUANTITIES, estimate, strict=True)}
    summary = PartitionSummary(
        features=list(Baseline.parse(name).features), layer=layer, values=values, ci95=ci, bias_corrected=corrected,
        unique_p_value=p, unique_null=null_summary(null),
    )  # fmt: skip
    return summary, out


def summarise_baseline(name: str, seeds: list[PartitionFit], source: np.ndarray, target_layers: list[int]) -> PartitionDirection:
    """One baseline's :class:`PartitionDirection` from one direction's split seeds (``source``:
    the source alone's test R², mean over split seeds)."""
    bands = Baseline.parse(name).bands
    base, joint = np.mean([s.r2_baseline for s in seeds], 0), np.mean([s.r2_joint for s in seeds], 0)
    by_layer = mean_over_sources(np.stack([s.by_source_layer for s in seeds]))  # [sources, quantities]
    per_seed = np.stack([s.estimate for s in seeds])  # [seeds, quantities]
    estimate = mean_over_sources(per_seed)
    replicates = [
        (0, s.replicates) for s in seeds if s.replicates is not None
    ]  # one joint draw over split seeds (episode-keyed weights), as the run's pooled interval
    ci, corrected = boot.intervals(QUANTITIES, estimate, boot.pool(replicates), RANGES) if len(replicates) == len(seeds) else ({}, {})
    nulls = [s.null_unique for s in seeds if s.null_unique is not None]
    null = np.mean(nulls, 0) if len(nulls) == len(seeds) else None
    courses = [s.time_course for s in seeds]
    return PartitionDirection(
        r2_baseline=nan_to_none(base.tolist()),
        r2_joint=nan_to_none(joint.tolist()),
        unique=nan_to_none((joint - base).tolist()),
        shared=nan_to_none((source + base - joint).tolist()),
        ratio=[nan_to_none(s.ratio[..., 0].tolist()) for s in seeds],
        feature_ratio=None if len(bands) == 1 else {f: [nan_to_none(s.ratio[..., k].tolist()) for s in seeds] for k, f in enumerate(bands)},
        baseline_feature_ratio=None
        if seeds[0].baseline_ratio is None
        else {f: [nan_to_none(s.baseline_ratio[..., k].tolist()) for s in seeds] for k, f in enumerate(bands[1:])},  # type: ignore[index]
        chosen_target_layer=[[target_layers[j] if j >= 0 else None for j in s.chosen] for s in seeds],
        by_source_layer={q: nan_to_none(by_layer[:, i].tolist()) for i, q in enumerate(QUANTITIES)},
        per_seed={q: nan_to_none(per_seed[:, i].tolist()) for i, q in enumerate(QUANTITIES)},
        values={q: nan_to_none(float(v)) for q, v in zip(QUANTITIES, estimate, strict=True)},
        ci95=ci,
        bias_corrected=corrected,
        unique_p_value=None if null is None else p_value(float(estimate[QUANTITIES.index("unique")]), null),
        unique_null=null_summary(null),
        time_course=None if courses[0] is None else TimeCourseResult.of(pool_seeds([c for c in courses if c is not None], bounds=boot.R2_RANGE)),
    )


def warn_edges(partition: dict[str, PartitionDirection], feature_ratios: list[float]) -> None:
    """Warnings where a joined baseline's features chose the edge of ``partition.feature_ratios``
    in most cells, or where it predicts less than its best feature alone."""
    for name, d in partition.items():
        for feature, chosen in (d.baseline_feature_ratio or {}).items():
            at = np.asarray(chosen, dtype=float)
            at = at[np.isfinite(at)]
            if feature in INDICATOR_BANDS.values() or not len(at):  # an indicator's ratio is fixed, not chosen
                continue
            for edge, word in ((min(feature_ratios), "smallest"), (max(feature_ratios), "largest")):
                if (at == edge).mean() > 0.5:
                    log.warning(
                        "in the joined baseline %s alone, %s chose the %s of partition.feature_ratios (%g) in %.0f%% of the cells: "
                        "its best penalty may lie beyond the grid; extend partition.feature_ratios",
                        *(name, feature, word, edge, 100 * (at == edge).mean()),
                    )
    r2 = {n: np.asarray(d.r2_baseline, dtype=float) for n, d in partition.items()}
    for name, share in joined_shortfall(r2, {n: list(Baseline.parse(n).features) for n in partition}).items():
        if share > 0.1:
            log.warning(
                "the joined baseline %s alone predicts less than its best feature alone in %.0f%% of the cells (by more than 0.005): "
                "its features' penalties (partition.feature_ratios) did not find their best on validation, so the source's unique "
                "share beyond it may be overstated; widen partition.feature_ratios, and read it beside each feature's own",
                name,
                100 * share,
            )
