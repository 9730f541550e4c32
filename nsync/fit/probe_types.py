"""Probe types: how a kind of probe is built and trained for a chunk of source layers.

``probe=NAME`` in the fit config picks a registered :class:`ProbeType`; the fit loop only calls
its three methods, so a new probe is one class plus ``@PROBE_TYPES.register("name")``
(``docs/extending.md``). The module it returns must meet the test contract of
:class:`nsync.probes.metrics.TestR2Mixin`: after ``trainer.test`` its ``results``
(:class:`nsync.probes.metrics.ProbeResults`) hold ``test_r2`` and ``test_r2_weighted``
(``[sources * targets]``, source-major) and ``episode_sums`` (per test episode ``n``, ``s1``, ``s2``
and ``sse`` ``[episodes, sources, targets, dims]``); optional: ``alpha`` (``[sources, targets]``,
reported), ``val_r2`` (``[sources, targets]``, validation R²: with ``target_choice=validation``
each source layer's target layer is chosen on it) and ``weights(source, target) -> (W, b)`` (saved).
Options of a new probe type go in ``probe_options`` (a free-form mapping).

Each method gets the run's :class:`nsync.fit.config.FitConfig` as ``cfg`` (a leaf: the fit
checks ``probe=`` against :data:`PROBE_TYPES` with :func:`check_probe` before it reads any data).
"""

from __future__ import annotations

import copy
import logging
from collections.abc import Callable
from dataclasses import replace
from typing import TYPE_CHECKING, Any, Protocol

from lightning.pytorch.callbacks import Callback, EarlyStopping

from nsync.data.bands import Baseline
from nsync.errors import NsyncError, warn_once
from nsync.fit.config import FitConfig
from nsync.fit.penalties import max_band_combinations
from nsync.probes import AffineProbe, MLPProbe
from nsync.probes.affine import SumsDDPStrategy
from nsync.registry import Registry

if TYPE_CHECKING:
    import lightning as L

    from nsync.data import SynchronyDataModule


class ProbeType(Protocol):
    """A kind of synchrony probe, as the fit loop sees it."""

    def needs_validation(self, cfg: FitConfig) -> bool:
        """Whether something is chosen on validation data (then a validation part is held out)."""

    def source_chunks(self, cfg: FitConfig, dm: SynchronyDataModule) -> list[list[int]]:
        """Positions of the source axis fitted together, chunk by chunk."""

    def fit(self, cfg: FitConfig, dm: SynchronyDataModule, trainer: Callable[..., L.Trainer], log_prefix: str):
        """Build, train and ``trainer(...).test`` a probe on the sources ``dm`` serves; return it.
        ``trainer(**kwargs)`` makes a Lightning Trainer with the run's accelerator, devices and
        logger (kwargs: ``max_epochs``, ``callbacks``, ``strategy``)."""


log = logging.getLogger("nsync.fit")

#: Registered probe types, by name.
PROBE_TYPES: Registry[type[ProbeType]] = Registry("probe type")


def check_probe(name: str) -> None:
    """A clear error for ``probe=`` naming no registered probe type."""
    if name not in PROBE_TYPES:
        raise NsyncError(f"probe must be one of {PROBE_TYPES.names()}, got '{name}'")


def probe_type(name: str) -> ProbeType:
    """The registered probe type ``name``, ready to use."""
    check_probe(name)
    return PROBE_TYPES.get(name)()


@PROBE_TYPES.register("affine")
class Affine:
    """Closed-form ridge (:class:`nsync.probes.AffineProbe`): one pass over the data, as many
    source layers per chunk as ``memory_gb`` holds, exact under DDP (sums all-reduced)."""

    def needs_validation(self, cfg: FitConfig) -> bool:
        # the partition's band penalty ratios are chosen on validation episodes too
        return len(cfg.affine.alphas) > 1 or cfg.target_choice == "validation" or bool(cfg.partition.baselines)

    def source_chunks(self, cfg: FitConfig, dm: SynchronyDataModule) -> list[list[int]]:
        n = len(dm.source_layers)
        size = max(1, min(n, int(cfg.memory_gb * 2**30 // self.bytes_per_source(cfg, dm))))
        return [list(range(i, min(i + size, n))) for i in range(0, n, size)]

    def bytes_per_source(self, cfg: FitConfig, dm: SynchronyDataModule) -> int:
        """What one more source layer in a chunk costs. Primal: float32 ``X^T Y`` (with validation
        also the solution's copy and the validation part's sums). Dual: the source's training rows
        as stored. Both: float64 ``d x d`` (dual with fewer rows: ``n x n``) matrices per band
        penalty ratio combination (three for an eigendecomposition, one plus an inverse per alpha otherwise),
        and float64 squared errors per test episode and per (alpha, combination) on validation. The dual's target rows (the same for every chunk size) are not counted."""
        from nsync.probes.ridge import INVERSE_UP_TO

        outputs = len(dm.target_layers) * dm.d_out
        rows = dm.n("fit") + dm.n("val")
        n_alphas = len(cfg.affine.alphas)
        ratios = max_band_combinations(cfg.partition)
        scores = 8 * outputs * (dm.n_test_episodes + n_alphas * ratios)
        # the joint fit's design: the source and each baseline feature, each up to about the source's width
        wide = 1 + max((len(Baseline.parse(b).features) for b in cfg.partition.baselines), default=0)
        d = dm.d_in * wide
        dual = self.solver(cfg, dm) == "dual"
        matrices = 3 if n_alphas > INVERSE_UP_TO else 1 + n_alphas
        decomposition = ratios * matrices * 8 * (min(rows, d) if dual else d) ** 2
        if dual:  # rows as stored; a partition's joint design is float32 (the baselines' features)
            return (4 if cfg.partition.baselines else dm.x.element_size()) * rows * d + decomposition + scores
        return (dm.d_in * outputs * (12 if self.needs_validation(cfg) else 4) + scores) * wide + decomposition

    @staticmethod
    def solver(cfg: FitConfig, dm: SynchronyDataModule) -> str:
        """``affine.solver``, with ``auto`` resolved by the shape of this chunk's fit."""
        from nsync.probes.ridge import choose_solver

        if cfg.affine.solver != "auto":
            return cfg.affine.solver
        ratios = len(dm.bands.ratios) if dm.bands is not None else 1
        predicted = dm.n("val") + dm.n("test")
        outputs = len(dm.target_layers) * dm.d_out
        return choose_solver(dm.n("fit") + dm.n("val"), dm.d_in, outputs, predicted, len(cfg.affine.alphas) * ratios, n_fewest=dm.n("fit"))

    def fit(self, cfg: FitConfig, dm: SynchronyDataModule, trainer: Callable[..., L.Trainer], log_prefix: str):
        a, sources = cfg.affine, dm.sources
        solver = self.solver(cfg, dm)
        rows = dm.n("fit") + dm.n("val")
        form = " (kernel form)" if solver == "dual" and rows < dm.d_in else ""
        how = "set" if cfg.affine.solver != "auto" else "chosen by shape"
        warn_once(
            log,
            ("solver", solver, form),  # once per solver a run uses, not per design shape (a partition has several)
            "affine solver: %s%s, %s (first for %d training rows of %d dimensions)",
            solver,
            form,
            how,
            rows,
            dm.d_in,
            level=logging.INFO,
        )
        probe = AffineProbe(
            dm.d_in,
            dm.d_out,
            len(dm.target_layers),
            alphas=a.alphas,
            scale=a.scale,
            x_shift=dm.x_mean[sources],
            y_shift=dm.y_mean,
            matmul_dtype=a.matmul_dtype,
            n_sources=len(sources),
            alpha_per=a.alpha_per,
            log_prefix=log_prefix,
            band_start=None if dm.bands is None else dm.bands.start,
            band_ratios=(1.0,) if dm.bands is None else dm.bands.ratios,
            band_reference="first" if dm.bands is None else dm.bands.reference,
            band_allowed=None if dm.bands is None else dm.bands.allowed,
            solver=solver,
        )
        # No gradients to synchronise: DDP's processes without its model wrapper.
        run = trainer(max_epochs=1, strategy=SumsDDPStrategy() if cfg.devices > 1 else "auto")
        dm = dm.as_stored()  # the probe converts batches itself; the dual keeps its rows as stored
        run.fit(probe, datamodule=dm)
        run.test(probe, datamodule=dm, verbose=False)
        return probe


@PROBE_TYPES.register("mlp")
class MLP:
    """A nonlinear probe (:class:`nsync.probes.MLPProbe`) trained with Adam, one source layer at a
    time, early stopping on validation R² and the best epoch's weights restored."""

    def needs_validation(self, cfg: FitConfig) -> bool:
        return True

    def source_chunks(self, cfg: FitConfig, dm: SynchronyDataModule) -> list[list[int]]:
        return [[i] for i in range(len(dm.source_layers))]

    def fit(self, cfg: FitConfig, dm: SynchronyDataModule, trainer: Callable[..., L.Trainer], log_prefix: str):
        m, (s,) = cfg.mlp, dm.sources
        probe = MLPProbe(
            dm.d_in,
            dm.d_out,
            len(dm.target_layers),
            hidden=m.hidden,
            depth=m.depth,
            dropout=m.dropout,
            lr=m.lr,
            weight_decay=m.weight_decay,
            x_mean=dm.x_mean[s],
            x_std=dm.x_std[s],
            y_mean=dm.y_mean,
            y_std=dm.y_std,
            log_prefix=log_prefix,
        )
        best = BestWeights(f"{log_prefix}val/r2")
        stop = EarlyStopping(monitor=f"{log_prefix}val/r2", mode="max", patience=m.patience)
        run = trainer(max_epochs=m.max_epochs, callbacks=[stop, best])
        dm = with_batch_size(dm, m.batch_size)
        run.fit(probe, datamodule=dm)
        best.restore(probe)
        probe.results.val_r2 = probe.val_r2_by_target.detach().cpu().clone()  # the best epoch's, on the CPU
        run.test(probe, datamodule=dm, verbose=False)
        return probe


def with_batch_size(dm: SynchronyDataModule, batch_size: int) -> SynchronyDataModule:
    """A view of ``dm`` that loads ``batch_size`` rows per batch."""
    view = copy.copy(dm)
    view.config = replace(dm.config, batch_size=batch_size)
    return view


class BestWeights(Callback):
    """Keeps the weights of the epoch with the best validation R² in memory (no checkpoint files)."""

    def __init__(self, monitor: str = "val/r2") -> None:
        self.monitor, self.best = monitor, -float("inf")
        self.state: dict[str, Any] | None = None

    def on_validation_end(self, trainer, module) -> None:
        score = trainer.callback_metrics.get(self.monitor)
        if score is not None and float(score) > self.best:
            self.best = float(score)
            self.state = {k: v.detach().clone() for k, v in module.state_dict().items()}

    def restore(self, module) -> None:
        if self.state is not None:
            module.load_state_dict(self.state)
