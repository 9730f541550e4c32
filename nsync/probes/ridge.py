"""Closed-form ridge regression from streamed sufficient statistics, for many targets at once.

Statistics are accumulated in float64 around a fixed shift (the training mean), so hidden
states with huge-mean dimensions ("massive activations") lose no precision: the paper's
float32 ``X^T X`` on raw states does. One eigendecomposition of ``X^T X`` per source serves
every target and every ``alpha``.
"""

from __future__ import annotations

import torch


class RidgeStatistics:
    """Sums over batches: ``n``, ``sum x``, ``sum y``, ``X^T X`` and ``X^T Y`` (all centred at the
    shifts), in float64. Batches of sums add up, so under DDP an all-reduce makes them exact.

    >>> stats = RidgeStatistics(x_shift=torch.zeros(3), y_shift=torch.zeros(2))
    >>> stats.update(torch.randn(10, 3), torch.randn(10, 2))
    >>> stats.n
    10
    """

    def __init__(self, x_shift: torch.Tensor, y_shift: torch.Tensor, matmul_dtype: torch.dtype = torch.float64):
        # The shift is rounded to the working dtype so that centring a float32 batch needs no
        # float64 copy (x - shift of two nearby float32 numbers is exact); sums are float64.
        self.x_shift = x_shift.to(matmul_dtype).double()
        self.y_shift = y_shift.to(matmul_dtype).double()
        self._x_shift_mm = x_shift.to(matmul_dtype)
        self._y_shift_mm = y_shift.to(matmul_dtype)
        d, k = x_shift.numel(), y_shift.numel()
        device = x_shift.device
        self.n = 0
        self.sx = torch.zeros(d, dtype=torch.float64, device=device)
        self.sy = torch.zeros(k, dtype=torch.float64, device=device)
        self.sxx = torch.zeros(d, d, dtype=torch.float64, device=device)
        self.sxy = torch.zeros(d, k, dtype=torch.float64, device=device)
        self.matmul_dtype = matmul_dtype

    def update(self, x: torch.Tensor, y: torch.Tensor) -> None:
        # Centred first, so the products may run in float32 without cancellation.
        xc = x.to(self.matmul_dtype) - self._x_shift_mm
        yc = y.to(self.matmul_dtype) - self._y_shift_mm
        self.n += x.shape[0]
        self.sx += xc.sum(0).double()
        self.sy += yc.sum(0).double()
        self.sxx += (xc.T @ xc).double()
        self.sxy += (xc.T @ yc).double()

    def tensors(self) -> list[torch.Tensor]:
        """The sums, for an all-reduce (``n`` travels as a tensor too)."""
        return [torch.tensor([float(self.n)], dtype=torch.float64, device=self.sx.device), self.sx, self.sy, self.sxx, self.sxy]

    def load(self, tensors: list[torch.Tensor]) -> None:
        n, self.sx, self.sy, self.sxx, self.sxy = tensors
        self.n = int(n.item())

    def __iadd__(self, other: "RidgeStatistics") -> "RidgeStatistics":
        self.n += other.n
        self.sx += other.sx
        self.sy += other.sy
        self.sxx += other.sxx
        self.sxy += other.sxy
        return self

    def means(self) -> tuple[torch.Tensor, torch.Tensor]:
        return self.x_shift + self.sx / self.n, self.y_shift + self.sy / self.n

    def centred(self) -> tuple[torch.Tensor, torch.Tensor]:
        """``Xc^T Xc`` and ``Xc^T Yc`` around the data's own means."""
        mx, my = self.sx / self.n, self.sy / self.n
        return self.sxx - self.n * torch.outer(mx, mx), self.sxy - self.n * torch.outer(mx, my)


class RidgeSolution:
    """``eigh(X^T X)`` of one source, ready to give weights for any ``alpha``.

    ``scale=True`` solves on inputs divided by their training standard deviation (the
    returned weights apply to unscaled inputs).
    """

    def __init__(self, stats: RidgeStatistics, scale: bool = False, product_dtype: torch.dtype = torch.float64):
        if stats.n < 2:
            raise ValueError("ridge needs at least two training rows")
        cxx, cxy = stats.centred()
        self.x_mean, self.y_mean = stats.means()
        if scale:
            std = torch.sqrt(torch.clamp(torch.diagonal(cxx) / stats.n, min=1e-12))  # as StandardScaler
        else:
            std = torch.ones_like(self.x_mean)
        self.inv_std = 1.0 / std
        cxx = cxx * torch.outer(self.inv_std, self.inv_std)
        self.eigvals, self.eigvecs = torch.linalg.eigh(cxx)
        self.eigvals = torch.clamp(self.eigvals, min=0.0)
        # G = Q^T Xc^T Yc: the only product with the targets; shared by every alpha. Its size
        # (hidden x all target dims) makes these products the cost of a solve; float32 is enough
        # here because the data are centred and 1 / (eigenvalue + alpha) <= 1 / alpha.
        self.product_dtype = product_dtype
        self.q = self.eigvecs.to(product_dtype)
        self.g = self.q.T @ (cxy * self.inv_std[:, None]).to(product_dtype)

    def predict(self, x: torch.Tensor, alpha: float) -> torch.Tensor:
        """``x @ W + b`` for ``alpha`` without forming ``W``: with few rows (validation batches
        over an alpha grid) ``(x Q) D G`` costs a fraction of ``Q D G``."""
        z = ((x.double() - self.x_mean) * self.inv_std) @ self.eigvecs
        z = z / (self.eigvals + alpha)
        return (z.to(self.product_dtype) @ self.g).double() + self.y_mean

    def weights(self, alpha: float) -> tuple[torch.Tensor, torch.Tensor]:
        """``(W, b)`` with ``y ~ x @ W + b``; the bias is not regularised."""
        w = (self.q @ (self.g / (self.eigvals + alpha).to(self.product_dtype)[:, None])).double()
        w = w * self.inv_std[:, None]
        b = self.y_mean - self.x_mean @ w
        return w, b


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
