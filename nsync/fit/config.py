"""``FitConfig``: every key of ``python -m nsync.fit`` (``--help`` prints them)."""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass, field
from typing import Any

from omegaconf import MISSING

from nsync.config import to_dict
from nsync.data.config import DataConfig
from nsync.errors import NsyncError

#: How a source layer's target layer is chosen (``target_choice``).
TARGET_CHOICES = ("validation", "test")
#: Surrogate kinds of the permutation p-values (:mod:`nsync.stats.surrogates`).
SURROGATE_KINDS = ("pseudo_dyad", "circular_shift")

# A leaf: the config validates its own values and imports nothing from the fit stage (which
# checks ``probe=`` against its registry when a fit starts) and nothing heavy (no torch), so
# ``nsync fit --help`` is quick.


@dataclass
class PartitionConfig:
    baselines: list[str] = field(
        default_factory=list,
        metadata={
            "help": "baselines to partition against, each one feature or several joined by + (each feature its own ridge penalty, partition.feature_ratios): observer, own_past (the target agent's own previous state), context, text:EMBEDDER or a re-read model (e.g. smollm2-135m@untrained); e.g. [observer, text:all-minilm-l6-v2, own_past, observer+text:all-minilm-l6-v2+own_past]"
        },
    )
    layer: str = field(
        default="same", metadata={"help": "layer of layered baseline features: same (the source layer's relative depth) or a layer index"}
    )
    ratios: list[float] = field(
        default_factory=lambda: [0.01, 0.1, 1.0, 10.0, 100.0],
        metadata={
            "help": "band penalty ratios (the baseline's penalty over the source's, after bringing each of its features to the source's total variance; a joined baseline's first feature, the others at partition.feature_ratios of it), chosen per cell on validation together with affine.alphas"
        },
    )
    feature_ratios: list[float] = field(
        default_factory=lambda: [0.01, 0.1, 1.0, 10.0, 100.0],
        metadata={
            "help": "in a joined baseline (a+b), each feature's penalty over the first feature's (after bringing each to the same total variance): every combination is tried per cell on validation, beside each of partition.ratios"
        },
    )

    def __post_init__(self) -> None:
        if self.baselines:
            from nsync.data.bands import Baseline

            for name in self.baselines:
                Baseline.parse(name)
        if self.layer != "same" and not str(self.layer).lstrip("-").isdigit():
            raise NsyncError(f"partition.layer must be 'same' or a layer index, got '{self.layer}'")
        for key in ("ratios", "feature_ratios"):
            values = getattr(self, key)
            if not values or any(r <= 0 for r in values):
                raise NsyncError(f"partition.{key} must list positive values, got {values}")


@dataclass
class SurrogateConfig:
    n: int = field(default=200, metadata={"help": "surrogates per fit for the permutation p-values of SyncR² and the unique share (0: none)"})
    kind: str = field(
        default="pseudo_dyad",
        metadata={"help": "pseudo_dyad (sources of other episodes at the same utterance index) or circular_shift (within each run)"},
    )

    def __post_init__(self) -> None:
        if self.kind not in SURROGATE_KINDS:
            raise NsyncError(f"surrogates.kind must be one of {SURROGATE_KINDS}, got '{self.kind}'")
        if self.n < 0:
            raise NsyncError(f"surrogates.n must be at least 0, got {self.n}")


@dataclass
class SubspaceConfig:
    max_rank: int = field(
        default=16,
        metadata={
            "help": "communication subspace: test R² of the reduced-rank map at every rank up to this one and at full rank (affine probe; 0: none)"
        },
    )
    share: float = field(
        default=0.9, metadata={"help": "the dimensionality of synchrony: the smallest rank reaching this share of the full rank's R²"}
    )
    bootstrap: int = field(
        default=200,
        metadata={
            "help": "the first this many of the fit's bootstrap replicates give the subspace's intervals (each costs an R² at every rank; 0: no intervals)"
        },
    )

    def __post_init__(self) -> None:
        if self.max_rank < 0:
            raise NsyncError(f"subspace.max_rank must be at least 0 (0: no subspace analysis), got {self.max_rank}")
        if not 0 < self.share <= 1:
            raise NsyncError(f"subspace.share must be above 0 and at most 1 (e.g. 0.9), got {self.share}")
        if self.bootstrap < 0:
            raise NsyncError(f"subspace.bootstrap must be at least 0 (0: no intervals), got {self.bootstrap}")


@dataclass
class AffineConfig:
    alphas: list[float] = field(default_factory=lambda: [0.1], metadata={"help": "ridge alpha (the paper: 0.1); several: chosen on validation data"})
    alpha_per: str = field(default="cell", metadata={"help": "with several alphas: one per (source, target layer) cell, or one per source layer"})
    scale: bool = field(default=False, metadata={"help": "standardise inputs by their training std before the ridge"})
    matmul_dtype: str = field(default="float32", metadata={"help": "batch products of centred data in float32 (sums always float64) or float64"})
    solver: str = field(
        default="auto",
        metadata={
            "help": "primal (form X^T Y), dual (predict through the training rows: the same numbers, less arithmetic where the rows are fewer than the hidden size; under DDP each process gathers every training row) or auto (the cheaper by shape, per chunk of source layers)"
        },
    )


@dataclass
class MLPConfig:
    hidden: int = field(default=256, metadata={"help": "hidden width"})
    depth: int = field(default=1, metadata={"help": "hidden layers"})
    dropout: float = field(default=0.1, metadata={"help": "dropout after each hidden layer"})
    weight_decay: float = field(default=1e-4, metadata={"help": "Adam weight decay"})
    lr: float = field(default=1e-3, metadata={"help": "Adam learning rate"})
    max_epochs: int = field(default=200, metadata={"help": "most training epochs"})
    patience: int = field(default=10, metadata={"help": "early stopping patience on val/r2 (epochs)"})
    batch_size: int = field(default=256, metadata={"help": "rows per training batch"})

    def __post_init__(self) -> None:  # checked whatever the probe: a value is wrong or right on its own
        for key, low, allowed in (("hidden", 1, "at least 1"), ("depth", 0, "at least 0 (0: a linear probe)"), ("batch_size", 1, "at least 1")):
            if getattr(self, key) < low:
                raise NsyncError(f"mlp.{key} must be {allowed}, got {getattr(self, key)}")
        if self.max_epochs < 1 and self.max_epochs != -1:
            raise NsyncError(f"mlp.max_epochs must be at least 1, or -1 (no limit: until early stopping), got {self.max_epochs}")
        if self.patience < 0:
            raise NsyncError(f"mlp.patience must be at least 0 (epochs without improvement before stopping), got {self.patience}")
        if not 0 <= self.dropout < 1:
            raise NsyncError(f"mlp.dropout must be a probability from 0 up to, not including, 1, got {self.dropout}")
        if self.lr <= 0:
            raise NsyncError(f"mlp.lr must be positive, got {self.lr}")
        if self.weight_decay < 0:
            raise NsyncError(f"mlp.weight_decay must be at least 0, got {self.weight_decay}")


@dataclass
class LoggerConfig:
    kind: str = field(default="wandb", metadata={"help": "wandb or none"})
    project: str = field(default="nsync", metadata={"help": "W&B project"})
    mode: str = field(default="auto", metadata={"help": "auto (online only with WANDB_API_KEY set), offline or online"})


@dataclass
class FitConfig:
    """Fit synchrony probes on an activation cache."""

    out: str = field(default=MISSING, metadata={"help": "run folder for results.json, plots, weights and the W&B run"})
    probe: str = field(
        default="affine", metadata={"help": "a registered probe type: affine (closed-form ridge), mlp, or your own (nsync.fit.probe_types)"}
    )
    probe_options: dict[str, Any] = field(default_factory=dict, metadata={"help": "options of a probe type registered outside nsync (free-form)"})
    data: DataConfig = field(default_factory=DataConfig)
    affine: AffineConfig = field(default_factory=AffineConfig)
    mlp: MLPConfig = field(default_factory=MLPConfig)
    logger: LoggerConfig = field(default_factory=LoggerConfig)
    partition: PartitionConfig = field(default_factory=PartitionConfig)
    surrogates: SurrogateConfig = field(default_factory=SurrogateConfig)
    subspace: SubspaceConfig = field(default_factory=SubspaceConfig)
    seed: int = field(default=0, metadata={"help": "seed for weight init and shuffling (seed_everything)"})
    time_bins: int = field(
        default=0,
        metadata={
            "help": "time course: SyncR² and the unique share by source utterance index, each index its own bin (0), in this many bins of consecutive indices, or none (-1)"
        },
    )
    target_choice: str = field(
        default="validation",
        metadata={
            "help": "how each source layer's best target layer is chosen: validation (on held-out training episodes, so the test R² that SyncR² reports is not the one it was picked on) or test (the paper's rule: the best test R², optimistic; the bootstrap re-picks it in every replicate)"
        },
    )
    bootstrap: int = field(default=1000, metadata={"help": "bootstrap replicates over episodes for SyncR²'s 95% interval (0: none)"})
    cka: bool = field(
        default=True, metadata={"help": "also compute the debiased linear CKA of every (source, target layer) pair on the test side (no fitting)"}
    )
    accelerator: str = field(default="cpu", metadata={"help": "Lightning accelerator: cpu, gpu or auto"})
    devices: int = field(default=1, metadata={"help": "devices (DDP when more than one; the affine fit is exact under DDP)"})
    memory_gb: float = field(
        default=4.0,
        metadata={"help": "memory for one chunk of source layers fitted together (sums, solutions, per-episode sums); the data come on top"},
    )
    overwrite: bool = field(default=False, metadata={"help": "replace the results of an earlier run in the same out folder"})
    save_weights: bool = field(default=True, metadata={"help": "save each source layer's best-target weights of the first split seed"})
    progress: bool = field(default=True, metadata={"help": "show a progress bar"})

    def __post_init__(self) -> None:
        from nsync.probes.ridge import ALPHA_CHOICES  # here: it brings torch, and --help must not

        if self.affine.alpha_per not in ALPHA_CHOICES:
            raise NsyncError(f"affine.alpha_per must be one of {ALPHA_CHOICES}, got '{self.affine.alpha_per}'")
        if not self.affine.alphas or any(a < 0 for a in self.affine.alphas):
            raise NsyncError(f"affine.alphas must list non-negative values, got {self.affine.alphas}")
        if self.affine.solver not in ("auto", "primal", "dual"):
            raise NsyncError(f"affine.solver must be auto, primal or dual, got '{self.affine.solver}'")
        if self.affine.matmul_dtype not in ("float32", "float64"):
            raise NsyncError(f"affine.matmul_dtype must be float32 or float64, got '{self.affine.matmul_dtype}'")
        if self.partition.baselines and self.probe != "affine":
            raise NsyncError(f"partition.baselines needs probe=affine (banded ridge), got probe={self.probe}")
        if self.partition.baselines and self.target_choice != "validation":
            raise NsyncError("partition.baselines chooses band penalties and target layers on validation episodes; set target_choice=validation")
        if self.target_choice not in TARGET_CHOICES:
            raise NsyncError(f"target_choice must be one of {TARGET_CHOICES}, got '{self.target_choice}'")
        self._check_validation_share()
        if self.bootstrap < 0:
            raise NsyncError(f"bootstrap must be at least 0 (0: no interval), got {self.bootstrap}")
        if self.time_bins < -1:
            raise NsyncError(f"time_bins must be -1 (no time course), 0 (each utterance index its own bin) or a number of bins, got {self.time_bins}")
        if self.memory_gb <= 0:
            raise NsyncError(f"memory_gb must be positive, got {self.memory_gb}")
        if not 0 <= self.seed < 2**32:
            raise NsyncError(f"seed must be from 0 to 2**32 - 1 (what seed_everything accepts), got {self.seed}")
        if self.devices < 1:
            raise NsyncError(f"devices must be at least 1 (more than 1: DDP), got {self.devices}")
        if self.logger.kind not in ("wandb", "none"):
            raise NsyncError(f"logger.kind must be wandb or none, got '{self.logger.kind}'")
        if self.logger.mode not in ("auto", "offline", "online"):
            raise NsyncError(f"logger.mode must be auto, offline or online, got '{self.logger.mode}'")

    def _check_validation_share(self) -> None:
        """``data.val_size=0`` holds out no validation episodes: an error where a built-in choice is made on them."""
        if self.data.val_size > 0:
            return
        reasons = [
            (self.probe == "mlp", "probe=mlp stops early on the validation R²", ""),
            (self.probe == "affine" and len(self.affine.alphas) > 1, f"affine.alphas={list(self.affine.alphas)} picks its alpha on validation", ""),
            (bool(self.partition.baselines), "partition.baselines chooses band penalties on validation", ""),
            (self.target_choice == "validation", "target_choice=validation chooses target layers on validation", ", or set target_choice=test"),
        ]
        for applies, why, other_fix in reasons:
            if applies:
                raise NsyncError(
                    f"data.val_size={self.data.val_size} holds out no validation episodes, but {why}; set data.val_size above 0 (e.g. 0.1){other_fix}"
                )


def resolve_out(cfg: FitConfig) -> str:
    """``out`` with ``{hash}`` replaced by a short hash of the rest of the config (sweeps use it
    to give every grid point its own folder)."""
    if "{hash}" not in cfg.out:
        return cfg.out
    d = to_dict(cfg)
    d.pop("out")
    return cfg.out.replace("{hash}", hashlib.sha256(json.dumps(d, sort_keys=True).encode()).hexdigest()[:10])
