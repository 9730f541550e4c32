"""R² per target layer with torchmetrics, in float64 (hidden states break float32 sums)."""

from __future__ import annotations

import torch
from torch import nn
from torchmetrics import Metric
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


class EpisodeSums(Metric):
    """Per test episode: row count and the sums of ``y``, ``y²`` and squared error of every output
    (shifted by the training mean), from which the R² of any re-weighting of episodes follows
    (the bootstrap over episodes in :mod:`nsync.analysis.bootstrap`)."""

    full_state_update = False

    def __init__(self, n_episodes: int, n_outputs: int, y_shift: torch.Tensor):
        super().__init__()
        self.register_buffer("y_shift", y_shift.double().reshape(-1))
        for name, shape in (("n", (n_episodes,)), ("s1", (n_episodes, n_outputs)), ("s2", (n_episodes, n_outputs)), ("sse", (n_episodes, n_outputs))):
            self.add_state(name, torch.zeros(shape, dtype=torch.float64), dist_reduce_fx="sum")

    def update(self, preds: torch.Tensor, target: torch.Tensor, episode: torch.Tensor) -> None:
        b = preds.shape[0]
        y = target.reshape(b, -1).double() - self.y_shift
        err = preds.reshape(b, -1).double() - self.y_shift - y
        self.n.index_add_(0, episode, torch.ones(b, dtype=torch.float64, device=y.device))
        self.s1.index_add_(0, episode, y)
        self.s2.index_add_(0, episode, y * y)
        self.sse.index_add_(0, episode, err * err)

    def compute(self) -> dict[str, torch.Tensor]:
        return {"n": self.n, "s1": self.s1, "s2": self.s2, "sse": self.sse}


class TestR2Mixin:
    """The test stage shared by every probe: ``self.test_r2`` (a :class:`LayerR2`) collects the
    predictions; the per-target-layer R² ends up in ``self.results``."""

    __test__ = False  # not a pytest class, despite the name

    def on_test_epoch_start(self) -> None:
        self.test_r2.reset()
        # Test loaders that also yield each row's episode index (SynchronyDataModule's) get
        # per-episode sums for the bootstrap.
        dm = getattr(self.trainer, "datamodule", None)
        groups = getattr(dm, "n_test_episodes", 0)
        self.episode_sums = None
        if groups:
            n_out = self.test_r2.n_targets * self.test_r2.d_out
            self.episode_sums = EpisodeSums(groups, n_out, self.test_r2.y_shift).to(self.device)

    def test_step(self, batch, batch_idx):
        x, y, *episode = batch
        preds = self(x)
        self.test_r2.update(preds, y)
        if episode and self.episode_sums is not None:
            self.episode_sums.update(preds, y, episode[0])

    def on_test_epoch_end(self) -> None:
        uniform, weighted = self.test_r2.compute()
        self.results.update(test_r2=uniform.cpu(), test_r2_weighted=weighted.cpu())
        if self.episode_sums is not None:
            # torchmetrics squeezes one-element results: restore [episodes] and [episodes, outputs]
            groups = self.episode_sums.n.shape[0]
            sums = self.episode_sums.compute()
            self.results["episode_sums"] = {k: v.cpu().reshape(groups, -1) if k != "n" else v.cpu().reshape(groups) for k, v in sums.items()}
        finite = uniform[torch.isfinite(uniform)]
        if finite.numel():
            self.log("test/r2", finite.max().float())  # best target layer
