"""R² per target layer with torchmetrics, in float64 (hidden states break float32 sums)."""

from __future__ import annotations

import torch
from torch import nn
from torchmetrics.regression import R2Score


class LayerR2(nn.Module):
    """Test R² of every target layer: uniform over output dimensions (the paper's, sklearn's
    default) and variance-weighted.

    One ``R2Score`` over all ``n_targets * d_out`` outputs (one update per batch, DDP-synced by
    torchmetrics), split into target layers at the end. Inputs are shifted by the training mean
    first, which changes no R² but keeps the float64 sums small.
    """

    def __init__(self, n_targets: int, d_out: int, y_shift: torch.Tensor):
        super().__init__()
        self.n_targets, self.d_out = n_targets, d_out
        self.register_buffer("y_shift", y_shift.double().reshape(-1))
        self.r2 = R2Score(multioutput="raw_values").set_dtype(torch.float64)

    def update(self, preds: torch.Tensor, target: torch.Tensor) -> None:
        """``preds`` and ``target``: ``[batch, n_targets, d_out]``."""
        b = preds.shape[0]
        self.r2.update(preds.reshape(b, -1).double() - self.y_shift, target.reshape(b, -1).double() - self.y_shift)

    def compute(self) -> tuple[torch.Tensor, torch.Tensor]:
        """(uniform, variance-weighted) R², each ``[n_targets]``.

        Output dimensions that are constant on the test side have no R²; they are left out
        (scikit-learn would score a constant predicted exactly as 1.0). This matters: at the last
        prompt token the embedding output is the same for every row (the same template token),
        and counting it as perfectly predicted would make SyncR² 1.
        """
        m = self.r2
        with m.sync_context():  # sums over DDP ranks
            tss = (m.sum_squared_error - m.sum_error**2 / m.total).reshape(self.n_targets, self.d_out)
            rss = m.residual.reshape(self.n_targets, self.d_out).clone()
        valid = tss > 1e-9 * tss.max().clamp(min=1e-300)
        raw = torch.where(valid, 1 - rss / tss.clamp(min=1e-300), torch.full_like(tss, float("nan")))
        uniform = raw.nanmean(1)
        weighted = 1 - (rss * valid).sum(1) / (tss * valid).sum(1)  # NaN when no dimension varies
        return uniform, weighted

    def reset(self) -> None:
        self.r2.reset()


class TestR2Mixin:
    """The test stage shared by every probe: ``self.test_r2`` (a :class:`LayerR2`) collects the
    predictions; the per-target-layer R² ends up in ``self.results``."""

    __test__ = False  # not a pytest class, despite the name

    def on_test_epoch_start(self) -> None:
        self.test_r2.reset()

    def test_step(self, batch, batch_idx):
        x, y = batch
        self.test_r2.update(self(x), y)

    def on_test_epoch_end(self) -> None:
        uniform, weighted = self.test_r2.compute()
        self.results.update(test_r2=uniform.cpu(), test_r2_weighted=weighted.cpu())
        finite = uniform[torch.isfinite(uniform)]
        if finite.numel():
            self.log("test/r2", finite.max().float())  # best target layer
