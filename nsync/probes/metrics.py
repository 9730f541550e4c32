"""The probes' test metric: per-episode sums of every (source, target layer) pair as a torchmetrics
``Metric`` (:class:`LayerR2`), R² from them by the one formula of :func:`nsync.stats.r2.r2_from_sums`,
and what a tested probe reports (:class:`ProbeResults`)."""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import torch
from torchmetrics import Metric

from nsync.stats.r2 import r2_from_sums

if TYPE_CHECKING:
    from lightning.fabric.utilities.data import AttributeDict


class LayerR2(Metric):
    """Test R² of every target layer (for each source layer), and the per-episode sums behind it.

    States (float64, summed over batches and DDP ranks): per group (test episode) ``n [G]``,
    ``s1``/``s2 [G, targets, dims]`` and ``sse [G, sources, targets, dims]``. A probe with several
    source layers calls :meth:`update` once per source for each batch; the target sums are counted
    with ``source=0``. ``y_shift`` (e.g. the training mean) is subtracted from predictions and
    targets first, unless the caller passes them already shifted (``centred=True``).

    >>> metric = LayerR2(n_targets=2, d_out=3)
    >>> y = torch.randn(50, 2, 3); metric.update(y + 0.1 * torch.randn(50, 2, 3), y)
    >>> uniform, weighted = metric.compute(); uniform.shape   # [targets] (one source)
    torch.Size([2])
    """

    full_state_update = False
    is_differentiable = False
    higher_is_better = True
    # buffer and states (registered in __init__), declared for the type checker
    y_shift: torch.Tensor
    n: torch.Tensor
    s1: torch.Tensor
    s2: torch.Tensor
    sse: torch.Tensor

    def __init__(self, n_targets: int, d_out: int, y_shift: torch.Tensor | None = None, n_sources: int = 1, n_groups: int = 1):
        super().__init__()
        self.n_sources, self.n_targets, self.d_out, self.n_groups = n_sources, n_targets, d_out, n_groups
        shift = torch.zeros(n_targets, d_out) if y_shift is None else y_shift.reshape(n_targets, d_out)
        self.register_buffer("y_shift", shift.double(), persistent=False)
        for name, shape in (
            ("n", (n_groups,)),
            ("s1", (n_groups, n_targets, d_out)),
            ("s2", (n_groups, n_targets, d_out)),
            ("sse", (n_groups, n_sources, n_targets, d_out)),
        ):
            # torchmetrics keeps a deep copy of each state's default for reset(); registered as a
            # scalar and then given a broadcast zero, which says the same without the memory or the
            # copy (reset() clones it into a full tensor): at the 7B shape the per-episode squared
            # errors are GBs.
            self.add_state(name, torch.zeros((), dtype=torch.float64), dist_reduce_fx="sum")
            setattr(self, name, torch.zeros(shape, dtype=torch.float64))
            self._defaults[name] = torch.zeros((), dtype=torch.float64).expand(shape)

    def update(
        self,
        preds: torch.Tensor,
        target: torch.Tensor,
        group: torch.Tensor | None = None,
        source: int = 0,
        centred: bool = False,
        target_shift: torch.Tensor | None = None,
    ) -> None:
        """``preds`` and ``target``: ``[batch, targets, dims]``; ``group``: ``[batch]`` indices < n_groups.
        ``target_shift`` (with ``centred=True``): the predictions are centred at it and the targets
        not yet (they are shifted a few layers at a time, without a full float32 copy)."""
        b = target.shape[0]
        # Work in the inputs' precision (at least float32). The shift is rounded to it: for a
        # dimension with a huge mean, y - shift of two nearby float32 numbers is exact, so
        # centring float32 states needs no float64 copy of the batch.
        dtype = torch.promote_types(torch.promote_types(preds.dtype, target.dtype), torch.float32)
        preds, target = preds.reshape(b, self.n_targets, self.d_out), target.reshape(b, self.n_targets, self.d_out)
        group = torch.zeros(b, dtype=torch.int64, device=target.device) if group is None else group
        if source == 0:
            self.n += torch.bincount(group, minlength=self.n_groups).double()
        # A few target layers at a time: the batch's temporaries stay small next to the states.
        step = max(1, 2**24 // max(1, b * self.d_out))
        for t in range(0, self.n_targets, step):
            layers = slice(t, t + step)
            y = target[:, layers].to(dtype)
            if target_shift is not None:
                y = y - target_shift[layers].to(dtype)
            err = (preds[:, layers].to(dtype) - y).square_()  # uncentred: the shift cancels
            if not centred:
                y = y - self.y_shift[layers].to(dtype)
            sse = torch.zeros(self.n_groups, err.shape[1], self.d_out, dtype=dtype, device=y.device).index_add_(0, group, err)
            self.sse[:, source, layers] += sse.double()
            if source == 0:
                yd = y.double()
                self.s1[:, layers].index_add_(0, group, yd)
                self.s2[:, layers].index_add_(0, group, yd * yd)

    def compute(self) -> tuple[torch.Tensor, torch.Tensor]:
        """(uniform, variance-weighted) R² over all groups: ``[targets]`` for one source, else
        ``[sources, targets]``."""
        uniform, weighted = r2_from_sums(self.n.sum(), self.s1.sum(0), self.s2.sum(0), self.sse.sum(0))
        if self.n_sources == 1:
            return uniform[0], weighted[0]
        return uniform, weighted

    def sums(self) -> dict[str, torch.Tensor]:
        """The states summed over DDP ranks: ``n``, ``s1``, ``s2``, ``sse`` per group."""
        # No copies: in one process these are the states themselves (reset() replaces them rather
        # than zeroing them in place); under DDP the reduced tensors.
        with self.sync_context():
            return {k: getattr(self, k) for k in ("n", "s1", "s2", "sse")}


@dataclass
class ProbeResults:
    """What a probe reports (CPU tensors), filled as it is fitted and tested.

    The test stage (:class:`TestR2Mixin`, after ``trainer.test``) sets ``test_r2``,
    ``test_r2_weighted`` and ``episode_sums`` for every probe; the other fields are set by the
    probes that have them and stay None otherwise. Shapes are ``[sources, targets]`` (a probe of
    one source layer: ``test_r2`` and ``test_r2_weighted`` are ``[targets]``).
    """

    test_r2: torch.Tensor | None = None
    """Test R² of every (source, target layer) pair: the mean over output dimensions."""
    test_r2_weighted: torch.Tensor | None = None
    """Test R², variance-weighted over output dimensions (``1 - ΣSSE / ΣTSS``)."""
    episode_sums: dict[str, torch.Tensor] | None = None
    """The test sums per episode (:meth:`LayerR2.sums`: ``n`` ``[E]``, ``s1``/``s2`` ``[E, targets,
    dims]``, ``sse`` ``[E, sources, targets, dims]``), for the bootstrap; one group when the loader
    yields no episode indices."""
    val_r2: torch.Tensor | None = None
    """Validation R² (at the chosen alpha; the MLP's at its best epoch): with
    ``target_choice=validation`` each source layer's target layer is chosen on it."""
    val_r2_by_alpha: torch.Tensor | None = None
    """``[alphas, sources, targets]`` validation R² of every alpha of the grid (affine)."""
    alpha: torch.Tensor | None = None
    """The ridge alpha of every cell (affine; NaN where none could be chosen)."""
    ratio: torch.Tensor | None = None
    """The band penalty ratio of every cell ``[S, T]`` (affine with bands, the variance partition),
    ``[S, T, bands after the first]`` where each band has its own; NaN where no alpha was chosen."""


class TestR2Mixin:
    """The test stage shared by every probe.

    A probe has ``target_shift`` (float32 ``[targets, dims]``, e.g. the training mean) and
    ``source_predictions(x)``, yielding ``(source position, predictions - target_shift)`` of shape
    ``[batch, targets, dims]`` for each source layer it maps; it calls :meth:`make_test_metric`
    in its constructor, which also makes its :class:`ProbeResults` (``self.results``). After
    ``trainer.test`` they hold ``test_r2``, ``test_r2_weighted`` and ``episode_sums``.
    """

    __test__ = False  # not a pytest class, despite the name

    if TYPE_CHECKING:  # provided by the probe (a LightningModule) the mixin is combined with
        hparams: AttributeDict
        target_shift: torch.Tensor
        trainer: Any
        device: torch.device
        log: Any

        def source_predictions(self, x: torch.Tensor) -> Iterator[tuple[int, torch.Tensor]]: ...

    def make_test_metric(self, n_targets: int, d_out: int, n_sources: int = 1) -> None:
        self._test_shape: dict[str, Any] = dict(n_targets=n_targets, d_out=d_out, n_sources=n_sources)
        self.test_r2 = LayerR2(**self._test_shape)
        self.results = ProbeResults()

    def on_test_epoch_start(self) -> None:
        # Test loaders that also yield each row's episode index (SynchronyDataModule's) get
        # per-episode sums; the number of episodes is known only now.
        dm = getattr(self.trainer, "datamodule", None)
        groups = max(1, getattr(dm, "n_test_episodes", 0) or 0)
        self.test_r2 = LayerR2(**self._test_shape, n_groups=groups).to(self.device)

    def test_step(self, batch, batch_idx):
        x, y, *group = batch
        targets, shift = y, self.target_shift
        for s, preds in self.source_predictions(x):  # predictions are centred at target_shift
            if s == 0 and self._test_shape["n_sources"] > 1:  # the targets centred once for every source, not per source
                dtype = torch.promote_types(torch.promote_types(preds.dtype, y.dtype), torch.float32)
                shape = (y.shape[0], *shift.shape)
                targets = torch.empty(shape, dtype=dtype, device=y.device).copy_(y.reshape(shape)).sub_(shift.to(dtype))
                shift = None
            self.test_r2.update(preds, targets, group[0] if group else None, source=s, centred=True, target_shift=shift)

    def on_test_epoch_end(self) -> None:
        sums = {k: v.cpu() for k, v in self.test_r2.sums().items()}
        uniform, weighted = r2_from_sums(sums["n"].sum(), sums["s1"].sum(0), sums["s2"].sum(0), sums["sse"].sum(0))
        if self._test_shape["n_sources"] == 1:  # a single-source probe reports [targets]
            uniform, weighted = uniform[0], weighted[0]
        self.results.test_r2, self.results.test_r2_weighted, self.results.episode_sums = uniform, weighted, sums
        finite = uniform[torch.isfinite(uniform)]
        if finite.numel():
            self.log(f"{self.hparams.get('log_prefix', '')}test/r2", finite.max().float(), sync_dist=True)  # best layer pair (already global)
