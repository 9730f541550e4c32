"""Which ridge solver: by arithmetic before any data is read (:func:`choose_solver`, for
``affine.solver=auto``), and, for statistics in hand, the one factory that builds it
(:func:`solver_for`): the primal solver (:class:`PrimalSolver`, predictions through ``C = X^T Y``)
for streamed sums, the dual one (:class:`DualSolver`, through the training rows) for statistics
that keep the rows, in its kernel form (:class:`KernelSolver`) where the rows are fewer than the
dimensions. Every solver forms ``A`` and multiplies through what it holds; the shared
:class:`nsync.probes.ridge.factorisation.Factorisation` solves with ``A + alpha I``."""

from __future__ import annotations

from collections.abc import Callable
from typing import Protocol

import torch

from nsync.probes.ridge.dual import DualSolver, KernelSolver
from nsync.probes.ridge.primal import PrimalSolver
from nsync.probes.ridge.statistics import RidgeStatistics, TrainingRows

#: How predictions use X^T Y: formed (primal) or through the training rows (dual).
SOLVERS = ("primal", "dual")


class Solver(Protocol):
    """What a ridge solver does for :class:`nsync.probes.ridge.RidgeSolution` (``S`` the column
    scale, ``A`` the matrix the factorisation solves with)."""

    @property
    def kernel(self) -> bool:
        """Whether ``A`` is the ``n x n`` Gram matrix (else ``d x d``)."""
        ...

    @property
    def width(self) -> int:
        """Output columns (every target layer's)."""
        ...

    def gram(self, stats: RidgeStatistics, inv_std: torch.Tensor) -> torch.Tensor:
        """``A`` ``[S, m, m]`` float64 (storage the factorisation may take over)."""
        ...

    def lift(self, centred: torch.Tensor, source: int, inv_std: torch.Tensor) -> torch.Tensor:
        """Rows ``(x - mean) S`` ``[b, d]`` as ``A`` sees them (``[b, m]``)."""
        ...

    def through(self, shrunk: torch.Tensor, source: int, scale: torch.Tensor, cols: torch.Tensor | None = None) -> torch.Tensor:
        """Centred predictions (``[b, K]``, or ``cols`` only) of rows ``u (A + alpha I)^-1`` (``scale``: ``S`` in the product dtype)."""
        ...

    def weights(self, solve: Callable[[torch.Tensor], torch.Tensor], inv_std: torch.Tensor, source: int, columns: slice) -> torch.Tensor:
        """``W`` ``[d, k]`` for the output ``columns``, ``solve`` being ``(A + alpha I)^-1`` at one alpha."""
        ...

    def to(self, device) -> Solver:
        """What it holds on ``device`` (in place)."""
        ...


def choose_solver(n_train: int, d: int, n_outputs: int, n_predicted: int, n_products: int, n_fewest: int | None = None) -> str:
    """``"dual"`` where predicting through the training rows costs less arithmetic than forming
    ``X^T Y``. ``n_products`` predictions (alphas x band ratios) of ``n_predicted`` rows each, for
    ``n_outputs`` output columns (every target layer): the primal forms ``C = X^T Y``
    (``n_train * d * n_outputs``) and multiplies each prediction by it (``n_predicted * d *
    n_outputs``); the dual multiplies each prediction by the training rows (``n_predicted *
    n_train * (d + n_outputs)``). Both decompose ``X^T X`` (``d^3``), unless the rows are fewer
    than the hidden size: then the dual decomposes the Gram matrix ``X X^T`` (``n_train^3``) and
    the primal, in float32, loses accuracy (:class:`PrimalSolver`), so the dual is chosen; also
    where an earlier stage fits on fewer rows (``n_fewest``: the fit before validation, which
    leaves the validation rows out).

    >>> choose_solver(n_train=5200, d=4096, n_outputs=33 * 4096, n_predicted=1300, n_products=1)   # the paper's 7B shape
    'dual'
    >>> choose_solver(n_train=5200, d=576, n_outputs=31 * 576, n_predicted=1300, n_products=7)     # SmolLM2's, an alpha grid
    'primal'
    """
    if min(n_train, n_train if n_fewest is None else n_fewest) < d:
        return "dual"
    dual = n_products * n_predicted * n_train * (d + n_outputs)
    primal = n_train * d * n_outputs + n_products * n_predicted * d * n_outputs
    return "dual" if dual < primal else "primal"


def solver_for(stats: RidgeStatistics, product_dtype: torch.dtype, keep_stats: bool = True) -> Solver:
    """The solver of ``stats``: the one place that tells primal from dual and the dual's kernel form.
    Statistics that keep the rows (``keep_rows=True``, ``affine.solver=dual``) get the dual solver,
    in its kernel form where the rows are fewer than the dimensions; streamed sums the primal one,
    whose ``C`` takes over their ``X^T Y`` unless ``keep_stats``."""
    if not stats.keep_rows:
        return PrimalSolver.from_statistics(stats, product_dtype, keep_stats)
    rows = TrainingRows(stats, product_dtype)
    return KernelSolver(rows, product_dtype) if stats.n < stats.d else DualSolver(rows, product_dtype)
