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
        """(uniform, variance-weighted) R², each ``[n_targets]``."""
        raw = self.r2.compute().reshape(self.n_targets, self.d_out)
        m = self.r2
        tss = (m.sum_squared_error - m.sum_error**2 / m.total).reshape(self.n_targets, self.d_out)
        rss = m.residual.reshape(self.n_targets, self.d_out)
        return raw.mean(1), 1 - rss.sum(1) / tss.sum(1)

    def reset(self) -> None:
        self.r2.reset()
