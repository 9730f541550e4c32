"""SyncR² and ``FitResult``: the typed, versioned content of a fit run's ``results.json``.

:class:`FitResult` is the only code that writes and reads ``results.json``; the controls,
analysis and report stages read a run with :meth:`FitResult.load`.
"""

from __future__ import annotations

import json
import os
import warnings
from pathlib import Path
from typing import Any, Optional

import numpy as np
from pydantic import BaseModel, ConfigDict, Field, ValidationError

from nsync.errors import NsyncError

#: Bumped whenever a field changes meaning or disappears; :meth:`FitResult.load` reads these and refuses others.
#: 3: SyncR² at target layers chosen on validation episodes (``target_choice``), episode-keyed bootstrap.
SCHEMA_VERSION = 3
READABLE_VERSIONS = (2, 3)
RESULTS_FILE = "results.json"

Matrix = list[list[Optional[float]]]  # [source layer][target layer]; null where R² is undefined


def sync_r2(r2: np.ndarray, clip: bool = True, chosen: np.ndarray | None = None) -> float:
    """SyncR² of one direction: per source layer one target layer's test R² (the one ``chosen``
    for it, by position, -1 for none; by default the best, the paper's rule), negatives clipped
    to 0 (unless ``clip=False``), averaged over source layers.

    >>> sync_r2(np.array([[0.2, 0.5], [-0.3, -0.1]]))
    0.25
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
    return float(np.nanmean(best)) if np.isfinite(best).any() else float("nan")  # no source layer has an R²


def row_max(r2: np.ndarray) -> np.ndarray:
    """Best value per row, ignoring NaN (targets with no variance); NaN for an all-NaN row."""
    out = np.full(r2.shape[0], np.nan)
    for i, row in enumerate(r2):
        if np.isfinite(row).any():
            out[i] = np.nanmax(row)
    return out


def at_chosen(r2: np.ndarray, chosen: np.ndarray) -> np.ndarray:
    """Each row's value at its chosen column (NaN where none was chosen, -1)."""
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


def nan_to_none(x):
    """Lists of floats with NaN as None (JSON has no NaN)."""
    if isinstance(x, list):
        return [nan_to_none(v) for v in x]
    return None if isinstance(x, float) and not np.isfinite(x) else x


def same_layer_r2(r2: np.ndarray, source_layers: list[int], target_layers: list[int]) -> float | None:
    """Mean R² of the pairs whose source and target layer have the same index (the diagonal)."""
    common = [(source_layers.index(layer), target_layers.index(layer)) for layer in source_layers if layer in target_layers]
    if not common:
        return None
    values = np.array([r2[i, j] for i, j in common], dtype=float)
    return float(np.nanmean(values)) if np.isfinite(values).any() else None


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
    n_excluded: int = Field(0, description="pairs left out because a reply carried a flag of data.exclude_flags (before the split)")
    cka: Optional[Matrix] = Field(None, description="debiased linear CKA per (source, target layer) on the test side, mean over split seeds")
    sync_cka: Optional[float] = Field(None, description="best target's CKA per source layer, mean over source layers and split seeds")
    target_choice: str = Field(
        "test", description="how each source layer's target layer was chosen: validation or test (files before schema 3: test)"
    )
    chosen_target_layer: Optional[list[list[Optional[int]]]] = Field(None, description="per split seed and source layer: the chosen target layer")
    chosen_r2_by_source_layer: Optional[list[Optional[float]]] = Field(
        None, description="per source layer: test R² at the chosen target layer, mean over split seeds"
    )
    sync_r2_test_picked: Optional[float] = Field(None, description="SyncR² by the paper's rule (best test R² per source layer), for comparison")
    partition: dict[str, PartitionDirection] = Field(default_factory=dict, description="baseline -> its variance partition (partition.baselines)")
    sync_r2_p_value: Optional[float] = Field(None, description="permutation p-value of this direction's SyncR² (surrogates)")
    sync_r2_ci95: Optional[tuple[float, float]] = Field(
        None, description="95% basic bootstrap interval of this direction's SyncR² over test episodes (joint draws over split seeds)"
    )
    sync_r2_bias_corrected: Optional[float] = Field(None, description="this direction's SyncR² minus the bias its bootstrap replicates show")
    time_course: Optional[TimeCourseResult] = Field(None, description="SyncR² by source utterance index (time_bins)")

    @property
    def r2_by_source_layer(self) -> np.ndarray:
        """Per source layer the R² that enters SyncR² (before clipping): at the chosen target layer
        (the best one in files before schema 3)."""
        values = self.best_r2_by_source_layer if self.chosen_r2_by_source_layer is None else self.chosen_r2_by_source_layer
        return np.array(values, dtype=float)

    @property
    def r2_matrix(self) -> np.ndarray:
        return np.array(self.r2, dtype=float)


class TimeCourseResult(BaseModel):
    """A figure by source utterance index (nsync.fit.timecourse), over split seeds."""

    model_config = ConfigDict(extra="forbid")

    utterance: list[int] = Field(description="each bin's first source utterance index")
    n_pairs: list[int] = Field(description="test pairs per bin (first split seed that has it)")
    value: list[Optional[float]]
    ci95: list[Optional[tuple[float, float]]] = Field(description="95% basic bootstrap interval per bin (episodes)")


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


class BootstrapInfo(BaseModel):
    replicates: int
    unit: str = "episode"
    scheme: str = Field("multinomial", description="how replicates weight episodes (nsync.fit.bootstrap.SCHEME); runs pair only within a scheme")
    seed: int = 0
    method: str = Field("basic", description="interval method (see nsync.fit.bootstrap.interval)")
    test_episodes: Optional[int] = Field(None, description="fewest test episodes of any (split seed, direction)")
    file: str = "bootstrap.npy"


class FitResult(BaseModel):
    """What ``python -m nsync.fit`` measured; ``results.json`` is its JSON.

    >>> result = FitResult.load("runs/quickstart/fit")      # doctest: +SKIP
    >>> result.sync_r2, result.directions["A->B"].best_target_layer[:3]   # doctest: +SKIP
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
    sync_r2: float
    sync_r2_std: float
    sync_r2_unclipped: Optional[float] = None
    sync_r2_ci95: Optional[tuple[float, float]] = Field(None, description="95% basic bootstrap interval over test episodes")
    sync_cka: Optional[float] = Field(
        None, description="debiased linear CKA: best target per source layer, mean over source layers, directions and split seeds"
    )
    sync_r2_bias_corrected: Optional[float] = Field(None, description="SyncR² minus the bias its bootstrap replicates show (the interval's centre)")
    target_choice: str = Field(
        "test", description="how each source layer's target layer was chosen: validation or test (files before schema 3: test)"
    )
    sync_r2_test_picked: Optional[float] = Field(None, description="SyncR² by the paper's rule (best test R² per source layer), for comparison")
    fingerprint: Optional[str] = Field(
        None, description="hash of the fit config and the cache's content: a stored result is reused only when it matches"
    )
    partition: dict[str, PartitionSummary] = Field(default_factory=dict, description="baseline -> the source's unique and shared shares beside it")
    sync_r2_p_value: Optional[float] = Field(None, description="permutation p-value of SyncR² against surrogate re-pairings of the test rows")
    sync_r2_null: Optional[dict[str, float | int]] = Field(None, description="SyncR²'s surrogate null: median, p95 (95th percentile), n")
    surrogates: Optional[dict[str, Any]] = Field(None, description="{'n', 'kind'} of the surrogates behind the p-values")
    bootstrap: Optional[BootstrapInfo] = None
    reply_flags: Optional[dict[str, Any]] = Field(
        None, description="the cache's replies and how many carry each flag (nsync.cache.ActivationCache.reply_flags)"
    )
    splits: dict[str, dict[str, Any]] = Field(description="split seed -> direction -> episodes, scenarios, characters per side")
    config: dict[str, Any]
    seconds: float

    def save(self, folder: str | Path) -> Path:
        """Write ``folder/results.json`` atomically (a reader never sees half a file)."""
        path = Path(folder) / RESULTS_FILE
        tmp = path.with_name(f".{RESULTS_FILE}.tmp")
        tmp.write_text(self.model_dump_json(indent=1))
        os.replace(tmp, path)
        return path

    def agent_matrix(self, value: str = "sync_r2"):
        """``value`` of every agent-pair direction (``i->j``) as an N x N table: rows are source
        agents, columns target agents; NaN on the diagonal and for pairs not fitted.

        >>> FitResult.load("runs/groups/fit").agent_matrix().round(3)   # doctest: +SKIP
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

    @classmethod
    def load(cls, path: str | Path) -> FitResult:
        """Read a run folder's (or a file's) results; a clear error for a missing or older file."""
        path = Path(path)
        if path.is_dir():
            path = path / RESULTS_FILE
        if not path.is_file():
            raise NsyncError(f"{path.parent} holds no {RESULTS_FILE}; run python -m nsync.fit first")
        raw = json.loads(path.read_text())
        version = raw.get("schema_version")
        if version not in READABLE_VERSIONS:
            raise NsyncError(
                f"{path} has results schema version {version}, this nsync reads versions {READABLE_VERSIONS}; "
                f"re-run python -m nsync.fit with overwrite=true"
            )
        try:
            return cls.model_validate(raw)
        except ValidationError as err:
            raise NsyncError(
                f"{path} does not match results schema version {SCHEMA_VERSION} ({err.error_count()} field errors, "
                f"first: {err.errors()[0]['loc']}: {err.errors()[0]['msg']}); re-run python -m nsync.fit with overwrite=true"
            ) from None


def _mean_best(matrices: list[np.ndarray]) -> float:
    """Mean over matrices of the mean over rows of each row's best finite value (NaN if none)."""
    with warnings.catch_warnings(action="ignore", category=RuntimeWarning):  # all-NaN rows and matrices
        return float(np.nanmean([np.nanmean(row_max(m)) for m in matrices]))


def layer_profile(result: FitResult):
    """One row per (direction, source layer): its relative depth, the best target layer's R² (mean
    over split seeds) and relative depth, and that cell's CKA, so models of different depths can
    be compared ("strongest in the middle layers").

    >>> layer_profile(FitResult.load("runs/quickstart/fit")).columns.tolist()[:4]   # doctest: +SKIP
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
            # The target chosen in most split seeds (the best mean test R² in files before schema 3).
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
    """Position of the target layer chosen for source position ``i`` in most split seeds (the best
    mean test R² in files before schema 3)."""
    if not d.chosen_target_layer:
        row = np.array(d.r2[i], dtype=float)
        return int(np.nanargmax(row)) if np.isfinite(row).any() else 0
    picks = [pick for seed in d.chosen_target_layer or [] if (pick := seed[i]) is not None]
    return target_layers.index(max(set(picks), key=picks.count)) if picks else 0


def summarise_direction(
    per_seed: list[np.ndarray],
    per_seed_weighted: list[np.ndarray],
    alphas: list[np.ndarray] | None,
    n_train: list[int],
    n_test: list[int],
    source_layers: list[int],
    target_layers: list[int],
    ckas: list[np.ndarray] | None = None,
    chosen: list[np.ndarray] | None = None,
    target_choice: str = "test",
) -> DirectionResult:
    """Mean and std over split seeds of the R² matrix and the figures derived from it; ``chosen``
    per split seed: each source layer's target layer (:func:`choose_targets`; default the best test R²)."""
    stack = np.stack(per_seed)  # [seeds, source, target]
    mean = stack.mean(0)
    chosen = [choose_targets(m) for m in stack] if chosen is None else chosen
    syncs = [sync_r2(m, chosen=c) for m, c in zip(stack, chosen, strict=True)]
    unclipped = [sync_r2(m, clip=False, chosen=c) for m, c in zip(stack, chosen, strict=True)]
    with warnings.catch_warnings(action="ignore", category=RuntimeWarning):  # a source layer with no target in any seed
        chosen_r2 = np.nanmean([at_chosen(m, c) for m, c in zip(stack, chosen, strict=True)], axis=0)
    same = [same_layer_r2(m, source_layers, target_layers) for m in stack]
    filled = np.where(np.isfinite(mean), mean, -np.inf)
    return DirectionResult(
        r2=nan_to_none(mean.tolist()),
        r2_std=nan_to_none(stack.std(0).tolist()),
        r2_variance_weighted=nan_to_none(np.mean(per_seed_weighted, 0).tolist()),
        alpha=None if alphas is None else [nan_to_none(a.tolist()) for a in alphas],
        sync_r2=float(np.mean(syncs)),
        sync_r2_std=float(np.std(syncs)),
        sync_r2_per_seed=syncs,
        sync_r2_unclipped=nan_to_none(float(np.mean(unclipped))),
        same_layer_r2=None if any(x is None for x in same) else float(np.mean([x for x in same if x is not None])),
        best_target_layer=[target_layers[j] for j in filled.argmax(1)],
        best_r2_by_source_layer=nan_to_none(row_max(mean).tolist()),
        n_train=n_train,
        n_test=n_test,
        cka=None if ckas is None else nan_to_none(np.mean(ckas, 0).tolist()),
        sync_cka=None if ckas is None else nan_to_none(_mean_best(ckas)),
        target_choice=target_choice,
        chosen_target_layer=[[target_layers[j] if j >= 0 else None for j in c] for c in chosen],
        chosen_r2_by_source_layer=nan_to_none(chosen_r2.tolist()),
        sync_r2_test_picked=float(np.mean([sync_r2(m) for m in stack])),
    )
