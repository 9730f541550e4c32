"""``FitResult``: the typed, versioned content of a fit run's ``results.json``, and how the fits
of a run pool into it (:meth:`FitResult.from_fits`).

:class:`FitResult` is the only code that writes and reads ``results.json``; the controls,
analysis and report stages read a run through :class:`nsync.fit.run_folder.RunFolder`.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any, Optional, Protocol

import numpy as np
from pydantic import BaseModel, ConfigDict, Field, ValidationError

from nsync.errors import NsyncError
from nsync.fit.run_folder import Artefacts, RunFolder
from nsync.stats.sample_size import few_test_episodes

if TYPE_CHECKING:
    from nsync.fit.config import FitConfig
    from nsync.fit.direction import DirectionFit
    from nsync.stats.timecourse import PooledCourse

log = logging.getLogger("nsync.fit")

#: Bumped whenever a field changes meaning or disappears; :meth:`FitResult.load` reads this one and refuses others.
#: 3: SyncR² at target layers chosen on validation episodes (``target_choice``), episode-keyed bootstrap.
SCHEMA_VERSION = 3

Matrix = list[list[Optional[float]]]  # [source layer][target layer]; null where R² is undefined


def nan_to_none(x):
    """Lists of floats with NaN as None (JSON has no NaN).

    >>> nan_to_none([1.0, float("nan")])
    [1.0, None]
    """
    if isinstance(x, list):
        return [nan_to_none(v) for v in x]
    return None if isinstance(x, float) and not np.isfinite(x) else x


def format_sync_r2(raw: float | None, bias_corrected: float | None, ci95: Sequence[float] | None, digits: int = 3, few: str | None = None) -> str:
    """SyncR² as every surface shows it (console, report, quickstart, README): the bias-corrected
    estimate with its 95% interval over test episodes (the interval is centred on it, so it holds
    it), the raw value beside; without a bootstrap the raw value alone, labelled so; with too few
    test episodes for the interval to hold (``few``, :func:`nsync.stats.sample_size.few_test_episodes`)
    the raw value and why.

    >>> format_sync_r2(0.0969, 0.1603, (0.1100, 0.1939))
    'SyncR² 0.160 [0.110, 0.194] (bias-corrected, 95% interval over test episodes; raw 0.097)'
    >>> format_sync_r2(0.0969, None, None)
    'SyncR² 0.097 (raw; no interval: bootstrap=0)'
    >>> format_sync_r2(0.0969, 0.1603, (0.1100, 0.1939), few="only 8 test episodes")
    'SyncR² 0.097 (raw; no interval: only 8 test episodes)'
    """
    if raw is None:
        return "SyncR² n/a"
    if few:
        return f"SyncR² {raw:.{digits}f} (raw; no interval: {few})"
    if bias_corrected is None or not ci95:
        return f"SyncR² {raw:.{digits}f} (raw; no interval: bootstrap=0)"
    lo, hi = ci95
    return f"SyncR² {bias_corrected:.{digits}f} [{lo:.{digits}f}, {hi:.{digits}f}] (bias-corrected, 95% interval over test episodes; raw {raw:.{digits}f})"


class SubspaceResult(BaseModel):
    """The communication subspace (``subspace.max_rank``; nsync.stats.subspace): the affine maps at
    the chosen targets reduced to each rank, for a direction or the run (mean over directions)."""

    model_config = ConfigDict(extra="forbid")

    ranks: list[int] = Field(description="the ranks tried: 1 up to subspace.max_rank, then the full rank (the target's width)")
    share: float = Field(description="the share of the full rank's SyncR² that defines the dimensionality (subspace.share)")
    sync_r2_by_rank: list[Optional[float]] = Field(description="SyncR² of the rank-r maps (clipped, mean over source layers); at full rank SyncR²")
    sync_r2_by_rank_ci95: Optional[list[Optional[tuple[float, float]]]] = Field(None, description="95% basic bootstrap interval per rank")
    dimensionality: Optional[int] = Field(
        None, description="dimensionality of synchrony: the smallest rank whose SyncR² reaches `share` of the full rank's (null: SyncR² 0)"
    )
    dimensionality_ci95: Optional[tuple[int, int]] = Field(
        None, description="95% percentile interval of the dimensionality over bootstrap replicates"
    )
    r2_by_rank: Matrix = Field(description="per source layer the test R² of its map at each rank (mean over split seeds)")
    dimensionality_by_source_layer: list[Optional[int]] = Field(description="per source layer the smallest rank reaching `share` of its full R²")
    alignment_by_source_layer: list[Optional[float]] = Field(
        description="per source layer the share of its predictive subspace (at its dimensionality) inside the source's as many leading "
        "principal components (unit-variance source space)"
    )
    random_alignment_by_source_layer: list[Optional[float]] = Field(
        description="what a random subspace of that size gets: rank / k, k = min(training rows - 1, width), the span a ridge map lies in"
    )
    alignment: Optional[float] = Field(None, description="alignment at the run's dimensionality, mean over source layers")
    random_alignment: Optional[float] = Field(None, description="a random subspace's alignment at that rank")
    tracks: dict[str, Optional[float]] = Field(
        default_factory=dict,
        description="what the shared dimensions follow: test R² of the partner's next state in each source layer's subspace (at its "
        "dimensionality) from observable features of the pair, mean over source layers: shape (utterance index, prompt and reply "
        "lengths), topic (a text embedding of the source's history, where the cache holds one), speaker (the source character), all",
    )

    def line(self, few: str | None = None) -> str:
        """The dimensionality with its interval (left out with ``few``) and the alignment, as the console and the report write it.

        >>> SubspaceResult(ranks=[1, 2, 8], share=0.9, sync_r2_by_rank=[0.1, 0.29, 0.3], dimensionality=2, dimensionality_ci95=(2, 3),
        ...     r2_by_rank=[[0.1, 0.29, 0.3]], dimensionality_by_source_layer=[2], alignment_by_source_layer=[0.5],
        ...     random_alignment_by_source_layer=[0.25], alignment=0.5, random_alignment=0.25).line()
        "dimensionality 2 [2, 3] of 8 (the smallest rank with 90% of the full map's SyncR²); its subspace's share inside the source's top 2 components 0.50 (random 0.25)"
        """
        if self.dimensionality is None:
            return f"no dimensionality: the full map's SyncR² is 0 (ranks 1-{self.ranks[-1]} tried)"
        ci = f" [{self.dimensionality_ci95[0]}, {self.dimensionality_ci95[1]}]" if self.dimensionality_ci95 and not few else ""
        aligned = "" if self.alignment is None else (
            f"; its subspace's share inside the source's top {self.dimensionality} components {self.alignment:.2f} (random {self.random_alignment:.2f})"
        )  # fmt: skip
        return f"dimensionality {self.dimensionality}{ci} of {self.ranks[-1]} (the smallest rank with {self.share:.0%} of the full map's SyncR²){aligned}"

    def tracks_line(self) -> str:
        """What the shared dimensions follow, as the console and the report write it.

        >>> SubspaceResult(ranks=[1, 8], share=0.9, sync_r2_by_rank=[0.3, 0.3], r2_by_rank=[[0.3, 0.3]], dimensionality_by_source_layer=[1],
        ...     alignment_by_source_layer=[0.5], random_alignment_by_source_layer=[0.1], tracks={"shape": 0.7, "topic": None, "speaker": 0.0, "all": 0.7}).tracks_line()
        "R² of the partner's state in the shared dimensions from the conversation's shape 0.70, the topic n/a, the speaker 0.00, all three 0.70"
        """
        labels = {"shape": "the conversation's shape", "topic": "the topic", "speaker": "the speaker", "all": "all three"}
        return "R² of the partner's state in the shared dimensions from " + ", ".join(
            f"{labels.get(k, k)} {'n/a' if v is None else f'{v:.2f}'}" for k, v in self.tracks.items()
        )


class Asymmetry(BaseModel):
    """Who leads: the paired difference of two opposite directions' SyncR² (``first`` minus
    ``second``) over the same test episodes; positive: the first direction's source predicts its
    partner better than the partner predicts it."""

    model_config = ConfigDict(extra="forbid")

    first: str
    second: str
    difference: float = Field(description="raw SyncR² of first minus second, mean over split seeds")
    bias_corrected: Optional[float] = None
    ci95: Optional[tuple[float, float]] = Field(None, description="95% basic bootstrap interval from replicates drawn jointly over both directions")
    leader: Optional[str] = Field(
        None, description="the agent of the first or second direction's source where the interval excludes 0; null otherwise"
    )
    episodes_first_higher: Optional[float] = Field(
        None, description="share of test episodes whose own SyncR² (episode_sync.csv, mean over split seeds) is higher in first than in second"
    )

    def line(self, few: str | None = None) -> str:
        """The difference with its interval and who leads (the interval left out with ``few``).

        >>> Asymmetry(first="A->B", second="B->A", difference=0.05, bias_corrected=0.06, ci95=(0.02, 0.1), leader="A",
        ...     episodes_first_higher=0.7).line()
        'A->B minus B->A 0.060 [0.020, 0.100] (bias-corrected; raw 0.050): A leads; A->B higher in 70% of test episodes'
        """
        higher = "" if self.episodes_first_higher is None else f"; {self.first} higher in {self.episodes_first_higher:.0%} of test episodes"
        if few or self.ci95 is None or self.bias_corrected is None:
            return f"{self.first} minus {self.second} {self.difference:.3f} (raw){higher}"
        lead = f"{self.leader} leads" if self.leader else "neither leads (the interval holds 0)"
        return (
            f"{self.first} minus {self.second} {self.bias_corrected:.3f} [{self.ci95[0]:.3f}, {self.ci95[1]:.3f}] "
            f"(bias-corrected; raw {self.difference:.3f}): {lead}{higher}"
        )


class DirectionResult(BaseModel):
    """One direction (``A->B``, ``B->A`` or an agent pair ``i->j``), over split seeds."""

    model_config = ConfigDict(extra="forbid")

    r2: Matrix = Field(description="test R² per (source, target layer), mean over split seeds")
    r2_std: Matrix = Field(description="its standard deviation over split seeds")
    r2_variance_weighted: Matrix = Field(description="variance-weighted test R², mean over split seeds")
    alpha: Optional[list[Matrix]] = Field(None, description="chosen ridge alpha per split seed and cell (affine probe)")
    sync_r2: float = Field(
        description="SyncR²: per source layer the test R² of its target layer (chosen as target_choice says), clipped at 0, "
        "mean over source layers; mean over split seeds"
    )
    sync_r2_std: float
    sync_r2_per_seed: list[float]
    sync_r2_unclipped: Optional[float] = None
    same_layer_r2: Optional[float] = None
    best_target_layer: list[int] = Field(description="per source layer: the target layer with the best mean R²")
    best_r2_by_source_layer: list[Optional[float]]
    n_train: list[int] = Field(description="training pairs per split seed")
    n_test: list[int] = Field(description="test pairs per split seed")
    test_episodes: list[int] = Field(default_factory=list, description="test episodes per split seed")
    n_excluded: int = Field(0, description="pairs left out because a reply carried a flag of data.exclude_flags (before the split)")
    cka: Optional[Matrix] = Field(None, description="debiased linear CKA per (source, target layer) on the test side, mean over split seeds")
    sync_cka: Optional[float] = Field(None, description="best target's CKA per source layer, mean over source layers and split seeds")
    target_choice: str = Field("test", description="how each source layer's target layer was chosen: validation or test")
    chosen_target_layer: list[list[Optional[int]]] = Field(description="per split seed and source layer: the chosen target layer")
    chosen_r2_by_source_layer: list[Optional[float]] = Field(
        description="per source layer: test R² at the chosen target layer, mean over split seeds"
    )
    sync_r2_test_picked: Optional[float] = Field(None, description="SyncR² by the paper's rule (best test R² per source layer), for comparison")
    partition: dict[str, PartitionDirection] = Field(default_factory=dict, description="baseline -> its variance partition (partition.baselines)")
    sync_r2_p_value: Optional[float] = Field(None, description="permutation p-value of this direction's SyncR² (surrogates)")
    sync_r2_ci95: Optional[tuple[float, float]] = Field(
        None, description="95% basic bootstrap interval of this direction's SyncR² over test episodes (joint draws over split seeds)"
    )
    sync_r2_bias_corrected: Optional[float] = Field(None, description="this direction's SyncR² minus the bias its bootstrap replicates show")
    time_course: Optional[TimeCourseResult] = Field(None, description="SyncR² by source utterance index (time_bins)")
    subspace: Optional[SubspaceResult] = Field(None, description="the communication subspace of this direction (subspace.max_rank)")

    def headline(self, digits: int = 3) -> str:
        """This direction's SyncR² as :func:`format_sync_r2` writes it."""
        return format_sync_r2(self.sync_r2, self.sync_r2_bias_corrected, self.sync_r2_ci95, digits, self.few_test_episodes)

    @property
    def few_test_episodes(self) -> str | None:
        """Why this direction's intervals and p-values are not shown, or None (enough test episodes)."""
        return few_test_episodes(min(self.test_episodes)) if self.test_episodes else None

    @property
    def r2_by_source_layer(self) -> np.ndarray:
        """Per source layer the R² that enters SyncR² (before clipping): at the chosen target layer."""
        return np.array(self.chosen_r2_by_source_layer, dtype=float)

    @property
    def r2_matrix(self) -> np.ndarray:
        return np.array(self.r2, dtype=float)

    @classmethod
    def of_seeds(cls, fits: list[DirectionFit], source_layers: list[int], target_layers: list[int]) -> DirectionResult:
        """Mean and std over one direction's split seeds of the R² matrix and the figures derived
        from it (each seed's SyncR² at the target layers it chose)."""
        from nsync.stats.r2 import at_chosen, mean_over_sources, row_max, same_layer_r2, sync_r2  # here: the report's --help imports no torch

        stack, chosen = np.stack([f.r2 for f in fits]), [f.chosen for f in fits]  # [seeds, source, target]
        mean = stack.mean(0)
        syncs = [sync_r2(m, chosen=c) for m, c in zip(stack, chosen, strict=True)]
        unclipped = [sync_r2(m, clip=False, chosen=c) for m, c in zip(stack, chosen, strict=True)]
        chosen_r2 = mean_over_sources(np.stack([at_chosen(m, c) for m, c in zip(stack, chosen, strict=True)]))
        same = [same_layer_r2(m, source_layers, target_layers) for m in stack]
        filled = np.where(np.isfinite(mean), mean, -np.inf)
        return cls(
            r2=nan_to_none(mean.tolist()),
            r2_std=nan_to_none(stack.std(0).tolist()),
            r2_variance_weighted=nan_to_none(np.mean([f.r2_weighted for f in fits], 0).tolist()),
            alpha=None if fits[0].alpha is None else [nan_to_none(f.alpha.tolist()) for f in fits if f.alpha is not None],
            sync_r2=float(np.mean(syncs)),
            sync_r2_std=float(np.std(syncs)),
            sync_r2_per_seed=syncs,
            sync_r2_unclipped=nan_to_none(float(np.mean(unclipped))),
            same_layer_r2=None if any(x is None for x in same) else float(np.mean([x for x in same if x is not None])),
            best_target_layer=[target_layers[j] for j in filled.argmax(1)],
            best_r2_by_source_layer=nan_to_none(row_max(mean).tolist()),
            n_train=[f.n_train for f in fits],
            n_test=[f.n_test for f in fits],
            test_episodes=[f.test_episodes for f in fits],
            n_excluded=fits[0].n_excluded,
            target_choice=fits[0].target_choice,
            chosen_target_layer=[[target_layers[j] if j >= 0 else None for j in c] for c in chosen],
            chosen_r2_by_source_layer=nan_to_none(chosen_r2.tolist()),
            sync_r2_test_picked=float(np.mean([sync_r2(m) for m in stack])),
        )


class TimeCourseResult(BaseModel):
    """A figure by source utterance index (nsync.stats.timecourse), over split seeds."""

    model_config = ConfigDict(extra="forbid")

    utterance: list[int] = Field(description="each bin's first source utterance index")
    n_pairs: list[int] = Field(description="test pairs per bin (first split seed that has it)")
    value: list[Optional[float]]
    ci95: list[Optional[tuple[float, float]]] = Field(description="95% basic bootstrap interval per bin (episodes)")

    @classmethod
    def of(cls, course: PooledCourse) -> TimeCourseResult:
        return cls(utterance=course.utterance, n_pairs=course.n_pairs, value=course.value, ci95=course.ci95)


class PartitionDirection(BaseModel):
    """One baseline's partition of one direction, over split seeds (nsync.fit.partition)."""

    model_config = ConfigDict(extra="forbid")

    r2_baseline: Matrix = Field(description="test R² of the baseline alone per (source, target layer), mean over split seeds")
    r2_joint: Matrix = Field(description="test R² of source and baseline together (banded ridge)")
    unique: Matrix = Field(description="joint - baseline: what the source adds beyond the baseline")
    shared: Matrix = Field(description="source + baseline - joint: what either explains alone")
    ratio: list[Matrix] = Field(
        description="per split seed and cell: the chosen penalty ratio of the joint fit's baseline over the source's (a joined baseline's first feature; 0: the baseline alone validated better)"
    )
    feature_ratio: Optional[dict[str, list[Matrix]]] = Field(
        None,
        description="baselines of several bands (joined features; own_past with its indicator band own_past:none): band -> per split seed and cell its chosen penalty ratio over the source's in the joint fit",
    )
    baseline_feature_ratio: Optional[dict[str, list[Matrix]]] = Field(
        None,
        description="baselines of several bands: each band after the first -> per split seed and cell its penalty over the first's in the baseline-alone fit",
    )
    chosen_target_layer: list[list[Optional[int]]] = Field(
        description="per split seed and source layer: the target layer of the unique share (best validation unique share)"
    )
    by_source_layer: dict[str, list[Optional[float]]] = Field(
        description="quantity -> per source layer its test value at the chosen target, mean over split seeds"
    )
    per_seed: dict[str, list[Optional[float]]] = Field(description="quantity -> per split seed its mean over source layers")
    values: dict[str, Optional[float]] = Field(description="quantity -> mean over split seeds (unique: the unique SyncR² of this direction)")
    ci95: dict[str, Optional[tuple[float, float]]] = Field(
        default_factory=dict, description="quantity -> 95% basic bootstrap interval of this direction's value over test episodes"
    )
    bias_corrected: dict[str, Optional[float]] = Field(default_factory=dict, description="quantity -> value minus the bias its replicates show")
    unique_p_value: Optional[float] = Field(None, description="permutation p-value of the unique SyncR² (surrogates)")
    unique_null: Optional[dict[str, float | int]] = Field(None, description="the unique SyncR²'s surrogate null: median, p95 (95th percentile), n")
    time_course: Optional[TimeCourseResult] = Field(None, description="the unique share by source utterance index")


class PartitionSummary(BaseModel):
    """One baseline's partition of the run: at each source layer's chosen target, averaged over
    source layers, directions and split seeds, with paired episode-bootstrap intervals."""

    model_config = ConfigDict(extra="forbid")

    features: list[str]
    layer: str = Field(description="layer of layered features: same (the source layer's relative depth) or an index")
    values: dict[str, Optional[float]] = Field(description="source, baseline, joint, unique (the unique SyncR²), shared")
    ci95: dict[str, Optional[tuple[float, float]]] = Field(default_factory=dict, description="95% basic bootstrap interval per quantity")
    bias_corrected: dict[str, Optional[float]] = Field(default_factory=dict)
    unique_p_value: Optional[float] = Field(
        None, description="permutation p-value of the unique SyncR²: the source's part of the joint prediction re-paired (surrogates)"
    )
    unique_null: Optional[dict[str, float | int]] = Field(None, description="the unique SyncR²'s surrogate null: median, p95 (95th percentile), n")
    unique_asymmetry: list[Asymmetry] = Field(
        default_factory=list, description="who leads in the unique share: each pair of opposite directions' paired difference"
    )

    def line(self, few: str | None = None) -> str:
        """The unique SyncR² with its interval and p-value (left out with ``few``: too few test
        episodes for them to hold), then the shared share and the baseline alone, as the console
        and the report write it.

        >>> PartitionSummary(features=["observer"], layer="same", values={"unique": 0.1, "shared": 0.2, "baseline": 0.3, "joint": 0.4},
        ...     ci95={"unique": (0.05, 0.15)}, unique_p_value=0.01).line()
        'unique SyncR² 0.1000 [0.0500, 0.1500], p 0.0100; shared 0.2000, baseline alone 0.3000, both 0.4000'
        """
        v, ci = {q: "n/a" if x is None else f"{x:.4f}" for q, x in self.values.items()}, self.ci95.get("unique")
        ci_text = f" [{ci[0]:.4f}, {ci[1]:.4f}]" if ci and not few else ""
        p_text = f", p {self.unique_p_value:.4f}" if self.unique_p_value is not None and not few else ""
        return f"unique SyncR² {v['unique']}{ci_text}{p_text}; shared {v['shared']}, baseline alone {v['baseline']}, both {v['joint']}"


class BootstrapInfo(BaseModel):
    replicates: int
    unit: str = "episode"
    scheme: str = Field("multinomial", description="how replicates weight episodes (nsync.stats.bootstrap.SCHEME); runs pair only within a scheme")
    seed: int = 0
    method: str = Field("basic", description="interval method (see nsync.stats.bootstrap.interval)")
    test_episodes: Optional[int] = Field(None, description="fewest test episodes of any (split seed, direction)")
    file: str = RunFolder.BOOTSTRAP


class FitResult(BaseModel):
    """What ``python -m nsync.fit`` measured; ``results.json`` is its JSON.

    >>> from nsync.testing import golden_fit
    >>> result = FitResult.load(golden_fit())            # a small fit on a planted cache
    >>> round(result.directions["A->B"].sync_r2, 1), result.directions["B->A"].sync_r2   # planted: A->B only
    (0.3, 0.0)
    """

    model_config = ConfigDict(extra="forbid")

    schema_version: int = SCHEMA_VERSION
    probe: str
    split: str
    lag: int
    condition: str
    target_condition: str
    pairing: str = Field(description="where targets came from (a registered nsync.data.pairs.PAIRINGS name)")
    models: dict[str, str] = Field(description="{'source': model, 'target': model}")
    source_layers: list[int]
    target_layers: list[int]
    source_layer_names: list[str] = Field(description="e.g. embed, blocks.3.resid_post, or an imported tree's names")
    target_layer_names: list[str]
    source_depth: list[float] = Field(description="each source layer's relative depth: 0 the embedding output, 1 the last block")
    target_depth: list[float]
    directions: dict[str, DirectionResult]
    skipped_directions: dict[str, str] = {}
    sync_r2: float = Field(description="raw SyncR², mean over split seeds; the headline is sync_r2_bias_corrected with sync_r2_ci95 (format_sync_r2)")
    sync_r2_std: float = Field(description="std of the raw SyncR² over split seeds")
    sync_r2_unclipped: Optional[float] = None
    sync_r2_ci95: Optional[tuple[float, float]] = Field(None, description="95% basic bootstrap interval over test episodes")
    sync_cka: Optional[float] = Field(
        None, description="debiased linear CKA: best target per source layer, mean over source layers, directions and split seeds"
    )
    sync_r2_bias_corrected: Optional[float] = Field(None, description="SyncR² minus the bias its bootstrap replicates show (the interval's centre)")
    target_choice: str = Field("test", description="how each source layer's target layer was chosen: validation or test")
    sync_r2_test_picked: Optional[float] = Field(None, description="SyncR² by the paper's rule (best test R² per source layer), for comparison")
    fingerprint: Optional[str] = Field(
        None, description="hash of the fit config and the cache's content: a stored result is reused only when it matches"
    )
    partition: dict[str, PartitionSummary] = Field(default_factory=dict, description="baseline -> the source's unique and shared shares beside it")
    sync_r2_p_value: Optional[float] = Field(None, description="permutation p-value of SyncR² against surrogate re-pairings of the test rows")
    sync_r2_null: Optional[dict[str, float | int]] = Field(None, description="SyncR²'s surrogate null: median, p95 (95th percentile), n")
    surrogates: Optional[dict[str, Any]] = Field(None, description="{'n', 'kind'} of the surrogates behind the p-values")
    bootstrap: Optional[BootstrapInfo] = None
    subspace: Optional[SubspaceResult] = Field(None, description="the communication subspace, mean over directions (subspace.max_rank)")
    asymmetry: list[Asymmetry] = Field(default_factory=list, description="who leads: each pair of opposite directions' paired SyncR² difference")
    test_episodes: Optional[int] = Field(None, description="fewest test episodes of any (split seed, direction)")
    few_test_episodes: Optional[str] = Field(
        None,
        description="why the intervals and p-values are stored but not printed: fewer test episodes than they need to hold their "
        "nominal rates (nsync.stats.sample_size.MIN_TEST_EPISODES); null when there are enough",
    )
    reply_flags: Optional[dict[str, Any]] = Field(
        None, description="the cache's replies and how many carry each flag (nsync.cache.ActivationCache.reply_flags)"
    )
    splits: dict[str, dict[str, Any]] = Field(description="split seed -> direction -> episodes, scenarios, characters per side")
    analyses: dict[str, Any] = Field(
        default_factory=dict, description="results of analyses registered outside nsync (nsync.fit.analyses.ANALYSES), by name"
    )
    config: dict[str, Any]
    seconds: float

    def save(self, folder: str | Path) -> Path:
        """Write ``folder/results.json`` atomically (a reader never sees half a file)."""
        return RunFolder(folder).write_results(self.model_dump_json(indent=1))

    def agent_matrix(self, value: str = "sync_r2"):
        """``value`` of every agent-pair direction (``i->j``) as an N x N table: rows are source
        agents, columns target agents; NaN on the diagonal and for pairs not fitted.

        >>> from nsync.testing import golden_fit
        >>> FitResult.load(golden_fit()).agent_matrix().shape   # a dyad's A->B and B->A are no agent pairs
        (0, 0)
        """
        import pandas as pd

        from nsync.data.pairs import Direction

        cells = {}
        for name, d in self.directions.items():
            direction = Direction.parse(name)
            if not direction.by_position:
                cells[(direction.source, direction.target)] = getattr(d, value)
        n = max((max(k) for k in cells), default=-1) + 1
        matrix = np.full((n, n), np.nan)
        for (i, j), v in cells.items():
            matrix[i, j] = np.nan if v is None else v
        return pd.DataFrame(matrix, index=pd.Index(range(n), name="source agent"), columns=pd.Index(range(n), name="target agent"))

    def headline(self, digits: int = 3) -> str:
        """The run's SyncR² as :func:`format_sync_r2` writes it.

        >>> from nsync.testing import golden_fit
        >>> FitResult.load(golden_fit()).headline()   # a small planted fit: 8 test episodes per split seed
        'SyncR² 0.160 (raw; no interval: only 8 test episodes, fewer than the 20 its intervals and p-values need (planted problems: experiments/benchmarks/few_test_episodes.py))'
        """
        return format_sync_r2(self.sync_r2, self.sync_r2_bias_corrected, self.sync_r2_ci95, digits, self.few_test_episodes)

    @classmethod
    def load(cls, path: str | Path) -> FitResult:
        """Read a run folder's (or a file's) results; a clear error for a missing or other file."""
        path = Path(path)
        if path.is_dir():
            path = RunFolder(path).results
        if not path.is_file():
            raise NsyncError(f"{path.parent} holds no {RunFolder.RESULTS}; run python -m nsync.fit first")
        raw = json.loads(path.read_text())
        if raw.get("schema_version") != SCHEMA_VERSION:
            raise NsyncError(
                f"{path} has results schema version {raw.get('schema_version')}, this nsync reads version {SCHEMA_VERSION}; "
                f"re-run python -m nsync.fit with overwrite=true"
            )
        try:
            return cls.model_validate(raw)
        except ValidationError as err:
            raise NsyncError(
                f"{path} does not match results schema version {SCHEMA_VERSION} ({err.error_count()} field errors, "
                f"first: {err.errors()[0]['loc']}: {err.errors()[0]['msg']}); re-run python -m nsync.fit with overwrite=true"
            ) from None

    def fit_config(self) -> FitConfig:
        """The config this result was fitted with, as the typed :class:`~nsync.fit.config.FitConfig`."""
        from nsync.config import from_dict
        from nsync.fit.config import FitConfig

        try:
            return from_dict(FitConfig, self.config)
        except NsyncError as err:
            raise NsyncError(f"{err} (a result fitted by another version of nsync: refit it)") from None

    @classmethod
    def from_fits(
        cls, cfg: FitConfig, fits: list[DirectionFit], skipped: dict[str, str], seconds: float, analyses: Sequence[Pooling]
    ) -> tuple[FitResult, Artefacts]:
        """The run's result and artefacts from every (split seed, direction) fit: each direction
        over its split seeds, the run as the mean over directions then split seeds; then each
        analysis pools its outputs into both (:mod:`nsync.fit.analyses`)."""
        from nsync.config import to_dict

        lay = fits[-1].layout  # every fit of a run has the same models and layers
        if other := next((f for f in fits if f.layout != lay), None):
            raise NsyncError(
                f"split seed {other.seed}, {other.direction} fitted other layers than the rest of the run ({other.layout['target_layer_names']} "
                f"against {lay['target_layer_names']}; e.g. a target layer constant in some pairs only): name them with data.target_layers"
            )
        mine = {d: [f for f in fits if f.direction == d] for d in cfg.data.directions if any(f.direction == d for f in fits)}
        directions = {d: DirectionResult.of_seeds(fs, lay["source_layers"], lay["target_layers"]) for d, fs in mine.items()}
        seeds_sync = np.mean([d.sync_r2_per_seed for d in directions.values()], axis=0)
        unclipped = [d.sync_r2_unclipped for d in directions.values() if d.sync_r2_unclipped is not None]
        result = cls(
            **lay, probe=cfg.probe, split=cfg.data.split, lag=cfg.data.lag, condition=cfg.data.condition, pairing=cfg.data.pairing,
            directions=directions, skipped_directions=skipped, sync_r2=float(np.mean(seeds_sync)), sync_r2_std=float(np.std(seeds_sync)),
            target_choice="validation" if all(f.target_choice == "validation" for f in fits) else "test",
            sync_r2_test_picked=float(np.mean([d.sync_r2_test_picked for d in directions.values()])),
            sync_r2_unclipped=nan_to_none(float(np.mean(unclipped or [np.nan]))),
            splits={str(s): {f.direction: f.split_ids for f in fits if f.seed == s} for s in dict.fromkeys(f.seed for f in fits)},
            test_episodes=min(f.test_episodes for f in fits), few_test_episodes=few_test_episodes(min(f.test_episodes for f in fits)),
            config=to_dict(cfg), seconds=seconds,
        )  # fmt: skip
        artefacts = Artefacts()
        for analysis in analyses:
            for d, fs in mine.items():
                if all(f.outputs.get(analysis.name) is not None for f in fs):
                    analysis.summarise(directions[d], [f.outputs[analysis.name] for f in fs], result, cfg)
            if all(f.outputs.get(analysis.name) is not None for f in fits):
                analysis.pool(result, [(f.seed, f.outputs[analysis.name]) for f in fits], artefacts, cfg)
        return result, artefacts


class Pooling(Protocol):
    """How an analysis of :mod:`nsync.fit.analyses` pools its outputs (as :meth:`FitResult.from_fits` sees it)."""

    name: str

    def summarise(self, direction: DirectionResult, outputs: list[Any], result: FitResult, cfg: FitConfig) -> None: ...

    def pool(self, result: FitResult, per_fit: list[tuple[int, Any]], artefacts: Artefacts, cfg: FitConfig) -> None: ...


def layer_profile(result: FitResult):
    """One row per (direction, source layer): its relative depth, the best target layer's R² (mean
    over split seeds) and relative depth, and that cell's CKA, so models of different depths can
    be compared ("strongest in the middle layers").

    >>> from nsync.testing import golden_fit
    >>> layer_profile(FitResult.load(golden_fit())).columns.tolist()[:4]
    ['direction', 'source_layer', 'source_depth', 'best_target_layer']
    """
    import pandas as pd

    rows = []
    for direction, d in result.directions.items():
        r2 = d.r2_matrix
        cka = None if d.cka is None else np.array(d.cka, dtype=float)
        chosen = d.r2_by_source_layer
        for i, layer in enumerate(result.source_layers):
            if not np.isfinite(r2[i]).any():
                continue
            # The target chosen in most split seeds.
            j = modal_target(d, i, result.target_layers)
            rows.append(
                {
                    "direction": direction,
                    "source_layer": layer,
                    "source_depth": result.source_depth[i],
                    "best_target_layer": result.target_layers[j],
                    "best_target_depth": result.target_depth[j],
                    "best_r2": float(chosen[i]),
                    "best_r2_std": float(np.array(d.r2_std, dtype=float)[i, j]),
                    "best_cka": float(np.nanmax(cka[i])) if cka is not None and np.isfinite(cka[i]).any() else np.nan,
                }
            )
    return pd.DataFrame(rows)


def modal_target(d: DirectionResult, i: int, target_layers: list[int]) -> int:
    """Position of the target layer chosen for source position ``i`` in most split seeds."""
    picks = [pick for seed in d.chosen_target_layer if (pick := seed[i]) is not None]
    return target_layers.index(max(set(picks), key=picks.count)) if picks else 0
