"""Ridge solutions (:class:`RidgeSolution`): a solver over a shared factorisation, from streamed
statistics; :func:`fit_ridge` for data in memory."""

from __future__ import annotations

from collections.abc import Sequence

import torch

from nsync.probes.ridge.factorisation import factorisation_for, scaling
from nsync.probes.ridge.solvers import Solver, solver_for
from nsync.probes.ridge.statistics import RidgeStatistics


class RidgeSolution:
    """Ridge solutions of every source, ready to predict or give weights for any ``alpha`` (one per
    target layer if wanted): the statistics' solver (:func:`nsync.probes.ridge.solvers.solver_for`:
    primal, dual, or the dual's kernel form) over a factorisation of ``A + alpha I``
    (:mod:`nsync.probes.ridge.factorisation`).

    The matrix inverted is ``A + alpha I`` with ``A = S Xc^T Xc S`` (``d x d``), or, for the dual
    solver with fewer training rows than dimensions, the Gram matrix ``A = Xc S^2 Xc^T`` (``n x n``,
    the kernel form: ``x S^2 Xc^T (A + alpha I)^-1 Yc``, the same predictions). ``decomposition``:
    ``"eigh"`` decomposes ``A`` once per source and serves any alpha from it (an alpha grid);
    ``"inverse"`` factors ``A + alpha I`` per alpha by Cholesky and solves through it, several
    times cheaper for one alpha (``alphas``: those it will serve, one list for every source or one
    per source).

    Predictions never form the weights: ``((x - m) S (A + alpha I)^-1 S) C`` with ``C = Xc^T Yc``
    costs one ``[b, d] @ [d, K]`` product per source and alpha, the same as applying ``W``, without
    the ``d^2 K`` cost of forming it; the dual multiplies through the rows instead of ``C``
    (:class:`nsync.probes.ridge.TrainingRows`). ``C`` takes over the statistics' ``X^T Y`` buffer
    unless ``keep_stats=True`` (then it is copied; needed to add more sums later);
    ``shared_solver`` re-uses the solver (its ``C`` or rows) of another solution of the same
    statistics instead (it does not depend on the column scales).

    Columns are scaled before the ridge (``S``; the weights apply to unscaled inputs): by their
    inverse training standard deviation with ``scale=True``, and by ``column_scale`` ``[S, d]``.
    Scaling a band of columns by ``1 / sqrt(r)`` is ridge with ``r`` times the penalty on that
    band: banded ridge, one solution per set of band penalties.

    Precision: decompositions and inverses are float64; the large products run in
    ``product_dtype``. Float32 products agree with float64 to about 1e-6 in R² where the rows
    outnumber the dimensions, and in the kernel form; the ``d x d`` form with fewer rows than
    dimensions amplifies float32 rounding in ``X^T X``'s null space by ``1 / alpha`` (R² off by
    1e-2 at alpha 0.1), hence a warning there.
    """

    def __init__(
        self,
        stats: RidgeStatistics,
        scale: bool = False,
        product_dtype: torch.dtype = torch.float64,
        keep_stats: bool = True,
        column_scale: torch.Tensor | None = None,
        shared_solver: Solver | None = None,
        decomposition: str = "eigh",
        alphas: Sequence[float] | Sequence[Sequence[float]] | None = None,
    ):
        if stats.n < 2:
            raise ValueError("ridge needs at least two training rows")
        factorise = factorisation_for(decomposition)  # an unknown one is refused before any work
        self.single = stats.single
        self.x_mean, self.y_mean = stats.means()
        self.inv_std = scaling(stats, scale, column_scale)  # [S, d]: the column scale S
        self.product_dtype = product_dtype
        self._scale_mm = self.inv_std.to(product_dtype)
        # What predictions multiply through: C = Xc^T Yc (primal) or the training rows (dual).
        self.solver = solver_for(stats, product_dtype, keep_stats) if shared_solver is None else shared_solver
        self.factorisation = factorise(self.solver.gram(stats, self.inv_std), product_dtype, alphas)

    @property
    def n_sources(self) -> int:
        return self.x_mean.shape[0]

    @property
    def width(self) -> int:
        """Output columns (every target layer's)."""
        return self.solver.width

    @property
    def kernel(self) -> bool:
        """Whether ``A`` is the ``n x n`` Gram matrix (the dual solver with fewer rows than dimensions)."""
        return self.solver.kernel

    def to(self, device) -> RidgeSolution:
        """The solution's tensors on ``device`` (in place; Lightning moves the module, not this),
        its solver's too (once for every solution that shares it)."""
        for name in ("x_mean", "y_mean", "inv_std", "_scale_mm"):
            setattr(self, name, getattr(self, name).to(device))
        self.solver.to(device)
        self.factorisation.to(device)
        return self

    def inverse(self, source: int, alpha: float) -> torch.Tensor:
        """``(A + alpha I)^-1`` (float64) of one source (the pseudo-inverse at alpha 0)."""
        return self.factorisation.inverse(source, alpha)

    def solve(self, source: int, alpha: float, v: torch.Tensor) -> torch.Tensor:
        """``(A + alpha I)^-1 v`` (float64) for ``v`` ``[m, k]``."""
        return self.factorisation.solve(source, alpha, v)

    def rotated(self, x: torch.Tensor, source: int) -> torch.Tensor:
        """What every alpha starts from: ``(x - mean) S``, in the kernel form ``(x - mean) S^2 Xc^T``
        (the rows' products with the training rows); with ``decomposition="eigh"``, in ``A``'s eigenbasis."""
        centred = (x.double() - self.x_mean[source]) * self.inv_std[source]
        return self.factorisation.rotate(self.solver.lift(centred, source, self.inv_std[source]), source)

    def _times(self, z: torch.Tensor, value: float, source: int, cols: torch.Tensor | None = None) -> torch.Tensor:
        """The centred predictions (``cols`` only) of rotated rows ``z`` at one ``alpha``."""
        shrunk = self.factorisation.times_inverse(z, source, value)  # z (A + alpha I)^-1, back from the rotation
        return self.solver.through(shrunk, source, self._scale_mm[source], cols)

    def predict_centred(
        self,
        x: torch.Tensor,
        alpha: float | Sequence[float] | torch.Tensor,
        source: int = 0,
        z: torch.Tensor | None = None,
        targets: list[int] | None = None,
    ) -> torch.Tensor:
        """``x @ W + b - y_mean`` (``[b, K]`` in ``product_dtype``) for rows ``x`` ``[b, d]`` of one
        source, with ``alpha`` a scalar or one value per target layer. ``z`` re-uses the rotated rows
        of an earlier call (an alpha grid). ``targets``: only these target layers' columns are
        computed (the others are left 0)."""
        z = self.rotated(x, source) if z is None else z
        a = torch.as_tensor(alpha, dtype=torch.float64).reshape(-1)
        if targets is None and (a.numel() == 1 or bool((a == a[0]).all())):
            return self._times(z, float(a[0]), source)
        # One alpha per target layer: one product per distinct alpha, over its target layers' columns.
        n_targets = a.numel() if a.numel() > 1 else (self.width if targets is None else max(targets) + 1)
        k = self.width // n_targets if a.numel() > 1 else None
        if k is None:  # a scalar alpha on some target layers: the caller says how wide a layer is
            raise ValueError("targets= needs one alpha per target layer")
        a = a.expand(n_targets) if a.numel() == 1 else a
        wanted = torch.zeros(n_targets, dtype=torch.bool)
        wanted[list(range(n_targets)) if targets is None else targets] = True
        out = torch.zeros(x.shape[0], self.width, dtype=self.product_dtype, device=x.device)
        for value in torch.unique(a[wanted]):
            cols = torch.cat([torch.arange(t * k, (t + 1) * k) for t in torch.nonzero((a == value) & wanted).flatten().tolist()]).to(x.device)
            out[:, cols] = self._times(z, float(value), source, cols)
        return out

    def predict(self, x: torch.Tensor, alpha: float | Sequence[float] | torch.Tensor, source: int = 0) -> torch.Tensor:
        """``x @ W + b`` (float64 ``[b, K]``)."""
        return self.predict_centred(x, alpha, source).double() + self.y_mean

    def weights(self, alpha: float | torch.Tensor, source: int = 0, columns: slice = slice(None)) -> tuple[torch.Tensor, torch.Tensor]:
        """``(W, b)`` with ``y ~ x @ W + b`` for the output ``columns``; the bias is not regularised."""
        value = float(alpha)
        w = self.solver.weights(lambda v: self.solve(source, value, v), self.inv_std[source][:, None], source, columns)
        return w, self.y_mean[columns] - self.x_mean[source] @ w


def fit_ridge(x: torch.Tensor, y: torch.Tensor, alpha: float = 0.1, scale: bool = False) -> tuple[torch.Tensor, torch.Tensor]:
    """Ridge on in-memory data (float64 statistics around the mean).

    >>> x = torch.randn(100, 3, dtype=torch.float64); y = x @ torch.tensor([[1.0], [2.0], [3.0]], dtype=torch.float64) + 5
    >>> w, b = fit_ridge(x, y, alpha=0.0)
    >>> torch.allclose(w.squeeze(), torch.tensor([1.0, 2.0, 3.0], dtype=torch.float64)), round(b.item(), 6)
    (True, 5.0)
    """
    stats = RidgeStatistics(x.double().mean(0), y.double().mean(0))
    stats.update(x, y)
    return RidgeSolution(stats, scale).weights(alpha)
