"""R² per target layer with torchmetrics, in float64 (hidden states break float32 sums)."""

from __future__ import annotations

import torch
from torch import nn
from torchmetrics.regression import R2Score


class LayerR2(nn.Module):
    """Test R² of every target layer: uniform over output dimensions (the paper's, sklearn's
    default) and variance-weighted. Inputs are shifted by the training mean first, which
    changes no R² but keeps the sums small."""

    def __init__(self, n_targets: int, d_out: int, y_shift: torch.Tensor):
        super().__init__()
        self.register_buffer("y_shift", y_shift.double().reshape(n_targets, d_out))
        self.uniform = nn.ModuleList(
            [R2Score(multioutput="uniform_average").set_dtype(torch.float64) for _ in range(n_targets)]
        )
        self.weighted = nn.ModuleList(
            [R2Score(multioutput="variance_weighted").set_dtype(torch.float64) for _ in range(n_targets)]
        )

    def update(self, preds: torch.Tensor, target: torch.Tensor) -> None:
        """``preds`` and ``target``: ``[batch, n_targets, d_out]``."""
        p = preds.double() - self.y_shift
        t = target.double() - self.y_shift
        for i, (u, w) in enumerate(zip(self.uniform, self.weighted)):
            u.update(p[:, i], t[:, i])
            w.update(p[:, i], t[:, i])

    def compute(self) -> tuple[torch.Tensor, torch.Tensor]:
        return (
            torch.stack([m.compute() for m in self.uniform]),
            torch.stack([m.compute() for m in self.weighted]),
        )

    def reset(self) -> None:
        for m in [*self.uniform, *self.weighted]:
            m.reset()
