"""The analyses of a fit, each a collector over the chunks of one (split seed, direction).

The loop fits a chunk of source layers once and hands the :class:`~nsync.fit.direction.ChunkFit`
to every collector the config asks for (``add``); at the direction's end each collector's
``finish`` gives its output, kept by name in the :class:`~nsync.fit.direction.DirectionFit`. After
every fit, :meth:`nsync.fit.results.FitResult.from_fits` pools: each analysis's ``summarise``
fills one direction's result from its split seeds' outputs, and ``pool`` the run's. The
statistics themselves are plain functions in :mod:`nsync.stats`.

Adding an analysis is one class here (or in a module of its own) and its registration:

    @register("my_analysis")
    class MyAnalysis(Analysis):
        def add(self, chunk): ...
        def finish(self): ...

(``docs/how-to/extending.md`` has a worked example.)
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Any, ClassVar

import numpy as np
import torch

from nsync.fit import partition, subspace
from nsync.fit.config import FitConfig
from nsync.fit.direction import ChunkFit, DirectionContext
from nsync.fit.results import Asymmetry, BootstrapInfo, DirectionResult, FitResult, TimeCourseResult, nan_to_none
from nsync.fit.run_folder import Artefacts
from nsync.probes.cka import debiased_cka
from nsync.registry import Registry
from nsync.stats import bootstrap as boot
from nsync.stats.partition import QUANTITIES
from nsync.stats.r2 import mean_best, mean_over_sources
from nsync.stats.surrogates import null_r2, null_summary, p_value
from nsync.stats.timecourse import pool_seeds

log = logging.getLogger("nsync.fit")


class Analysis:
    """A collector over one direction's chunks, and how its outputs pool (override what applies)."""

    name: ClassVar[str] = ""

    def __init__(self, ctx: DirectionContext):
        self.ctx = ctx

    @classmethod
    def wanted(cls, ctx: DirectionContext) -> bool:
        """Whether the run's config asks for this analysis (given the direction's context)."""
        return True

    def add(self, chunk: ChunkFit) -> None:
        """Take what it needs from one fitted chunk (the chunk is released after every collector saw it)."""

    def finish(self) -> Any:
        """This (split seed, direction)'s output (None: nothing to report)."""
        return None

    @classmethod
    def summarise(cls, direction: DirectionResult, outputs: list[Any], result: FitResult, cfg: FitConfig) -> None:
        """Fill ``direction`` from its split seeds' outputs (called where every one is not None)."""

    @classmethod
    def pool(cls, result: FitResult, per_fit: list[tuple[int, Any]], artefacts: Artefacts, cfg: FitConfig) -> None:
        """Fill the run's ``result`` (and ``artefacts``) from every fit's ``(split seed, output)``
        (called where every fit's output is not None)."""


#: Every analysis a fit may run, in the order their collectors see each chunk.
ANALYSES: Registry[type[Analysis]] = Registry("fit analysis")


def register(name: str):
    """Class decorator: register an :class:`Analysis` under ``name`` (its outputs' key)."""

    def add(cls: type[Analysis]) -> type[Analysis]:
        cls.name = name
        return ANALYSES.register(name)(cls)

    return add


@register("episodes")
class Episodes(Analysis):
    """Each test episode's own SyncR² (``episode_sync.csv``: the analysis stage correlates it with
    the episode's social score)."""

    def __init__(self, ctx: DirectionContext):
        super().__init__(ctx)
        self.per_source: list[np.ndarray] = []

    def add(self, chunk: ChunkFit) -> None:
        for i in range(len(chunk.sources)):
            t = chunk.target(i)
            r2 = boot.episode_r2(chunk.source_sums(i), [t])[:, 0] if t is not None else np.full(len(self.ctx.dm.test_episodes), np.nan)
            self.per_source.append(np.clip(r2, 0, None))

    def finish(self) -> list[dict]:
        dm = self.ctx.dm
        counts = dm.pairs.iloc[dm.index["test"]].groupby("episode_id").size()
        sync = mean_over_sources(np.stack(self.per_source))
        return [
            {"split_seed": self.ctx.seed, "direction": self.ctx.direction, "episode_id": e, "n_pairs": int(counts[e]), "sync_r2": float(v)}
            for e, v in zip(dm.test_episodes, sync, strict=True)
        ]

    @classmethod
    def pool(cls, result: FitResult, per_fit: list[tuple[int, Any]], artefacts: Artefacts, cfg: FitConfig) -> None:
        artefacts.episodes = [row for _, rows in per_fit for row in rows]


@dataclass
class SyncReplicates:
    """One fit's SyncR² bootstrap replicates ``[n_boot]``, how many test episodes drew them, and its direction."""

    replicates: np.ndarray
    test_episodes: int
    direction: str = ""


@register("bootstrap")
class Bootstrap(Analysis):
    """SyncR²'s episode-bootstrap replicates: per source layer its chosen target's replicate R²
    (on the test side's choice: the best target re-picked in every replicate)."""

    def __init__(self, ctx: DirectionContext):
        super().__init__(ctx)
        self.replicates: list[np.ndarray] = []

    @classmethod
    def wanted(cls, ctx: DirectionContext) -> bool:
        return ctx.draws is not None

    def add(self, chunk: ChunkFit) -> None:
        replicate_r2, n_boot = self.ctx.replicate_r2, self.ctx.cfg.bootstrap
        assert replicate_r2 is not None  # set by the chunk's fit wherever there are draws
        for i in range(len(chunk.sources)):
            t = chunk.target(i)
            targets = boot.replicate_targets(t if self.ctx.on_validation else None, self.ctx.n_targets)
            sse = chunk.sums["sse"][:, i]
            self.replicates.append(replicate_r2(sse, targets) if t is not None else np.full((n_boot, len(targets)), np.nan))

    def finish(self) -> SyncReplicates | None:
        if not self.replicates:
            return None
        return SyncReplicates(boot.replicate_sync_r2(self.replicates), len(self.ctx.dm.test_episodes), self.ctx.direction)

    @classmethod
    def summarise(cls, direction: DirectionResult, outputs: list[SyncReplicates], result: FitResult, cfg: FitConfig) -> None:
        reps = boot.pool([(0, o.replicates) for o in outputs])  # this direction's split seeds, one joint draw as the run's
        direction.sync_r2_ci95 = boot.interval(reps, direction.sync_r2, bounds=boot.SYNC_R2_RANGE)
        direction.sync_r2_bias_corrected = boot.bias_corrected(direction.sync_r2, reps, bounds=boot.SYNC_R2_RANGE)

    @classmethod
    def pool(cls, result: FitResult, per_fit: list[tuple[int, SyncReplicates]], artefacts: Artefacts, cfg: FitConfig) -> None:
        artefacts.bootstrap = reps = boot.pool([(seed, o.replicates) for seed, o in per_fit])
        result.sync_r2_ci95 = boot.interval(reps, result.sync_r2, bounds=boot.SYNC_R2_RANGE)
        result.sync_r2_bias_corrected = boot.bias_corrected(result.sync_r2, reps, bounds=boot.SYNC_R2_RANGE)
        fewest = min(o.test_episodes for _, o in per_fit)
        result.bootstrap = BootstrapInfo(replicates=len(reps), scheme=boot.SCHEME, test_episodes=fewest)
        by_direction = {d: boot.pool([(0, o.replicates) for _, o in per_fit if o.direction == d]) for d in result.directions}
        result.asymmetry = asymmetries({d: r.sync_r2 for d, r in result.directions.items()}, by_direction, artefacts.episodes)


def asymmetries(estimates: dict[str, float], replicates: dict[str, np.ndarray], episodes: list[dict] | None = None) -> list[Asymmetry]:
    """Who leads, per pair of opposite directions (``A->B`` and ``B->A``; ``i->j`` and ``j->i``):
    the difference of their ``estimates`` (SyncR², or a partition share) with the interval of
    their ``replicates``' difference. Both directions' replicates weight each test episode alike
    (episode-keyed draws), so the difference is paired by episode; each direction's replicates are
    already one joint draw over split seeds. ``episodes``: episode_sync.csv's rows, for the share
    of test episodes higher in the first direction.

    >>> reps = {"A->B": np.array([0.3, 0.32, 0.34]), "B->A": np.array([0.1, 0.1, 0.12])}
    >>> asymmetries({"A->B": 0.32, "B->A": 0.1}, reps)[0].leader
    'A'
    """
    import pandas as pd

    table = pd.DataFrame(episodes or [])
    if not table.empty:
        table = table.pivot_table(index="episode_id", columns="direction", values="sync_r2", aggfunc="mean")
    out = []
    for first, second in opposite_directions(list(estimates)):
        estimate = estimates[first] - estimates[second]
        diff = replicates[first] - replicates[second] if first in replicates and second in replicates else None
        ci = None if diff is None else boot.interval(diff, estimate, bounds=boot.DIFFERENCE_RANGE)
        leader = None
        if ci is not None and (ci[0] > 0 or ci[1] < 0):
            leader = (first if ci[0] > 0 else second).split("->")[0]  # that direction's source agent
        higher = None
        if not table.empty and {first, second} <= set(table.columns):
            both = table[[first, second]].dropna()
            higher = float((both[first] > both[second]).mean()) if len(both) else None
        corrected = None if diff is None else boot.bias_corrected(estimate, diff, bounds=boot.DIFFERENCE_RANGE)
        out.append(Asymmetry(first=first, second=second, difference=estimate, bias_corrected=corrected, ci95=ci, leader=leader,
                             episodes_first_higher=higher))  # fmt: skip
    return out


def opposite_directions(directions: list[str]) -> list[tuple[str, str]]:
    """Each pair of directions that are each other's reverse, in the order the first appears.

    >>> opposite_directions(["A->B", "B->A", "0->2", "2->0", "1->2"])
    [('A->B', 'B->A'), ('0->2', '2->0')]
    """
    pairs = []
    for d in directions:
        source, target = d.split("->")
        reverse = f"{target}->{source}"
        if reverse in directions and (reverse, d) not in pairs:
            pairs.append((d, reverse))
    return pairs


@register("surrogates")
class Surrogates(Analysis):
    """SyncR²'s surrogate null: each source layer's test R² at its chosen target with the test rows
    re-paired (re-pairing sources re-pairs predictions, which are row-wise for any probe)."""

    def __init__(self, ctx: DirectionContext):
        super().__init__(ctx)
        self.nulls: list[np.ndarray] = []

    @classmethod
    def wanted(cls, ctx: DirectionContext) -> bool:
        return ctx.perms is not None

    def add(self, chunk: ChunkFit) -> None:
        perms = self.ctx.perms
        if perms is None:  # dropped: targets fell back to the test side's choice
            self.nulls = []
            return
        out = np.full((len(chunk.sources), len(perms)), np.nan)
        for i, (y, pred) in chunk.predictions(self.ctx).items():
            out[i] = null_r2(y, pred, perms, chunk.valid[int(chunk.chosen[i])])
        self.nulls.append(out)

    def finish(self) -> np.ndarray | None:
        return mean_over_sources(np.clip(np.concatenate(self.nulls), 0, None)) if self.nulls and self.ctx.perms is not None else None

    @classmethod
    def summarise(cls, direction: DirectionResult, outputs: list[np.ndarray], result: FitResult, cfg: FitConfig) -> None:
        direction.sync_r2_p_value = p_value(direction.sync_r2, boot.pool([(0, o) for o in outputs]))

    @classmethod
    def pool(cls, result: FitResult, per_fit: list[tuple[int, np.ndarray]], artefacts: Artefacts, cfg: FitConfig) -> None:
        null = boot.pool(per_fit)  # surrogate k of the run: the mean of every fit's k-th, as SyncR² is a mean
        result.sync_r2_p_value = p_value(result.sync_r2, null)
        result.sync_r2_null = null_summary(null)
        result.surrogates = {"n": cfg.surrogates.n, "kind": cfg.surrogates.kind} if result.sync_r2_p_value is not None else None


@register("time_course")
class TimeCourseAnalysis(Analysis):
    """SyncR² by source utterance index: each source layer's prediction at its chosen target scored per bin."""

    def __init__(self, ctx: DirectionContext):
        super().__init__(ctx)
        self.by_source: list = []

    @classmethod
    def wanted(cls, ctx: DirectionContext) -> bool:
        return ctx.course is not None

    def add(self, chunk: ChunkFit) -> None:
        course, predictions = self.ctx.course, chunk.predictions(self.ctx)
        assert course is not None
        for i in range(len(chunk.sources)):
            self.by_source.append(course.r2(*predictions[i], chunk.valid[int(chunk.chosen[i])]) if i in predictions else None)

    def finish(self):
        assert self.ctx.course is not None
        return self.ctx.course.mean_over_sources(self.by_source, clip=True)

    @classmethod
    def summarise(cls, direction: DirectionResult, outputs: list, result: FitResult, cfg: FitConfig) -> None:
        direction.time_course = TimeCourseResult.of(pool_seeds(outputs, bounds=boot.SYNC_R2_RANGE))


@register("weights")
class Weights(Analysis):
    """Each source layer's map to its chosen target layer, from the first split seed
    (``weights.safetensors``): an affine probe's weight and bias, an MLP probe's network and
    standardisation (which maps to every target layer; the chosen one is in the key)."""

    def __init__(self, ctx: DirectionContext):
        super().__init__(ctx)
        self.weights: dict[str, torch.Tensor] = {}

    @classmethod
    def wanted(cls, ctx: DirectionContext) -> bool:
        return ctx.cfg.save_weights

    def add(self, chunk: ChunkFit) -> None:
        dm = self.ctx.dm
        if self.ctx.seed != self.ctx.cfg.data.split_seeds[0]:
            return
        for i, s in enumerate(chunk.sources):
            t = chunk.target(i)
            if t is None:
                continue
            name = f"{self.ctx.direction}/source_{dm.source_layers[s]}/target_{dm.target_layers[t]}"
            if hasattr(chunk.probe, "weights"):
                w, b = chunk.probe.weights(i, t)
                self.weights[name + "/weight"], self.weights[name + "/bias"] = w.float().contiguous(), b.float().contiguous()
            elif hasattr(chunk.probe, "saved_tensors"):  # one source layer per chunk
                self.weights |= {f"{name}/mlp/{k}": v for k, v in chunk.probe.saved_tensors().items()}

    def finish(self) -> dict[str, torch.Tensor]:
        return self.weights

    @classmethod
    def pool(cls, result: FitResult, per_fit: list[tuple[int, dict]], artefacts: Artefacts, cfg: FitConfig) -> None:
        from nsync.probes.saved import weights_metadata

        artefacts.weights = {k: v for _, weights in per_fit for k, v in weights.items()}
        artefacts.weights_metadata = weights_metadata(result, cfg.data.split_seeds[0])


@register("cka")
class CKA(Analysis):
    """The debiased linear CKA of every (source, target layer) pair on the test side (no fitting)."""

    @classmethod
    def wanted(cls, ctx: DirectionContext) -> bool:
        return ctx.cfg.cka

    def finish(self) -> np.ndarray | None:
        dm = self.ctx.dm
        if dm.n("test") < 4:
            return None
        test = torch.from_numpy(dm.index["test"])
        return debiased_cka(dm.x[test], dm.y[test]).numpy()

    @classmethod
    def summarise(cls, direction: DirectionResult, outputs: list[np.ndarray], result: FitResult, cfg: FitConfig) -> None:
        direction.cka = nan_to_none(np.mean(outputs, 0).tolist())
        direction.sync_cka = nan_to_none(mean_best(outputs))

    @classmethod
    def pool(cls, result: FitResult, per_fit: list[tuple[int, np.ndarray]], artefacts: Artefacts, cfg: FitConfig) -> None:
        ckas = [d.sync_cka for d in result.directions.values() if d.sync_cka is not None]
        result.sync_cka = float(np.mean(ckas)) if ckas and len(ckas) == len(result.directions) else None


@register("subspace")
class Subspace(Analysis):
    """The communication subspace: each source layer's map at its chosen target reduced to every
    rank up to ``subspace.max_rank`` (affine probes; :mod:`nsync.fit.subspace`)."""

    def __init__(self, ctx: DirectionContext):
        super().__init__(ctx)
        self.collector = subspace.SubspaceCollector(ctx)

    @classmethod
    def wanted(cls, ctx: DirectionContext) -> bool:
        return ctx.cfg.subspace.max_rank > 0 and ctx.cfg.probe == "affine"

    def add(self, chunk: ChunkFit) -> None:
        self.collector.add(chunk)

    def finish(self) -> subspace.SubspaceFit:
        return self.collector.finish()

    @classmethod
    def summarise(cls, direction: DirectionResult, outputs: list[subspace.SubspaceFit], result: FitResult, cfg: FitConfig) -> None:
        direction.subspace = subspace.summarise(outputs, cfg.subspace.share)

    @classmethod
    def pool(cls, result: FitResult, per_fit: list[tuple[int, subspace.SubspaceFit]], artefacts: Artefacts, cfg: FitConfig) -> None:
        result.subspace, _ = subspace.pool(per_fit, cfg.subspace.share)


@register("partition")
class Partition(Analysis):
    """The variance partition: every baseline of ``partition.baselines`` beside every chunk
    (:class:`nsync.fit.partition.BaselinePartition`), its shares pooled per direction and run."""

    def __init__(self, ctx: DirectionContext):
        super().__init__(ctx)
        self.baselines = partition.read_baselines(ctx)

    @classmethod
    def wanted(cls, ctx: DirectionContext) -> bool:
        return bool(ctx.cfg.partition.baselines)

    def add(self, chunk: ChunkFit) -> None:
        for baseline in self.baselines.values():  # the same chunk beside each baseline
            baseline.add(chunk)

    def finish(self) -> dict[str, partition.PartitionFit]:
        return {name: baseline.finish() for name, baseline in self.baselines.items()}

    @classmethod
    def summarise(cls, direction: DirectionResult, outputs: list[dict[str, partition.PartitionFit]], result: FitResult, cfg: FitConfig) -> None:
        source = direction.r2_matrix  # the source alone, mean over split seeds
        direction.partition = {
            name: partition.summarise_baseline(name, [o[name] for o in outputs], source, result.target_layers) for name in outputs[0]
        }
        partition.warn_edges(direction.partition, cfg.partition.feature_ratios)

    @classmethod
    def pool(cls, result: FitResult, per_fit: list[tuple[int, dict[str, partition.PartitionFit]]], artefacts: Artefacts, cfg: FitConfig) -> None:
        for name in per_fit[0][1]:
            result.partition[name], replicates = partition.pool_baseline(name, [(seed, o[name]) for seed, o in per_fit], cfg.partition.layer)
            artefacts.partition_bootstrap.update(replicates)
            fits = [o[name] for _, o in per_fit]
            unique = {d: r.partition[name].values.get("unique") for d, r in result.directions.items() if name in r.partition}
            by_direction = {}
            if all(f.replicates is not None for f in fits):  # one joint draw over split seeds per direction, as SyncR²'s
                by_direction = {
                    d: boot.pool([(0, r[QUANTITIES.index("unique")]) for f in fits if f.direction == d and (r := f.replicates) is not None])
                    for d in unique
                }
            result.partition[name].unique_asymmetry = asymmetries({d: v for d, v in unique.items() if v is not None}, by_direction)
