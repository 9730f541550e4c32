"""``AffineProbe``: closed-form ridge from one or many source layers to every target layer at once."""

from __future__ import annotations

from collections.abc import Iterator, Sequence

import lightning as L
import torch
from lightning.pytorch.strategies import DDPStrategy

from nsync.probes.metrics import LayerR2, TestR2Mixin
from nsync.probes.ridge import ALPHA_CHOICES, INVERSE_UP_TO, SOLVERS, RidgeSolution, RidgeStatistics, band_scales, choose_on_validation


class AffineProbe(TestR2Mixin, L.LightningModule):
    """Ridge regression with an unregularised bias, solved from streamed sums.

    Maps ``n_sources`` source layers (batches ``x`` ``[b, n_sources, d_in]``, or ``[b, d_in]`` for
    one) to ``n_targets`` target layers (``y`` ``[b, n_targets, d_out]``), every (source, target)
    pair at once. One training epoch accumulates ``X^T X`` and ``X^T Y`` centred at ``x_shift`` /
    ``y_shift`` (the training means; without them, the first training batch's means); under DDP
    the sums are added over ranks, so the solution is exact. ``matmul_dtype="float32"`` runs the
    products of centred data in float32 (``X^T X`` and the means are summed in float64).

    With several ``alphas`` the validation data choose one per (source, target layer) cell
    (``alpha_per="cell"``; ``"source"``: one per source layer from the mean over target layers),
    all from one eigendecomposition per source. Banded ridge (``band_start``: where each band after
    the first begins): each band is brought to the first band's total variance (``band_reference=
    "largest"``: all to the largest's), then penalised at a ratio of the first band's penalty; one
    combination of ratios per entry of ``band_ratios`` (a number per band after the first, or one
    number for all), chosen per cell on validation with the alpha (among those ``band_allowed``
    ``[combinations, n_sources, n_targets]`` allows, default all). ``solver="dual"`` predicts through the training rows
    instead of forming ``X^T Y`` (the same numbers; cheaper where the rows are fewer than the hidden
    size: :func:`nsync.probes.ridge.choose_solver`); it keeps the rows, and under DDP every process
    gathers all of them and predicts its own share of the rows it scores. With validation data (an alpha grid, or a target
    layer chosen on validation episodes) the validation R² at the chosen alpha is in
    ``results.val_r2`` ``[n_sources, n_targets]`` and the final solution is refitted on training
    plus validation data. Chosen alphas are in :attr:`alpha` ``[n_sources, n_targets]`` (NaN where a
    target layer has no variance on the validation side: nothing to choose from).

    >>> from nsync.data import SynchronyDataModule
    >>> from nsync.testing import example_cache
    >>> dm = SynchronyDataModule(str(example_cache()), direction="A->B")
    >>> dm.setup()
    >>> one = dm.for_sources([2])
    >>> probe = AffineProbe(d_in=4, d_out=4, n_targets=3, alphas=[1.0], x_shift=dm.x_mean[[2]], y_shift=dm.y_mean)
    >>> trainer = L.Trainer(max_epochs=1, logger=False, enable_progress_bar=False, enable_model_summary=False, enable_checkpointing=False)
    >>> trainer.fit(probe, datamodule=one.as_stored()); _ = trainer.test(probe, datamodule=one.as_stored(), verbose=False)
    >>> [round(r, 1) for r in probe.results.test_r2.tolist()]   # planted on every layer pair: R² 0.5 in the population
    [0.4, 0.4, 0.5]
    """

    # buffers (registered in __init__), declared for the type checker
    x_shift: torch.Tensor
    y_shift: torch.Tensor
    target_shift: torch.Tensor
    alpha: torch.Tensor
    ratio_index: torch.Tensor

    def __init__(
        self,
        d_in: int,
        d_out: int,
        n_targets: int = 1,
        alphas: tuple[float, ...] | list[float] = (0.1,),
        scale: bool = False,
        x_shift: torch.Tensor | None = None,
        y_shift: torch.Tensor | None = None,
        matmul_dtype: str = "float32",
        n_sources: int = 1,
        alpha_per: str = "cell",
        log_prefix: str = "",
        band_start: int | Sequence[int] | None = None,
        band_ratios: Sequence[float | Sequence[float]] = (1.0,),
        solver: str = "primal",
        band_reference: str = "first",
        band_allowed: torch.Tensor | None = None,
    ):
        super().__init__()
        if alpha_per not in ALPHA_CHOICES:
            raise ValueError(f"alpha_per must be one of {ALPHA_CHOICES}, got '{alpha_per}'")
        if solver not in SOLVERS:
            raise ValueError(f"solver must be one of {SOLVERS}, got '{solver}'")
        self.save_hyperparameters(ignore=["x_shift", "y_shift", "band_allowed"])
        self._band_allowed = band_allowed  # [combinations, S, T]: which band ratio combinations each cell may choose
        self.automatic_optimization = False
        self.alphas = [float(a) for a in alphas]
        # Without shifts, the first training batch's means are used (sums are taken around them).
        self._shift_from_data = x_shift is None or y_shift is None
        x_shift = torch.zeros(n_sources, d_in) if x_shift is None else x_shift
        y_shift = torch.zeros(n_targets, d_out) if y_shift is None else y_shift
        self.register_buffer("x_shift", x_shift.double().reshape(n_sources, d_in))
        self.register_buffer("y_shift", y_shift.double().reshape(n_targets, d_out))
        self.register_buffer("target_shift", self.y_shift.float())
        self.register_buffer("alpha", torch.full((n_sources, n_targets), self.alphas[0], dtype=torch.float64))
        # Band penalty ratio combinations to choose from: a number (one band after the first, or the
        # same ratio for every band) or one ratio per band after the first.
        self.ratios: list[float | tuple[float, ...]] = [1.0]
        if band_start is not None and not any(isinstance(r, Sequence) for r in band_ratios):
            self.ratios = [float(r) for r in band_ratios]  # type: ignore[arg-type]  # numbers, checked above
        elif band_start is not None:
            n_bands = len(band_start) if isinstance(band_start, Sequence) else 1
            self.ratios = [tuple(float(v) for v in r) if isinstance(r, Sequence) else (float(r),) * n_bands for r in band_ratios]
        # Position in self.ratios of each cell's band penalty ratios (banded ridge; 0 otherwise).
        self.register_buffer("ratio_index", torch.zeros((n_sources, n_targets), dtype=torch.int64))
        self.make_test_metric(n_targets, d_out, n_sources)  # and self.results
        self._train_stats: RidgeStatistics | None = None
        self._val_stats: RidgeStatistics | None = None
        # Solutions by position in self.ratios: every combination to validate, then those some cell chose.
        self._solutions: dict[int, RidgeSolution] = {}

    @property
    def _solution(self) -> RidgeSolution | None:
        return next(iter(self._solutions.values())) if self._solutions else None

    # -- prediction ------------------------------------------------------------------------------

    def _sources(self, x: torch.Tensor) -> torch.Tensor:
        return x.reshape(x.shape[0], self.hparams.n_sources, self.hparams.d_in)

    def source_predictions(self, x: torch.Tensor) -> Iterator[tuple[int, torch.Tensor]]:
        """``(source, predictions - target_shift)`` ``[b, n_targets, d_out]`` for each source."""
        if self._solution is None:
            raise RuntimeError("the probe is not fitted yet")
        hp = self.hparams
        xs = self._sources(x)
        alpha = torch.where(torch.isnan(self.alpha), torch.full_like(self.alpha, self.alphas[0]), self.alpha).cpu()
        ratio = self.ratio_index.cpu()
        xs = xs.to(self._solution.x_mean.device)
        for s in range(hp.n_sources):  # around the fitted mean, which is target_shift once solved
            ratios = torch.unique(ratio[s]).tolist()
            if len(ratios) == 1:
                pred = self._solutions[ratios[0]].predict_centred(xs[:, s], alpha[s], s)
            else:  # banded: each target layer from the solution of its band penalty ratio
                parts = [
                    self._solutions[r].predict_centred(xs[:, s], alpha[s], s, targets=torch.nonzero(ratio[s] == r).flatten().tolist()) for r in ratios
                ]
                pred = torch.stack(parts).sum(0)
            yield s, pred.view(x.shape[0], hp.n_targets, hp.d_out)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """``[b, d_in]`` -> ``[b, n_targets, d_out]``; ``[b, n_sources, d_in]`` -> ``[b, n_sources,
        n_targets, d_out]`` (float64)."""
        mean = self._solution.y_mean.view_as(self.y_shift) if self._solution is not None else self.y_shift
        preds = torch.stack([p.double() for _, p in self.source_predictions(x)], 1) + mean  # predictions are around the fitted mean
        return preds[:, 0] if x.dim() == 2 else preds

    def weights(self, source: int = 0, target: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
        """``(W [d_in, d_out], b [d_out])`` of one (source, target layer) cell: ``y ~ x @ W + b``."""
        if self._solution is None:
            raise RuntimeError("the probe is not fitted yet")
        k = self.hparams.d_out
        alpha = self.alpha[source, target].item()
        alpha = self.alphas[0] if alpha != alpha else alpha
        solution = self._solutions[int(self.ratio_index[source, target])]
        return solution.weights(alpha, source, slice(target * k, (target + 1) * k))

    # -- fitting ---------------------------------------------------------------------------------

    def configure_optimizers(self):
        return None  # closed form: no optimiser

    @property
    def _work_dtype(self) -> torch.dtype:
        return getattr(torch, self.hparams.matmul_dtype)

    def _new_stats(self) -> RidgeStatistics:
        # The dual solver keeps the training rows instead of X^T X and X^T Y (RidgeStatistics, TrainingRows).
        return RidgeStatistics(self.x_shift, self.y_shift.reshape(-1), self._work_dtype, keep_rows=self.hparams.solver == "dual")

    def _reduce(self, stats: RidgeStatistics) -> RidgeStatistics:
        """Under DDP, every process's statistics: sums all-reduced (primal), rows gathered (dual)."""
        if self.trainer is not None and self.trainer.world_size > 1:
            strategy = self.trainer.strategy
            if stats.keep_rows:
                stats.gather_rows(strategy.all_gather, lambda t: strategy.reduce(t, reduce_op="sum"))
            else:
                stats.load([strategy.reduce(t, reduce_op="sum") for t in stats.tensors()])
        return stats

    def _set_solution(self, stats: RidgeStatistics, keep_stats: bool, alphas: list[list[float]], combinations: list[int] | None = None) -> None:
        """Solutions that serve ``alphas[s]`` for each source ``s``, one per band penalty ratio
        combination (those at the positions ``combinations`` of ``self.ratios``; default all)."""
        self._solutions = {}  # free the previous ones first: they are as large as the new ones
        decomposition = "inverse" if max(len(set(a)) for a in alphas) <= INVERSE_UP_TO else "eigh"
        wanted = range(len(self.ratios)) if combinations is None else combinations
        scales = band_scales(stats, self.hparams.band_start, [self.ratios[i] for i in wanted], self.hparams.scale, self.hparams.band_reference)
        for index, scale in zip(wanted, scales, strict=True):
            first = self._solution
            self._solutions[index] = RidgeSolution(
                stats,
                self.hparams.scale,
                self._work_dtype,
                keep_stats=keep_stats,
                column_scale=scale,
                shared_solver=None if first is None else first.solver,  # C or the rows: the same for every combination
                decomposition=decomposition,
                alphas=alphas,
            )
        # Scores are taken around the fitted mean: predictions need no offset added.
        assert self._solution is not None
        self.target_shift.copy_(self._solution.y_mean.view_as(self.target_shift))

    def on_train_epoch_start(self) -> None:
        self._train_stats, self._val_stats, self._solutions = None, None, {}

    def training_step(self, batch, batch_idx):
        x, y = batch[0], batch[1]
        xs, y = self._sources(x), y.reshape(x.shape[0], -1)
        if self._train_stats is None:
            if self._shift_from_data:
                if self.trainer is not None and self.trainer.world_size > 1:
                    raise ValueError("under DDP pass x_shift and y_shift (e.g. the training means): every process must use the same")
                self.x_shift.copy_(xs.double().mean(0))
                self.y_shift.copy_(y.double().mean(0).view_as(self.y_shift))
                self.target_shift.copy_(self.y_shift)
                self._shift_from_data = False
            self._train_stats = self._new_stats()
        self._train_stats.update(xs, y)

    def _solve(self, validating: bool) -> None:
        """Solve once after the training pass (Lightning validates before on_train_epoch_end);
        before validation the sums are kept for the refit on training plus validation data."""
        if self._solution is not None or self._train_stats is None or self._train_stats.n == 0:
            return
        self._set_solution(self._reduce(self._train_stats), keep_stats=validating, alphas=[self.alphas] * self.hparams.n_sources)
        if not validating:
            self._train_stats = None

    def on_validation_epoch_start(self) -> None:
        self._solve(validating=True)
        self._val_stats = self._new_stats()
        hp = self.hparams
        self.val_r2 = LayerR2(hp.n_targets, hp.d_out, n_sources=len(self.ratios) * len(self.alphas) * hp.n_sources).to(self.device)

    def validation_step(self, batch, batch_idx):
        if self._solution is None:
            return
        x, y = batch[0], batch[1]
        xs = self._sources(x)
        self._val_stats.update(xs, y.reshape(x.shape[0], -1))
        yc = y.float() - self.target_shift
        n_sources, n_alphas, n_targets = self.hparams.n_sources, len(self.alphas), self.hparams.n_targets
        for r, solution in self._solutions.items():
            for s in range(n_sources):
                # Only the target layers that may choose this combination are predicted (the others'
                # scores are masked when choosing); all of them without band_allowed.
                targets = None if self._band_allowed is None else torch.nonzero(self._band_allowed[r, s]).flatten().tolist()
                z = solution.rotated(xs[:, s], s) if targets != [] else None  # shared by every alpha
                for a, alpha in enumerate(self.alphas):
                    if targets == []:
                        pred = torch.zeros_like(yc)
                    elif targets is None or len(targets) == n_targets:
                        pred = solution.predict_centred(xs[:, s], alpha, s, z=z)
                    else:
                        pred = solution.predict_centred(xs[:, s], [alpha] * n_targets, s, z=z, targets=targets)
                    self.val_r2.update(pred.view_as(yc), yc, source=(r * n_alphas + a) * n_sources + s, centred=True)

    def on_validation_epoch_end(self) -> None:
        if self._solution is None or self._val_stats is None or self._val_stats.n == 0:
            return
        hp = self.hparams
        uniform, _ = self.val_r2.compute()
        by_ratio = uniform.reshape(len(self.ratios), len(self.alphas), hp.n_sources, hp.n_targets)  # [ratios, alphas, sources, targets]
        choice = choose_on_validation(by_ratio, self.alphas, hp.alpha_per, self._band_allowed)
        self.alpha.copy_(choice.alpha)
        self.ratio_index.copy_(choice.ratio_index)
        scores = self.results.val_r2_by_alpha = choice.val_r2_by_alpha
        if hp.band_start is not None:  # [S, T], or [S, T, bands after the first] where bands have their own ratios
            ratio = torch.tensor(self.ratios, dtype=torch.float64)[choice.ratio_index]
            unchosen = torch.isnan(choice.alpha)  # no R² to choose by: no ratio either
            self.results.ratio = torch.where(unchosen.view(*unchosen.shape, *([1] * (ratio.dim() - 2))), torch.nan, ratio)
        # Validation R² at each cell's chosen alpha: what the fit chooses each source's target layer on.
        self.results.val_r2 = choice.val_r2
        best = torch.nan_to_num(scores, nan=-torch.inf).amax(0)
        if torch.isfinite(best).any():
            # On the module's device: sync_dist reduces it with the process group's backend (NCCL on GPUs).
            self.log(f"{hp.log_prefix}val/r2", best[torch.isfinite(best)].mean().float().to(self.device), sync_dist=True)
        # Refit on the whole training side (fitting plus validation rows) with the chosen alphas.
        full = self._train_stats
        assert full is not None  # kept for this refit by _solve(validating=True)
        full += self._reduce(self._val_stats)
        chosen = torch.nan_to_num(self.alpha, nan=self.alphas[0]).cpu()  # what predictions and weights will ask for
        combinations = torch.unique(self.ratio_index).tolist()  # only those some cell chose
        self._set_solution(full, keep_stats=False, alphas=[row.tolist() for row in chosen], combinations=combinations)
        self._train_stats = self._val_stats = None

    def on_test_end(self) -> None:
        # Lightning moves the module back to the CPU after testing, not the solutions: keep them
        # together (what the band ratios' solutions share, their solver's C or rows, moves once).
        for solution in self._solutions.values():
            solution.to(self.device)

    def on_train_end(self) -> None:
        if self._solution is None and len(self.alphas) > 1:
            raise ValueError(f"an alpha grid {self.alphas} is chosen on validation data, and there was none; set a validation share")
        self._solve(validating=False)  # when there was no validation data
        self._train_stats = None
        self.results.alpha = self.alpha.cpu().clone()


class SumsDDPStrategy(DDPStrategy):
    """DDP for closed-form probes: processes, process group and collectives as in ``ddp``, without
    the ``DistributedDataParallel`` wrapper (it exists to all-reduce gradients, and refuses a
    module without trainable parameters); :class:`AffineProbe` all-reduces its sums itself.

    >>> trainer = L.Trainer(accelerator="cpu", devices=2, strategy=SumsDDPStrategy())  # doctest: +SKIP
    """

    strategy_name = "ddp_sums"

    def configure_ddp(self) -> None:
        pass
