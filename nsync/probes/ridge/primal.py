"""The primal ridge solver: predictions through ``C = Xc^T Yc`` (``[S, d, K]``, every target layer's
columns), formed from the streamed ``X^T Y``."""

from __future__ import annotations

import logging
from collections.abc import Callable

import torch

from nsync.errors import warn_once
from nsync.probes.ridge.factorisation import scaled_covariance
from nsync.probes.ridge.statistics import RidgeStatistics

log = logging.getLogger("nsync.probes")


class PrimalSolver:
    """Predictions ``((x - m) S (A + alpha I)^-1 S) C`` with ``A = S Xc^T Xc S`` (``d x d``): one
    ``[b, d] @ [d, K]`` product per source and alpha, the same as applying ``W``, without the
    ``d^2 K`` cost of forming it. ``c`` is ``C`` ``[S, d, K]`` in the product dtype.

    Precision: float32 products agree with float64 to about 1e-6 in R² where the rows outnumber the
    dimensions; with fewer rows the ``d x d`` form amplifies float32 rounding in ``X^T X``'s null
    space by ``1 / alpha`` (R² off by 1e-2 at alpha 0.1), hence a warning there (the dual solver's
    kernel form has no such loss)."""

    kernel = False

    def __init__(self, c: torch.Tensor, product_dtype: torch.dtype):
        self.c = c
        self.product_dtype = product_dtype

    @classmethod
    def from_statistics(cls, stats: RidgeStatistics, product_dtype: torch.dtype, keep_stats: bool = True) -> PrimalSolver:
        """``C`` around the data's own means, from the statistics' ``X^T Y``: it takes over that
        buffer unless ``keep_stats`` (then it is copied; needed to add more sums later)."""
        assert stats.sxy is not None
        mx = stats.sx / stats.n
        c = stats.sxy.clone() if keep_stats else stats.sxy
        c = c.to(product_dtype)  # no copy when the dtypes agree
        for s in range(stats.n_sources):  # around the data's own means: a rank-one update in place
            c[s].addr_(mx[s].to(product_dtype), stats.sy.to(product_dtype), alpha=-1.0)  # n mx my^T = mx sy^T
        return cls(c, product_dtype)

    @property
    def width(self) -> int:
        """Output columns (every target layer's)."""
        return self.c.shape[2]

    def gram(self, stats: RidgeStatistics, inv_std: torch.Tensor) -> torch.Tensor:
        """``A = S Xc^T Xc S`` ``[S, d, d]`` float64."""
        a = scaled_covariance(stats, inv_std)
        n, d = stats.n, stats.d
        if n <= d and self.product_dtype == torch.float32:
            warn_once(
                log,
                ("primal_float32_rank", n, d),
                "primal ridge with %d training rows for %d dimensions and float32 products: R² may be off by up to 1e-2 at "
                "small alpha; use affine.solver=dual or auto, or affine.matmul_dtype=float64",
                n,
                d,
            )
        return a

    def lift(self, centred: torch.Tensor, source: int, inv_std: torch.Tensor) -> torch.Tensor:
        """Rows ``(x - mean) S`` as ``A`` sees them: as they are."""
        return centred

    def through(self, shrunk: torch.Tensor, source: int, scale: torch.Tensor, cols: torch.Tensor | None = None) -> torch.Tensor:
        """Centred predictions (``cols`` only) from ``shrunk = (x - mean) S (A + alpha I)^-1``: ``shrunk S C``."""
        left = shrunk * scale  # [b, d]
        c = self.c[source]
        return left @ (c if cols is None else c[:, cols])

    def weights(self, solve: Callable[[torch.Tensor], torch.Tensor], inv_std: torch.Tensor, source: int, columns: slice) -> torch.Tensor:
        """``W = S (A + alpha I)^-1 S C`` for the output ``columns`` (``solve``: one alpha's, ``inv_std`` ``[d, 1]``)."""
        scaled_c = inv_std * self.c[source][:, columns].double()
        return solve(scaled_c) * inv_std

    def to(self, device) -> PrimalSolver:
        self.c = self.c.to(device)
        return self
