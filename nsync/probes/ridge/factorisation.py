"""What every ridge solver shares: the column scale ``S`` and the decomposition of ``A + alpha I``.

``A`` is ``S Xc^T Xc S`` (``d x d``), or, in the dual solver's kernel form, the Gram matrix
``Xc S^2 Xc^T`` (``n x n``): the solver forms it (:mod:`nsync.probes.ridge.solvers`), a
:class:`Factorisation` solves with it. ``"eigh"`` (:class:`EighFactorisation`) decomposes ``A``
once per source and serves any alpha from it (an alpha grid); ``"inverse"``
(:class:`CholeskyFactorisation`) factors ``A + alpha I`` per alpha by Cholesky and solves through
it, several times cheaper for one alpha. Both are float64; rows to predict meet them in the
solution's product dtype.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Sequence

import torch

from nsync.probes.ridge.statistics import RidgeStatistics

#: Up to this many alphas per source a Cholesky factor per alpha costs less than one eigendecomposition
#: (float64 at d = 2048 on a CPU: eigh 1.9 s, Cholesky 0.13 s, a Cholesky inverse about 0.4 s).
INVERSE_UP_TO = 3


def scaling(stats: RidgeStatistics, scale: bool, column_scale: torch.Tensor | None = None) -> torch.Tensor:
    """``S`` ``[S, d]`` float64: each column's inverse training standard deviation with ``scale``
    (1 otherwise), times ``column_scale`` ``[S, d]`` where given (banded ridge's)."""
    if scale:
        std = torch.sqrt(torch.clamp(stats.column_ss() / stats.n, min=1e-12))  # as StandardScaler
    else:
        std = torch.ones_like(stats.sx)
    inv_std = 1.0 / std
    if column_scale is not None:
        inv_std = inv_std * column_scale.to(inv_std).reshape(inv_std.shape)
    return inv_std


def scaled_covariance(stats: RidgeStatistics, inv_std: torch.Tensor) -> torch.Tensor:
    """``A = S Xc^T Xc S`` ``[S, d, d]`` float64 (built in place on the statistics' covariance)."""
    return stats.covariance().mul_(inv_std[:, :, None]).mul_(inv_std[:, None, :])


def _factor(a: torch.Tensor, alpha: float) -> tuple[torch.Tensor, bool]:
    """What solves with ``a + alpha I`` (``a`` symmetric positive semi-definite, float64): its
    Cholesky factor ``(L, True)``, or ``(pinv, False)``, the pseudo-inverse, where that fails
    (alpha 0 on rank-deficient data: the minimum-norm solution). A solve through the factor costs
    what a product with the inverse does, without the inverse's ``2/3 n^3``."""
    shifted = a + alpha * torch.eye(a.shape[0], dtype=a.dtype, device=a.device)
    if alpha > 0:
        factor, info = torch.linalg.cholesky_ex(shifted)
        if int(info) == 0:
            return factor, True
    return torch.linalg.pinv(shifted, hermitian=True), False


class Factorisation(ABC):
    """Solves with ``A + alpha I`` of every source (``A`` ``[S, m, m]`` float64, symmetric positive
    semi-definite). Rows to predict pass through it in two steps: :meth:`rotate` once (shared by
    every alpha), then :meth:`times_inverse` per alpha."""

    def __init__(self, a: torch.Tensor, product_dtype: torch.dtype, alphas: Sequence[float] | Sequence[Sequence[float]] | None = None):
        """Of ``a`` (its storage may be re-used), for the ``alphas`` it will serve (one list for every
        source, or one per source; an eigendecomposition serves any)."""
        self.product_dtype = product_dtype

    @abstractmethod
    def inverse(self, source: int, alpha: float) -> torch.Tensor:
        """``(A + alpha I)^-1`` (float64) of one source (the pseudo-inverse at alpha 0)."""

    @abstractmethod
    def solve(self, source: int, alpha: float, v: torch.Tensor) -> torch.Tensor:
        """``(A + alpha I)^-1 v`` (float64) for ``v`` ``[m, k]``."""

    @abstractmethod
    def rotate(self, u: torch.Tensor, source: int) -> torch.Tensor:
        """Rows ``u`` ``[b, m]`` as every alpha starts from them."""

    @abstractmethod
    def times_inverse(self, z: torch.Tensor, source: int, alpha: float) -> torch.Tensor:
        """``u (A + alpha I)^-1`` (``[b, m]`` in ``product_dtype``) of rows ``z = rotate(u)``."""

    @abstractmethod
    def to(self, device) -> Factorisation:
        """The factorisation's tensors on ``device`` (in place)."""


class EighFactorisation(Factorisation):
    """One eigendecomposition ``A = Q diag(lambda) Q^T`` per source, for any alpha: rows to predict
    are rotated into ``A``'s eigenbasis once and shrunk by ``1 / (lambda + alpha)`` per alpha."""

    def __init__(self, a: torch.Tensor, product_dtype: torch.dtype, alphas: Sequence[float] | Sequence[Sequence[float]] | None = None):
        super().__init__(a, product_dtype, alphas)
        eigvals, self.eigvecs = torch.linalg.eigh(a)
        self.eigvals = torch.clamp(eigvals, min=0.0)
        self.q = self.eigvecs.to(product_dtype)

    def _shrink(self, source: int, alpha: float) -> torch.Tensor:
        """``1 / (eigenvalue + alpha)``, 0 where that is numerically 0 (alpha 0 on rank-deficient
        data, e.g. the kernel form, whose centred Gram matrix always has the ones vector in its null
        space: the minimum-norm solution)."""
        shifted = self.eigvals[source] + alpha
        tol = float(self.eigvals[source].max()) * shifted.shape[0] * torch.finfo(torch.float64).eps
        return torch.where(shifted > tol, 1.0 / shifted, torch.zeros_like(shifted))

    def inverse(self, source: int, alpha: float) -> torch.Tensor:
        return (self.eigvecs[source] * self._shrink(source, alpha)) @ self.eigvecs[source].T

    def solve(self, source: int, alpha: float, v: torch.Tensor) -> torch.Tensor:
        q = self.eigvecs[source]
        return q @ ((q.T @ v) * self._shrink(source, alpha)[:, None])

    def rotate(self, u: torch.Tensor, source: int) -> torch.Tensor:
        return u.to(self.product_dtype) @ self.q[source]

    def times_inverse(self, z: torch.Tensor, source: int, alpha: float) -> torch.Tensor:
        return (z * self._shrink(source, alpha).to(self.product_dtype)) @ self.q[source].T

    def to(self, device) -> EighFactorisation:
        self.eigvals, self.eigvecs, self.q = (t.to(device) for t in (self.eigvals, self.eigvecs, self.q))
        return self


class CholeskyFactorisation(Factorisation):
    """A Cholesky factor of ``A + alpha I`` per source and alpha asked for (``alphas``: one list for
    every source, or one per source), made at once; ``A``'s own storage takes each source's first.
    Rows to predict stay as they are and are solved for in float64 (a solve in float32 would lose
    more than the eigenbasis does)."""

    def __init__(self, a: torch.Tensor, product_dtype: torch.dtype, alphas: Sequence[float] | Sequence[Sequence[float]] | None = None):
        super().__init__(a, product_dtype, alphas)
        if alphas is None:
            raise ValueError("decomposition='inverse' needs the alphas the solution will serve")
        # (source, alpha) -> A + alpha I's Cholesky factor (True) or pseudo-inverse (False), float64
        self._factors: dict[tuple[int, float], tuple[torch.Tensor, bool]] = {}
        for s in range(a.shape[0]):
            wanted = alphas[s] if isinstance(alphas[0], Sequence) else alphas
            values = sorted({float(value) for value in wanted})  # type: ignore[union-attr,arg-type]
            for value in values[1:]:
                self._factors[(s, value)] = _factor(a[s], value)
            factor, is_cholesky = _factor(a[s], values[0])
            self._factors[(s, values[0])] = (a[s].copy_(factor), is_cholesky)

    def _stored_factor(self, source: int, alpha: float) -> tuple[torch.Tensor, bool]:
        key = (source, float(alpha))
        if key not in self._factors:
            served = sorted(a for s, a in self._factors if s == source)
            raise ValueError(
                f"this solution holds source {source}'s factors for alphas {served} only, not {alpha}: "
                "solve with one of them, or build the solution with this alpha in its grid"
            )
        return self._factors[key]

    def inverse(self, source: int, alpha: float) -> torch.Tensor:
        factor, is_cholesky = self._stored_factor(source, alpha)
        return torch.cholesky_inverse(factor) if is_cholesky else factor

    def solve(self, source: int, alpha: float, v: torch.Tensor) -> torch.Tensor:
        factor, is_cholesky = self._stored_factor(source, alpha)
        return torch.cholesky_solve(v, factor) if is_cholesky else factor @ v

    def rotate(self, u: torch.Tensor, source: int) -> torch.Tensor:
        return u  # the factor is applied in float64 (times_inverse)

    def times_inverse(self, z: torch.Tensor, source: int, alpha: float) -> torch.Tensor:
        return self.solve(source, alpha, z.double().T).T.to(self.product_dtype)  # z (A + alpha I)^-1, A symmetric

    def to(self, device) -> CholeskyFactorisation:
        self._factors = {key: (value.to(device), is_cholesky) for key, (value, is_cholesky) in self._factors.items()}
        return self


#: How a solution solves with A + alpha I, by name (``RidgeSolution(decomposition=...)``).
FACTORISATIONS: dict[str, type[Factorisation]] = {"eigh": EighFactorisation, "inverse": CholeskyFactorisation}
#: How a solution solves with A + alpha I: one eigendecomposition for any alpha, or a Cholesky factor per alpha.
DECOMPOSITIONS = tuple(FACTORISATIONS)


def factorisation_for(decomposition: str) -> type[Factorisation]:
    """The :class:`Factorisation` of a ``decomposition`` (one of :data:`DECOMPOSITIONS`): the one
    place that tells eigh from inverse."""
    if decomposition not in FACTORISATIONS:
        raise ValueError(f"decomposition must be one of {DECOMPOSITIONS}, got '{decomposition}'")
    return FACTORISATIONS[decomposition]
