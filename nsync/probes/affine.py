"""``AffineProbe``: closed-form ridge from one source layer to every target layer at once."""

from __future__ import annotations

import lightning as L
import torch

from nsync.probes.metrics import LayerR2, TestR2Mixin
from nsync.probes.ridge import RidgeSolution, RidgeStatistics


class AffineProbe(TestR2Mixin, L.LightningModule):
    """Ridge regression with an unregularised bias, solved from streamed sufficient statistics.

    One training epoch accumulates ``X^T X`` and ``X^T Y`` (float64, centred at the training
    means ``x_shift``/``y_shift``); under DDP they are summed over ranks, so the solution is exact.
    ``matmul_dtype="float32"`` runs the batch products on centred data in float32 (the sums stay
    float64); ``"float64"`` runs them in float64 too.
    With several ``alphas`` the validation part picks one (all from one eigendecomposition),
    and the final weights are solved on training plus validation data.

    >>> probe = AffineProbe(d_in=576, d_out=576, n_targets=31, x_shift=mx, y_shift=my)  # doctest: +SKIP
    >>> L.Trainer(max_epochs=1).fit(probe, datamodule=dm)                              # doctest: +SKIP
    """

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
    ):
        super().__init__()
        self.save_hyperparameters(ignore=["x_shift", "y_shift"])
        self.automatic_optimization = False
        self.alphas = [float(a) for a in alphas]
        self.register_buffer("x_shift", torch.zeros(d_in, dtype=torch.float64) if x_shift is None else x_shift.double())
        self.register_buffer("y_shift", torch.zeros(n_targets * d_out, dtype=torch.float64) if y_shift is None else y_shift.double().reshape(-1))
        self.register_buffer("weight", torch.zeros(d_in, n_targets * d_out, dtype=torch.float64))
        self.register_buffer("bias", torch.zeros(n_targets * d_out, dtype=torch.float64))
        self.register_buffer("alpha", torch.tensor(self.alphas[0], dtype=torch.float64))
        self.test_r2 = LayerR2(n_targets, d_out, self.y_shift)
        self.val_r2 = torch.nn.ModuleList([LayerR2(n_targets, d_out, self.y_shift) for _ in self.alphas])
        self._train_stats: RidgeStatistics | None = None
        self._val_stats: RidgeStatistics | None = None
        self._solution: RidgeSolution | None = None
        self.results: dict[str, torch.Tensor] = {}

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """``[batch, d_in]`` -> ``[batch, n_targets, d_out]`` (float64)."""
        # (x - shift) @ W + (shift @ W + b): the product runs on centred data in the working dtype.
        dtype = self._work_dtype
        xc = x.to(dtype) - self.x_shift.to(dtype)
        y = (xc @ self.weight.to(dtype)).double() + (self.x_shift @ self.weight + self.bias)
        return y.view(x.shape[0], self.hparams.n_targets, self.hparams.d_out)

    def configure_optimizers(self):
        return None  # closed form: no optimiser

    @property
    def _work_dtype(self) -> torch.dtype:
        return getattr(torch, self.hparams.matmul_dtype)

    def _new_stats(self) -> RidgeStatistics:
        return RidgeStatistics(self.x_shift, self.y_shift, self._work_dtype)

    def on_train_epoch_start(self) -> None:
        self._train_stats, self._val_stats, self._solution = self._new_stats(), None, None

    def training_step(self, batch, batch_idx):
        x, y = batch
        self._train_stats.update(x, y.reshape(x.shape[0], -1))  # type: ignore[union-attr]

    def _reduce(self, stats: RidgeStatistics) -> RidgeStatistics:
        if self.trainer is not None and self.trainer.world_size > 1:
            stats.load([self.trainer.strategy.reduce(t, reduce_op="sum") for t in stats.tensors()])
        return stats

    def _solve(self) -> None:
        """Solve once after the training pass (Lightning validates before on_train_epoch_end)."""
        if self._solution is not None or self._train_stats is None or self._train_stats.n == 0:
            return
        self._solution = RidgeSolution(self._reduce(self._train_stats), self.hparams.scale, self._work_dtype)
        self._set_weights(self._solution, self.alphas[0])

    def _set_weights(self, solution: RidgeSolution, alpha: float) -> None:
        w, b = solution.weights(alpha)
        self.weight.copy_(w)
        self.bias.copy_(b)
        self.alpha.fill_(alpha)

    def on_validation_epoch_start(self) -> None:
        self._solve()
        self._val_stats = self._new_stats()
        for m in self.val_r2:
            m.reset()

    def validation_step(self, batch, batch_idx):
        if self._solution is None:
            return
        x, y = batch
        self._val_stats.update(x, y.reshape(x.shape[0], -1))  # type: ignore[union-attr]
        if len(self.alphas) > 1:
            for alpha, metric in zip(self.alphas, self.val_r2):
                metric.update(self._solution.predict(x, alpha).view_as(y), y)
        else:
            self.val_r2[0].update(self(x), y)

    def on_validation_epoch_end(self) -> None:
        if self._solution is None or self._val_stats is None or self._val_stats.n == 0:
            return
        scores = torch.stack([m.compute()[0].mean() for m in self.val_r2])  # mean over target layers
        best = int(torch.argmax(scores))
        self.log("val/r2", scores[best].float(), prog_bar=False)
        self.results["val_r2_by_alpha"] = scores
        if len(self.alphas) > 1:
            # refit on the whole training side with the chosen alpha
            full = self._train_stats
            full += self._reduce(self._val_stats)
            self._set_weights(RidgeSolution(full, self.hparams.scale, self._work_dtype), self.alphas[best])

    def on_train_end(self) -> None:
        self._solve()  # when there was no validation data
