"""``MLPProbe``: a small nonlinear map from a source state to target states (trained with Adam).

The paper's reviewers asked whether the relation is really linear; this probe answers with
the same data, splits and metrics. Inputs and targets are standardised with training-side
statistics (hidden states have dimensions with huge means), and predictions are mapped back
before R² is computed.
"""

from __future__ import annotations

import lightning as L
import torch
from torch import nn

from nsync.probes.metrics import LayerR2, TestR2Mixin


class MLP(nn.Module):
    """``depth`` hidden layers of width ``hidden`` with GELU and dropout, then a linear output."""

    def __init__(self, d_in: int, d_out: int, hidden: int = 256, depth: int = 1, dropout: float = 0.1):
        super().__init__()
        layers: list[nn.Module] = []
        width = d_in
        for _ in range(depth):
            layers += [nn.Linear(width, hidden), nn.GELU(), nn.Dropout(dropout)]
            width = hidden
        layers.append(nn.Linear(width, d_out))
        self.net = nn.Sequential(*layers)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x)


class MLPProbe(TestR2Mixin, L.LightningModule):
    """Nonlinear probe to ``n_targets`` target layers jointly; early-stop on ``val/r2``.

    >>> probe = MLPProbe(576, 576, n_targets=1, x_mean=mx, x_std=sx, y_mean=my, y_std=sy)  # doctest: +SKIP
    """

    # buffers (registered in __init__), declared for the type checker
    x_mean: torch.Tensor
    x_std: torch.Tensor
    y_mean: torch.Tensor
    y_std: torch.Tensor
    target_shift: torch.Tensor
    val_r2_by_target: torch.Tensor

    def __init__(
        self,
        d_in: int,
        d_out: int,
        n_targets: int = 1,
        hidden: int = 256,
        depth: int = 1,
        dropout: float = 0.1,
        lr: float = 1e-3,
        weight_decay: float = 1e-4,
        x_mean: torch.Tensor | None = None,
        x_std: torch.Tensor | None = None,
        y_mean: torch.Tensor | None = None,
        y_std: torch.Tensor | None = None,
        log_prefix: str = "",
    ):
        super().__init__()
        self.save_hyperparameters(ignore=["x_mean", "x_std", "y_mean", "y_std"])
        k = n_targets * d_out

        def buf(t: torch.Tensor | None, n: int, fill: float) -> torch.Tensor:
            return torch.full((n,), fill) if t is None else t.reshape(-1).float()

        self.register_buffer("x_mean", buf(x_mean, d_in, 0.0))
        self.register_buffer("x_std", buf(x_std, d_in, 1.0).clamp(min=1e-6))
        self.register_buffer("y_mean", buf(y_mean, k, 0.0))
        self.register_buffer("y_std", buf(y_std, k, 1.0).clamp(min=1e-6))
        self.net = MLP(d_in, k, hidden, depth, dropout)
        self.register_buffer("target_shift", self.y_mean.view(n_targets, d_out).clone())
        self.val_r2 = LayerR2(n_targets, d_out, self.y_mean)
        # A buffer, so restoring the best epoch's state (BestWeights) restores its validation R² too.
        self.register_buffer("val_r2_by_target", torch.full((n_targets,), float("nan")))
        self.make_test_metric(n_targets, d_out)  # and self.results

    #: What a saved probe needs to predict again besides the network: its standardisation.
    SAVED_BUFFERS = ("x_mean", "x_std", "y_mean", "y_std")

    def saved_tensors(self) -> dict[str, torch.Tensor]:
        """The network's weights (``net.*``) and the standardisation, as ``weights.safetensors`` keeps them."""
        net = {f"net.{k}": v.detach().float().contiguous() for k, v in self.net.state_dict().items()}
        return net | {k: getattr(self, k).detach().float().contiguous() for k in self.SAVED_BUFFERS}

    @classmethod
    def from_saved(cls, tensors: dict[str, torch.Tensor], n_targets: int, hidden: int, depth: int) -> MLPProbe:
        """A probe, in eval mode, from :meth:`saved_tensors` (``n_targets``, ``hidden``, ``depth``: the fit's)."""
        d_in, k = tensors["x_mean"].numel(), tensors["y_mean"].numel()
        probe = cls(
            d_in, k // n_targets, n_targets, hidden=hidden, depth=depth,
            x_mean=tensors["x_mean"], x_std=tensors["x_std"], y_mean=tensors["y_mean"], y_std=tensors["y_std"],
        )  # fmt: skip
        probe.net.load_state_dict({name.removeprefix("net."): v for name, v in tensors.items() if name.startswith("net.")})
        return probe.eval()

    def _z(self, x: torch.Tensor) -> torch.Tensor:
        """Standardised predictions ``[batch, n_targets * d_out]`` (``x``: ``[batch, d_in]`` or ``[batch, 1, d_in]``)."""
        return self.net((x.reshape(x.shape[0], -1).float() - self.x_mean) / self.x_std)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """``[batch, d_in]`` -> ``[batch, n_targets, d_out]`` in the targets' own units."""
        return (self._z(x) * self.y_std + self.y_mean).view(x.shape[0], self.hparams.n_targets, self.hparams.d_out)

    def source_predictions(self, x: torch.Tensor):
        """The test stage's contract: predictions minus ``target_shift`` (the training mean)."""
        yield 0, (self._z(x) * self.y_std).view(x.shape[0], self.hparams.n_targets, self.hparams.d_out)

    def _loss(self, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        target = (y.reshape(y.shape[0], -1).float() - self.y_mean) / self.y_std
        return nn.functional.mse_loss(self._z(x), target)

    def configure_optimizers(self):
        return torch.optim.Adam(self.parameters(), lr=self.hparams.lr, weight_decay=self.hparams.weight_decay)

    def training_step(self, batch, batch_idx):
        x, y = batch[0], batch[1]
        loss = self._loss(x, y)
        self.log(f"{self.hparams.log_prefix}train/loss", loss)
        return loss

    def on_validation_epoch_start(self) -> None:
        self.val_r2.reset()

    def validation_step(self, batch, batch_idx):
        x, y = batch[0], batch[1]
        self.val_r2.update(self(x), y)

    def on_validation_epoch_end(self) -> None:
        uniform, _ = self.val_r2.compute()
        self.val_r2_by_target.copy_(uniform.float())
        # Mean over the target layers that have an R² (a constant layer has none).
        self.log(f"{self.hparams.log_prefix}val/r2", uniform[torch.isfinite(uniform)].mean().float(), prog_bar=True)
