"""Variance partitioning: how much of the partner's next state the speaker's state explains that a
baseline does not.

For every (source layer, target layer) cell the fit compares three probes on the same pairs,
split and test episodes: the source alone (the main fit), the baseline alone (its features read by
:class:`nsync.data.bands.BandReader`) and both together (banded ridge: the source and each of the
baseline's features a band with its own penalty, :class:`nsync.probes.AffineProbe` with
``band_start``, the penalties chosen per cell on validation: :func:`joint_bands`). With test
R² ``S``, ``B`` and ``J``:

- unique share of the source: ``J - B`` (what the source adds beyond the baseline),
- shared share: ``S + B - J`` (what either explains alone).

A difference of separately fitted conditions (the controls) cannot give these: the two fits
predict different parts of the target. The unique SyncR² follows SyncR²'s rule: per source layer
one target layer, chosen on validation episodes (the best validation unique share), its test value
averaged over source layers; it is not clipped at 0 (a share beyond a baseline can be estimated
below zero, and clipping would bias it upward). Every figure gets the episode bootstrap's interval
from the same replicates as SyncR², so the shares are paired.
"""

from __future__ import annotations

import itertools
import logging
import warnings
from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np
import torch

if TYPE_CHECKING:
    from nsync.probes.metrics import ProbeResults
    from nsync.probes.ridge import Bands

from nsync.fit.config import PartitionConfig  # noqa: E402,F401  (its home until 2026-12; imported from here by older code)

log = logging.getLogger("nsync.fit")

#: The shares reported per baseline, in this order.
QUANTITIES = ("source", "baseline", "joint", "unique", "shared")


@dataclass
class ChunkShares:
    """One baseline's fits for a chunk of source layers: test R² matrices, the target chosen per
    source layer, and per source layer each quantity's estimate and bootstrap replicates."""

    r2_baseline: np.ndarray  # [chunk, targets]
    r2_joint: np.ndarray
    # [chunk, targets, features] each feature's chosen penalty over the source's in the joint fit (0: the baseline alone validated better)
    ratio: np.ndarray
    chosen: np.ndarray  # [chunk] target position (-1: none)
    estimates: np.ndarray  # [chunk, quantities]
    replicates: np.ndarray | None  # [chunk, quantities, n_boot]
    episode_r2: np.ndarray  # [chunk, quantities, test episodes] at the chosen cell
    null_unique: np.ndarray | None = None  # [chunk, surrogates] the unique share with the test rows re-paired
    by_time: list | None = None  # per source layer: (unique share per bin, its replicates) or None
    baseline_ratio: np.ndarray | None = None  # [chunk, targets, features - 1] the baseline alone's penalty of each later feature over the first's


#: The penalty ratio of a band whose ratio is fixed (an indicator, ``nsync.data.bands.INDICATOR_BANDS``):
#: brought to the largest band's total variance, one column is then in effect unpenalised.
FIXED_BAND_RATIO = 1.0


def baseline_bands(cfg: PartitionConfig, feature_starts: list[int], fixed: Sequence[bool] = ()) -> Bands | None:
    """Banded ridge for a baseline alone (``None`` for one band: plain ridge): every band
    brought to the largest one's total variance, each later band at each of
    ``cfg.feature_ratios`` of the first one's penalty (whose own is the alpha), or at
    :data:`FIXED_BAND_RATIO` where ``fixed`` says so.

    >>> baseline_bands(PartitionConfig(feature_ratios=[0.1, 1.0]), [4, 7]).ratios
    [(0.1, 0.1), (0.1, 1.0), (1.0, 0.1), (1.0, 1.0)]
    >>> baseline_bands(PartitionConfig(feature_ratios=[0.1, 10.0]), [4, 5], fixed=(False, True)).ratios
    [(0.1, 1.0), (10.0, 1.0)]
    """
    if not feature_starts:
        return None
    from nsync.probes.ridge import Bands

    grid = tuple(float(q) for q in cfg.feature_ratios)
    options = [(FIXED_BAND_RATIO,) if f else grid for f in (tuple(fixed) or (False,) * len(feature_starts))]
    return Bands(list(feature_starts), list(itertools.product(*options)), reference="largest")


def joint_bands(cfg: PartitionConfig, d_in: int, feature_starts: list[int], baseline_ratio: np.ndarray | None) -> Bands:
    """Banded ridge for the source (``d_in`` columns) beside a baseline: every band brought to the
    source's total variance (its alpha grid keeps its meaning), the baseline's first feature at
    each of ``cfg.ratios`` of the source's penalty. Later features keep, in each cell, the ratios
    to the first that the baseline alone chose there (``baseline_ratio`` ``[S or 1, T, features -
    1]``): the joint fit nests the baseline-alone one, and chooses among as many combinations per
    cell as beside a one-feature baseline (more choices would let the joint fit win on validation
    episodes by chance, and bias the unique share down on the test ones).

    >>> joint_bands(PartitionConfig(ratios=[1.0, 10.0]), 5, [], None).ratios
    [1.0, 10.0]
    >>> b = joint_bands(PartitionConfig(ratios=[1.0, 10.0]), 5, [3], np.array([[[0.1], [1.0]]]))  # 1 source, 2 targets
    >>> b.start, b.ratios, b.allowed[:, 0].tolist()
    ([5, 8], [(1.0, 0.1), (1.0, 1.0), (10.0, 1.0), (10.0, 10.0)], [[True, False], [False, True], [True, False], [False, True]])
    """
    from nsync.probes.ridge import Bands

    ratios = [float(r) for r in cfg.ratios]
    if not feature_starts:
        return Bands([d_in], ratios)
    assert baseline_ratio is not None  # the baseline alone is banded where it has several features
    later = np.unique(baseline_ratio.reshape(-1, baseline_ratio.shape[-1]), axis=0)  # [distinct, features - 1]
    combinations = [(r, *(r * float(q) for q in qs)) for r in ratios for qs in later]
    matches = (baseline_ratio[None] == later[:, None, None]).all(-1)  # [distinct, S or 1, T]
    allowed = torch.from_numpy(np.tile(matches, (len(ratios), 1, 1)))  # [combinations, S or 1, T], in the order of combinations
    return Bands([d_in] + [d_in + s for s in feature_starts], combinations, allowed=allowed)


def max_band_combinations(cfg: PartitionConfig) -> int:
    """The most band penalty ratio combinations any fit of the partition may validate (1 without
    baselines): a joint fit's where the baseline alone chose every one of its combinations somewhere."""
    from nsync.data.bands import Baseline

    features = [len(Baseline.parse(b).features) for b in cfg.baselines]
    return max((len(cfg.ratios) * len(cfg.feature_ratios) ** (k - 1) for k in features), default=1)


def shares_at(source, baseline, joint) -> np.ndarray:
    """``[..., quantities]`` from test R² of the three fits (any matching shapes).

    >>> shares_at(np.array(0.5), np.array(0.4), np.array(0.6)).round(3).tolist()
    [0.5, 0.4, 0.6, 0.2, 0.3]
    """
    source, baseline, joint = (np.asarray(v, dtype=float) for v in (source, baseline, joint))
    return np.stack([source, baseline, joint, joint - baseline, source + baseline - joint], -1)


def choose_unique_targets(val_baseline: np.ndarray | None, val_joint: np.ndarray | None, test_unique: np.ndarray) -> np.ndarray:
    """Per source layer the target layer with the best validation unique share (``J - B``), or
    without validation R² the best test one; -1 where none has a value."""
    from nsync.fit.results import choose_targets

    val = None if val_baseline is None or val_joint is None else val_joint - val_baseline
    return choose_targets(test_unique, val)


def fit_chunk_shares(
    cfg,
    dm,
    chunk: list[int],
    bands: list[torch.Tensor],
    feature_starts: list[int],
    fixed: Sequence[bool],
    source_res: ProbeResults,
    fit_probe,
    replicate_r2,
    n_boot: int,
    on_validation: bool,
    baseline_cache: dict,
    perms: np.ndarray | None = None,
    valid: torch.Tensor | None = None,
    course=None,
) -> ChunkShares:
    """The baseline-alone and joint fits for the source layers ``chunk`` of ``dm`` and one baseline
    (``bands``: its features per source layer of the chunk, each band after the first beginning
    at a column of ``feature_starts``, ``fixed`` where its penalty ratio is fixed), scored against the source-alone
    results ``source_res`` of the same chunk. ``fit_probe(view)`` fits and tests an affine probe on
    a data module view; ``baseline_cache`` keeps a baseline-alone fit that does not depend on the
    source layer, so it is fitted once per direction. With surrogate re-pairings ``perms`` of the
    test rows (and the test side's ``valid`` dimensions) the unique share's null is computed too,
    and with a :class:`nsync.fit.timecourse.TimeCourse` its course by utterance index."""
    from nsync.fit.bootstrap import episode_r2

    n_tgt = len(dm.target_layers)
    n_features = len(feature_starts) + 1
    key = id(bands[0])
    shared_band = all(b is bands[0] for b in bands)
    if shared_band and key in baseline_cache:
        base_probe = baseline_cache[key]
    else:
        base_x = bands[0][:, None] if shared_band else torch.stack(bands, 1)
        base_probe = fit_probe(dm.with_source_data(base_x, baseline_bands(cfg.partition, feature_starts, fixed)))
        if shared_band:
            baseline_cache[key] = base_probe
    base = _results(base_probe.results, 1 if shared_band else len(chunk), n_tgt)
    # the baseline alone's feature ratios per cell (one fit serving every source layer: the same for each)
    base_ratio = None if base["ratio"] is None else np.broadcast_to(base["ratio"], (len(chunk), *base["ratio"].shape[1:])).copy()
    joint_x = torch.cat([dm.x[:, chunk], torch.stack(bands, 1)], -1)
    # cells the baseline alone chose nothing for (no variance on the validation side) may take any
    design_ratio = None if base_ratio is None else np.where(np.isnan(base_ratio), float(cfg.partition.feature_ratios[0]), base_ratio)
    joint_probe = fit_probe(dm.with_source_data(joint_x, joint_bands(cfg.partition, dm.d_in, feature_starts, design_ratio)))
    joint = _results(joint_probe.results, len(chunk), n_tgt)
    source = _results(source_res, len(chunk), n_tgt)

    def row(part: dict, i: int, name: str):
        value = part[name]
        return value[0] if value.shape[0] == 1 else value[i]

    r2_b = np.stack([row(base, i, "test_r2") for i in range(len(chunk))])
    r2_j = joint["test_r2"].copy()
    val_b = None if base["val_r2"] is None or not on_validation else np.stack([row(base, i, "val_r2") for i in range(len(chunk))])
    val_j = None if joint["val_r2"] is None or not on_validation else joint["val_r2"].copy()
    ratio = np.full((len(chunk), n_tgt, n_features), np.nan) if joint["ratio"] is None else joint["ratio"].reshape(len(chunk), n_tgt, -1).copy()
    # The joint model is chosen on validation among the banded fits and the baseline alone: where
    # the source does not help the validation episodes it gets no weight (ratio 0), so the unique
    # share is 0 there rather than the joint fit's extra estimation error.
    if val_b is None or val_j is None:  # both or neither: the same data module's validation rows
        baseline_only = np.zeros_like(r2_j, dtype=bool)
    else:
        baseline_only = np.nan_to_num(val_b, nan=-np.inf) >= np.nan_to_num(val_j, nan=-np.inf)
        val_j[baseline_only] = val_b[baseline_only]
    r2_j[baseline_only], ratio[baseline_only] = r2_b[baseline_only], 0.0  # every feature's ratio
    chosen = choose_unique_targets(val_b, val_j, r2_j - r2_b)
    estimates = np.full((len(chunk), len(QUANTITIES)), np.nan)
    replicates = None if replicate_r2 is None else np.full((len(chunk), len(QUANTITIES), n_boot), np.nan)
    n_episodes = source["sums"]["sse"].shape[0]
    per_episode = np.full((len(chunk), len(QUANTITIES), n_episodes), np.nan)
    for i in range(len(chunk)):
        t = int(chosen[i])
        if t < 0:
            continue
        estimates[i] = shares_at(source["test_r2"][i, t], r2_b[i, t], r2_j[i, t])
        sse = [source["sums"]["sse"][:, i], _sse(base, i), _sse(base, i) if baseline_only[i, t] else joint["sums"]["sse"][:, i]]
        if replicates is not None:
            reps = [replicate_r2(s, [t])[:, 0] for s in sse]
            replicates[i] = shares_at(*reps).T
        sums = source["sums"]
        eps = [episode_r2({"n": sums["n"], "s1": sums["s1"], "s2": sums["s2"], "sse": s}, [t])[:, 0] for s in sse]
        per_episode[i] = shares_at(*eps).T
    null_unique = None
    if perms is not None:
        from nsync.fit.surrogates import strata, unique_nulls

        assert valid is not None  # given with perms
        rows = np.arange(len(chunk))
        picked = np.where(chosen >= 0, chosen, 0)
        null_unique = unique_nulls(
            joint_probe,
            joint_x,
            torch.from_numpy(dm.index["train"]),
            torch.from_numpy(dm.index["test"]),
            dm.y,
            dm.d_in,
            chosen,
            r2_b[rows, picked],
            baseline_only[rows, picked],
            perms,
            valid,
            strata(dm.pairs.iloc[np.concatenate([dm.index["train"], dm.index["test"]])], cfg.surrogates.kind),
        )
    by_time: list | None = None
    if course is not None:  # the unique share by utterance index: joint minus baseline, per bin
        from nsync.fit.surrogates import chosen_predictions

        assert valid is not None  # given with course
        test = torch.from_numpy(dm.index["test"])
        y_test = dm.y[test]
        joint_pred = chosen_predictions(joint_probe, joint_x[test], y_test, chosen)
        with torch.no_grad():
            base_pred = dict(base_probe.source_predictions((bands[0][:, None] if shared_band else torch.stack(bands, 1))[test]))
        y_base = (y_test.float() - base_probe.target_shift.cpu()).double()
        by_time = []
        for i, t in enumerate(int(c) for c in chosen):
            if t < 0:
                by_time.append(None)
                continue
            b_est, b_reps = course.r2(y_base[:, t], base_pred[0 if shared_band else i][:, t].double(), valid[t])
            j_est, j_reps = (b_est, b_reps) if baseline_only[i, t] else course.r2(*joint_pred[i], valid[t])
            by_time.append((j_est - b_est, None if b_reps is None else j_reps - b_reps))
    del joint_probe
    return ChunkShares(r2_b, r2_j, ratio, chosen, estimates, replicates, per_episode, null_unique, by_time, base_ratio)


def _sse(base: dict, i: int) -> torch.Tensor:
    """The baseline fit's per-episode squared errors for chunk position ``i`` (one fit serves all)."""
    sse = base["sums"]["sse"]  # [E, sources, targets, dims]
    return sse[:, 0] if sse.shape[1] == 1 else sse[:, i]


def _results(res: ProbeResults, n_sources: int, n_tgt: int) -> dict:
    """A tested probe's results as numpy matrices ``[sources, targets]`` (band ratios ``[sources,
    targets, bands after the first]``) plus its per-episode sums."""
    assert res.test_r2 is not None and res.episode_sums is not None  # set by the test stage of every (affine) probe
    return {
        "test_r2": res.test_r2.reshape(n_sources, n_tgt).numpy(),
        "val_r2": None if res.val_r2 is None else res.val_r2.reshape(n_sources, n_tgt).numpy(),
        "ratio": None if res.ratio is None else res.ratio.reshape(n_sources, n_tgt, -1).numpy(),
        "sums": res.episode_sums,
    }


def mean_over_sources(values: np.ndarray) -> np.ndarray:
    """NaN-aware mean over the first axis (source layers without a chosen target are left out)."""
    with warnings.catch_warnings(action="ignore", category=RuntimeWarning):
        return np.nanmean(values, axis=0)


def join_chunks(parts: list[ChunkShares], course=None) -> dict:
    """One direction's shares from its chunks: matrices ``[sources, targets]``, the chosen targets,
    per-source-layer estimates, their mean over source layers and its replicates ``[quantities,
    n_boot]``, the surrogates' null and (with a time course) the unique share by utterance index."""
    from nsync.fit.timecourse import summarise_fit

    estimates = np.concatenate([p.estimates for p in parts])
    replicates = None if parts[0].replicates is None else mean_over_sources(np.concatenate([p.replicates for p in parts]))
    return {
        "r2_baseline": np.concatenate([p.r2_baseline for p in parts]),
        "r2_joint": np.concatenate([p.r2_joint for p in parts]),
        "ratio": np.concatenate([p.ratio for p in parts]),
        "baseline_ratio": None if parts[0].baseline_ratio is None else np.concatenate([p.baseline_ratio for p in parts]),
        "chosen": np.concatenate([p.chosen for p in parts]),
        "by_source_layer": estimates,
        "estimate": mean_over_sources(estimates),
        "replicates": replicates,
        "episode_r2": mean_over_sources(np.concatenate([p.episode_r2 for p in parts])),
        "null_unique": None if parts[0].null_unique is None else mean_over_sources(np.concatenate([p.null_unique for p in parts])),
        "time_course": None if course is None else summarise_fit([x for p in parts if p.by_time is not None for x in p.by_time], course, clip=False),
    }


def intervals(estimate: np.ndarray, replicates: np.ndarray) -> tuple[dict[str, tuple[float, float] | None], dict[str, float | None]]:
    """Per quantity the basic bootstrap interval and the bias-corrected value of ``estimate``
    ``[quantities]`` from its ``replicates`` ``[quantities, n_boot]``."""
    from nsync.fit import bootstrap as boot

    ci = {q: boot.interval(replicates[i], estimate[i]) for i, q in enumerate(QUANTITIES)}
    corrected = {q: boot.bias_corrected(estimate[i], replicates[i]) for i, q in enumerate(QUANTITIES)}
    return ci, corrected


def summarise_direction(fits: list, target_layers: list[int], layer: str, feature_ratios: list[float] | None = None) -> dict:
    """``PartitionDirection`` per baseline from one direction's fits (one per split seed); with the
    ``feature_ratios`` grid, a warning where a joined baseline's features chose its edge in most cells."""
    from nsync.data.bands import INDICATOR_BANDS, Baseline
    from nsync.fit import bootstrap as boot
    from nsync.fit.results import PartitionDirection, nan_to_none
    from nsync.fit.surrogates import null_summary, p_value
    from nsync.fit.timecourse import combine_seeds

    out = {}
    for name in fits[0].partition:
        seeds = [f.partition[name] for f in fits]
        baseline = Baseline.parse(name)
        features = baseline.bands
        null = None if seeds[0]["null_unique"] is None else np.mean([s["null_unique"] for s in seeds], 0)
        base = np.mean([s["r2_baseline"] for s in seeds], 0)
        joint = np.mean([s["r2_joint"] for s in seeds], 0)
        source = np.mean([f.r2 for f in fits], 0)
        by_layer = mean_over_sources(np.stack([s["by_source_layer"] for s in seeds]))  # [sources, quantities]
        per_seed = np.stack([s["estimate"] for s in seeds])  # [seeds, quantities]
        estimate = mean_over_sources(per_seed)
        # one joint draw over split seeds (episode-keyed weights), as the run's pooled interval
        ci, corrected = (
            ({}, {}) if any(s["replicates"] is None for s in seeds) else intervals(estimate, boot.combine([s["replicates"] for s in seeds]))
        )
        out[name] = PartitionDirection(
            r2_baseline=nan_to_none(base.tolist()),
            r2_joint=nan_to_none(joint.tolist()),
            unique=nan_to_none((joint - base).tolist()),
            shared=nan_to_none((source + base - joint).tolist()),
            ratio=[nan_to_none(s["ratio"][..., 0].tolist()) for s in seeds],
            feature_ratio=None
            if len(features) == 1
            else {f: [nan_to_none(s["ratio"][..., k].tolist()) for s in seeds] for k, f in enumerate(features)},
            baseline_feature_ratio=None
            if seeds[0]["baseline_ratio"] is None
            else {f: [nan_to_none(s["baseline_ratio"][..., k].tolist()) for s in seeds] for k, f in enumerate(features[1:])},
            chosen_target_layer=[[target_layers[j] if j >= 0 else None for j in s["chosen"]] for s in seeds],
            by_source_layer={q: nan_to_none(by_layer[:, i].tolist()) for i, q in enumerate(QUANTITIES)},
            per_seed={q: nan_to_none(per_seed[:, i].tolist()) for i, q in enumerate(QUANTITIES)},
            values={q: nan_to_none(float(v)) for q, v in zip(QUANTITIES, estimate, strict=True)},
            ci95=ci,
            bias_corrected=corrected,
            unique_p_value=None if null is None else p_value(float(estimate[QUANTITIES.index("unique")]), null),
            unique_null=null_summary(null),
            time_course=None if seeds[0]["time_course"] is None else combine_seeds([s["time_course"] for s in seeds]),
        )
    for name, d in out.items():
        for feature, chosen in (d.baseline_feature_ratio or {}).items():
            if feature in INDICATOR_BANDS.values():  # a fixed ratio, not chosen
                continue
            at = np.asarray(chosen, dtype=float)
            at = at[np.isfinite(at)]
            if feature_ratios and len(at):
                for edge, word in ((min(feature_ratios), "smallest"), (max(feature_ratios), "largest")):
                    if (at == edge).mean() > 0.5:
                        log.warning(
                            "in the joined baseline %s alone, %s chose the %s of partition.feature_ratios (%g) in %.0f%% of the cells: "
                            "its best penalty may lie beyond the grid; extend partition.feature_ratios",
                            name,
                            feature,
                            word,
                            edge,
                            100 * (at == edge).mean(),
                        )
    for name, share in joined_shortfall({n: np.asarray(d.r2_baseline, dtype=float) for n, d in out.items()}).items():
        if share > 0.1:
            log.warning(
                "the joined baseline %s alone predicts less than its best feature alone in %.0f%% of the cells (by more than 0.005): "
                "its features' penalties (partition.feature_ratios) did not find their best on validation, so the source's unique "
                "share beyond it may be overstated; widen partition.feature_ratios, and read it beside each feature's own",
                name,
                100 * share,
            )
    return out


def joined_shortfall(r2_baseline: dict[str, np.ndarray], margin: float = 0.005) -> dict[str, float]:
    """For each joined baseline (``a+b``) whose features are also fitted alone: the share of
    (source, target layer) cells where it predicts less than its best feature alone by more than
    ``margin`` (test R² of the baselines alone). A joined baseline holds all its features, so in
    the population it predicts at least as well; a shortfall is its one penalty failing them.

    >>> joined_shortfall({"a": np.array([[0.3, 0.2]]), "b": np.array([[0.1, 0.4]]), "a+b": np.array([[0.35, 0.3]])})
    {'a+b': 0.5}
    """
    from nsync.data.bands import Baseline

    out = {}
    for name, joined in r2_baseline.items():
        parts = Baseline.parse(name).features
        if len(parts) < 2 or not all(p in r2_baseline for p in parts):
            continue
        best = np.fmax.reduce([r2_baseline[p] for p in parts])
        cells = np.isfinite(joined) & np.isfinite(best)
        if cells.any():
            out[name] = float((joined[cells] < best[cells] - margin).mean())
    return out


def summarise(fits: list, split_seeds: list[int], features: dict[str, list[str]], layer: str) -> tuple[dict, dict[str, np.ndarray]]:
    """``PartitionSummary`` per baseline (mean over directions, then split seeds, as SyncR²) and
    the replicates behind its intervals: ``{"<baseline>/<quantity>": [n_boot]}``."""
    from nsync.fit import bootstrap as boot
    from nsync.fit.results import PartitionSummary, nan_to_none
    from nsync.fit.surrogates import null_summary, p_value

    summaries, replicates = {}, {}
    for name in fits[0].partition:
        seeds = [s for s in split_seeds if any(f.seed == s for f in fits)]
        estimate = np.mean([mean_over_sources(np.stack([f.partition[name]["estimate"] for f in fits if f.seed == s])) for s in seeds], 0)
        values = {q: nan_to_none(float(v)) for q, v in zip(QUANTITIES, estimate, strict=True)}
        ci: dict[str, tuple[float, float] | None] = {}
        corrected: dict[str, float | None] = {}
        if all(f.partition[name]["replicates"] is not None for f in fits):
            reps = boot.combine([boot.combine([f.partition[name]["replicates"] for f in fits if f.seed == s]) for s in seeds])  # [Q, B]
            replicates.update({f"{name}/{q}": reps[i] for i, q in enumerate(QUANTITIES)})
            ci, corrected = intervals(estimate, reps)
        p, null = None, None
        if all(f.partition[name]["null_unique"] is not None for f in fits):
            null = boot.combine([boot.combine([f.partition[name]["null_unique"] for f in fits if f.seed == s]) for s in seeds])
            p = p_value(estimate[QUANTITIES.index("unique")], null)
        summaries[name] = PartitionSummary(
            features=features[name],
            layer=layer,
            values=values,
            ci95=ci,
            bias_corrected=corrected,
            unique_p_value=p,
            unique_null=null_summary(null),
        )
    return summaries, replicates
