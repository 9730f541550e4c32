"""The dual ridge solver: predictions through the training rows (the "hat" form ``x (X^T X + alpha
I)^-1 X^T Y``), never forming ``X^T Y``; where the training rows are fewer than the dimensions, its
kernel form, which decomposes the Gram matrix ``X X^T`` (``n x n``) instead of ``X^T X``."""

from __future__ import annotations

from collections.abc import Callable

import torch

from nsync.probes.ridge.factorisation import scaled_covariance
from nsync.probes.ridge.statistics import RidgeStatistics, TrainingRows


class DualSolver:
    """Predictions ``((x - m) S (A + alpha I)^-1 S Xc^T) Yc`` with ``A = S Xc^T Xc S`` (``d x d``),
    multiplied through the rows (:class:`TrainingRows`, ``c``) instead of ``C = Xc^T Yc``: the same
    numbers as the primal solver, cheaper where the rows to predict are few."""

    kernel = False

    def __init__(self, rows: TrainingRows, product_dtype: torch.dtype):
        self.c = rows
        self.product_dtype = product_dtype

    @property
    def width(self) -> int:
        """Output columns (every target layer's)."""
        return self.c.width

    def gram(self, stats: RidgeStatistics, inv_std: torch.Tensor) -> torch.Tensor:
        """``A = S Xc^T Xc S`` ``[S, d, d]`` float64 (from the kept rows)."""
        return scaled_covariance(stats, inv_std)

    def lift(self, centred: torch.Tensor, source: int, inv_std: torch.Tensor) -> torch.Tensor:
        """Rows ``(x - mean) S`` as ``A`` sees them: as they are."""
        return centred

    def through(self, shrunk: torch.Tensor, source: int, scale: torch.Tensor, cols: torch.Tensor | None = None) -> torch.Tensor:
        """Centred predictions (``cols`` only) from ``shrunk = (x - mean) S (A + alpha I)^-1``: ``(shrunk S Xc^T) Yc``."""
        left = shrunk * scale  # [b, d]
        return self.c.times(left @ self.c.x(source).T, cols)

    def _rows(self, source: int, columns: slice) -> tuple[torch.Tensor, torch.Tensor]:
        """``Xc`` of one source and ``Yc[:, columns]``, float64."""
        return self.c.x(source).double(), self.c.y_columns(columns).double()

    def weights(self, solve: Callable[[torch.Tensor], torch.Tensor], inv_std: torch.Tensor, source: int, columns: slice) -> torch.Tensor:
        """``W = S (A + alpha I)^-1 S Xc^T Yc`` for the output ``columns`` (``solve``: one alpha's, ``inv_std`` ``[d, 1]``)."""
        xc, yc = self._rows(source, columns)
        scaled_c = inv_std * (xc.T @ yc)
        return solve(scaled_c) * inv_std

    def to(self, device) -> DualSolver:
        self.c = self.c.to(device)
        return self


class KernelSolver(DualSolver):
    """The dual solver's kernel form, for fewer training rows than dimensions: ``A = Xc S^2 Xc^T``
    (``n x n``, the scaled Gram matrix) and predictions ``(x - m) S^2 Xc^T (A + alpha I)^-1 Yc``,
    the same numbers (cheaper, and in float32 far more accurate than the primal ``d x d`` form)."""

    kernel = True

    def gram(self, stats: RidgeStatistics, inv_std: torch.Tensor) -> torch.Tensor:
        """``A = Xs Xs^T`` ``[S, n, n]`` float64, ``Xs = Xc S``, one source at a time."""
        grams = []
        for s in range(stats.n_sources):
            xs = self.c.x(s).double() * inv_std[s]
            grams.append(xs @ xs.T)
        return torch.stack(grams)

    def lift(self, centred: torch.Tensor, source: int, inv_std: torch.Tensor) -> torch.Tensor:
        """Rows ``(x - mean) S`` as ``A`` sees them: ``(x - mean) S^2 Xc^T`` (products with the training rows)."""
        return (centred * inv_std).to(self.product_dtype) @ self.c.x(source).T

    def through(self, shrunk: torch.Tensor, source: int, scale: torch.Tensor, cols: torch.Tensor | None = None) -> torch.Tensor:
        """Centred predictions (``cols`` only) from ``shrunk``, the hat matrix's rows ``[b, n]``: ``shrunk Yc``."""
        return self.c.times(shrunk, cols)

    def weights(self, solve: Callable[[torch.Tensor], torch.Tensor], inv_std: torch.Tensor, source: int, columns: slice) -> torch.Tensor:
        """``W = S^2 Xc^T (A + alpha I)^-1 Yc`` for the output ``columns``."""
        xc, yc = self._rows(source, columns)
        return inv_std**2 * (xc.T @ solve(yc))
