"""Closed-form ridge regression from streamed sums, for many source layers and targets at once.

Sums are taken around a fixed shift (the training mean), so hidden states with huge-mean
dimensions ("massive activations") lose no precision: the paper's float32 ``X^T X`` on raw
states does. The batch products of centred data run in float32 (or float64) and are added up in
float64. One eigendecomposition per source layer serves every target and every ``alpha``: of
``X^T X`` (``d x d``), or, where the training rows are fewer than the hidden size, of the Gram
matrix ``X X^T`` (``n x n``: the kernel form, cheaper and, in float32, far more accurate there).
The products with all target layers are one GEMM per batch. The choice of alpha (and of the band
penalty ratio of banded ridge) on validation R² is here too: plain tensor functions, which
:class:`nsync.probes.AffineProbe` only calls.

Two solvers give the same numbers (to float rounding; :func:`choose_solver` picks by arithmetic):

- ``primal`` streams ``X^T Y`` (``[d, K]`` per source, ``K`` = every target layer's columns) and
  predicts with it; its sums add up across batches and DDP processes;
- ``dual`` keeps the centred training rows instead and predicts through them (the "hat" form
  ``x (X^T X + alpha I)^-1 X^T Y``), never forming ``X^T Y``; one process.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import torch

from nsync.errors import warn_once, warn_share

log = logging.getLogger("nsync.probes")
#: How an alpha grid is chosen on validation data: per (source, target layer) cell, or per source layer.
ALPHA_CHOICES = ("cell", "source")
#: How predictions use X^T Y: formed (primal) or through the training rows (dual).
SOLVERS = ("primal", "dual")
#: How a solution solves with A + alpha I: one eigendecomposition for any alpha, or a Cholesky factor per alpha.
DECOMPOSITIONS = ("eigh", "inverse")
#: Up to this many alphas per source a Cholesky factor per alpha costs less than one eigendecomposition
#: (float64 at d = 2048 on a CPU: eigh 1.9 s, Cholesky 0.13 s, a Cholesky inverse about 0.4 s).
INVERSE_UP_TO = 3
#: Rows per block of the dual solver's kept rows (products over them are summed block by block).
ROW_BLOCK = 1024
#: Output columns per product of the dual solver's predictions (its converted rows: n x this, re-used).
COLUMN_BLOCK = 4096


class RidgeStatistics:
    """Sums over batches: ``n``, ``Σx``, ``Σy``, ``X^T X`` and ``X^T Y`` (centred at the shifts), for
    one source (``x_shift`` ``[d]``, batches ``[b, d]``) or several (``x_shift`` ``[S, d]``, batches
    ``[b, S, d]``). ``n``, ``Σx``, ``Σy`` and ``X^T X`` are float64; ``X^T Y``, by far the largest
    (``[S, d, K]``), is accumulated in ``matmul_dtype`` in place, one GEMM per batch: float32 is
    exact enough because the shifts are close to the data's means (pass the training means).
    Sums add up, so under DDP an all-reduce makes them exact.

    ``keep_rows=True`` (the dual solver) keeps the rows as given (float16 states stay float16, no
    centred float32 copy) instead of ``X^T X`` and ``X^T Y`` (:class:`TrainingRows`): the solution
    forms what its shape needs from them, centring block by block.

    >>> stats = RidgeStatistics(x_shift=torch.zeros(3), y_shift=torch.zeros(2))
    >>> stats.update(torch.randn(10, 3), torch.randn(10, 2))
    >>> stats.n
    10
    """

    def __init__(self, x_shift: torch.Tensor, y_shift: torch.Tensor, matmul_dtype: torch.dtype = torch.float64, keep_rows: bool = False):
        self.single = x_shift.dim() == 1
        x_shift = x_shift.reshape(-1, x_shift.shape[-1])
        # The shift is rounded to the working dtype so that centring a float32 batch needs no
        # float64 copy (x - shift of two nearby float32 numbers is exact).
        self._x_shift_mm = x_shift.to(matmul_dtype)
        self._y_shift_mm = y_shift.reshape(-1).to(matmul_dtype)
        self.x_shift = self._x_shift_mm.double()
        self.y_shift = self._y_shift_mm.double()
        s, d = x_shift.shape
        k = self.y_shift.numel()
        device = x_shift.device
        self.n = 0
        self.sx = torch.zeros(s, d, dtype=torch.float64, device=device)
        self.sy = torch.zeros(k, dtype=torch.float64, device=device)
        self.keep_rows = keep_rows
        self.matmul_dtype = matmul_dtype
        # keep_rows: neither X^T X nor X^T Y (whose n*d*K product the dual form never needs).
        self.sxx: torch.Tensor | None = None if keep_rows else torch.zeros(s, d, d, dtype=torch.float64, device=device)
        self.sxy: torch.Tensor | None = None if keep_rows else torch.zeros(s, d, k, dtype=matmul_dtype, device=device)
        self.x_rows: list[torch.Tensor] = []  # keep_rows: [b, S, d] blocks as given
        self.y_rows: list[torch.Tensor] = []  # keep_rows: [b, K] blocks as given

    @property
    def n_sources(self) -> int:
        return self.sx.shape[0]

    @property
    def d(self) -> int:
        return self.sx.shape[1]

    def update(self, x: torch.Tensor, y: torch.Tensor) -> None:
        """``x`` ``[b, d]`` or ``[b, S, d]``, ``y`` ``[b, K]`` (all target layers flattened)."""
        b = x.shape[0]
        x, y = x.reshape(b, self.n_sources, -1), y.reshape(b, -1)
        self.n += b
        if self.keep_rows:
            # float64 sums of the rows as given (exact for float16 and float32 states), shifted
            # after; a few rows at a time (a sum to float64 converts its whole input first)
            for xs, ys in zip(x.split(256), y.split(256), strict=True):
                self.sx += xs.sum(0, dtype=torch.float64)
                self.sy += ys.sum(0, dtype=torch.float64)
            self.sx -= b * self.x_shift
            self.sy -= b * self.y_shift
            _append_rows(self.x_rows, x)
            _append_rows(self.y_rows, y)
            return
        # Centred first, so the products may run in float32 without cancellation.
        xc = x.to(self.matmul_dtype) - self._x_shift_mm
        yc = y.to(self.matmul_dtype) - self._y_shift_mm
        self.sx += xc.sum(0)  # in-place adds promote to float64 element by element, without a copy
        self.sy += yc.sum(0)
        assert self.sxx is not None and self.sxy is not None
        xs = xc.transpose(0, 1)  # [S, b, d]
        self.sxx += torch.bmm(xs.transpose(1, 2), xs)
        # Every source against every target layer: one GEMM [S*d, b] @ [b, K], added in place.
        self.sxy.view(-1, yc.shape[1]).addmm_(xc.reshape(b, -1).T, yc)

    def tensors(self) -> list[torch.Tensor]:
        """The sums, for an all-reduce (``n`` travels as a tensor too)."""
        if self.keep_rows:
            raise ValueError("statistics that keep rows (the dual solver) are gathered, not all-reduced: use gather_rows()")
        assert self.sxx is not None and self.sxy is not None
        return [torch.tensor([float(self.n)], dtype=torch.float64, device=self.sx.device), self.sx, self.sy, self.sxx, self.sxy]

    def load(self, tensors: list[torch.Tensor]) -> None:
        n, self.sx, self.sy, self.sxx, self.sxy = tensors
        self.n = int(n.item())

    def gather_rows(self, all_gather: Callable[[torch.Tensor], torch.Tensor], all_reduce: Callable[[torch.Tensor], torch.Tensor]) -> None:
        """Every process's kept rows and sums, in place (the dual solver under DDP: each process
        then solves with all the training rows and predicts its own share of the rows to score).
        ``all_gather`` stacks a same-shaped tensor from every process (``[world, ...]``),
        ``all_reduce`` sums one. Rows travel as bytes, padded to the longest share: any dtype, any
        backend (gloo has no float16)."""
        if not self.keep_rows:
            raise ValueError("gather_rows() is for statistics that keep rows; all-reduce tensors() instead")
        counts = all_gather(torch.tensor([self.n], device=self.sx.device)).reshape(-1).tolist()
        parts = []
        for rows, empty in ((self.x_rows, (0, self.n_sources, self.sx.shape[1])), (self.y_rows, (0, self.sy.shape[0]))):
            dtype = rows[0].dtype if rows else self.matmul_dtype
            local = torch.cat(rows) if rows else torch.empty(empty, dtype=dtype, device=self.sx.device)
            padded = torch.zeros((max(counts), *local.shape[1:]), dtype=dtype, device=local.device)
            padded[: local.shape[0]] = local
            del local
            rows.clear()  # this process's copy goes before every process's arrives
            gathered = all_gather(padded.view(torch.uint8)).view(dtype)  # [world, longest, ...]
            parts.append([gathered[rank, :count] for rank, count in enumerate(counts) if count])
        self.x_rows, self.y_rows = parts
        self.n = int(sum(counts))
        self.sx, self.sy = all_reduce(self.sx), all_reduce(self.sy)

    def __iadd__(self, other: RidgeStatistics) -> RidgeStatistics:
        if self.keep_rows != other.keep_rows:
            raise ValueError("cannot add statistics that keep rows to ones that keep X^T Y")
        self.n += other.n
        self.sx += other.sx
        self.sy += other.sy
        if self.keep_rows:
            self.x_rows += other.x_rows
            self.y_rows += other.y_rows
        else:
            assert self.sxx is not None and self.sxy is not None and other.sxx is not None and other.sxy is not None
            self.sxx += other.sxx
            self.sxy += other.sxy
        return self

    def means(self) -> tuple[torch.Tensor, torch.Tensor]:
        """``[S, d]`` and ``[K]``: the data's means."""
        return self.x_shift + self.sx / self.n, self.y_shift + self.sy / self.n

    def column_ss(self) -> torch.Tensor:
        """``[S, d]`` float64: each column's sum of squares around the data's mean."""
        mx = self.sx / self.n
        if self.sxx is not None:
            return torch.diagonal(self.sxx, dim1=1, dim2=2) - self.n * mx**2
        return sum(((block.double() - self.x_shift - mx) ** 2).sum(0) for block in self.x_rows)  # type: ignore[return-value]

    def covariance(self) -> torch.Tensor:
        """``[S, d, d]`` float64: ``X^T X`` around the data's means (from the kept rows, in the
        same float64-summed batch products as the streamed sums). A new tensor, built in place:
        no temporaries of its size."""
        mx = self.sx / self.n
        if self.sxx is not None:
            cxx = self.sxx.clone()  # the sums stay as they are: a refit may add to them
        else:
            cxx = torch.zeros(self.n_sources, self.d, self.d, dtype=torch.float64, device=self.sx.device)
            for block in self.x_rows:
                for s in range(self.n_sources):
                    xs = block[:, s].to(self.matmul_dtype) - self._x_shift_mm[s]
                    cxx[s] += xs.T @ xs
        for s in range(self.n_sources):
            cxx[s].addr_(mx[s], mx[s], alpha=-self.n)
        return cxx


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


def _append_rows(blocks: list[torch.Tensor], rows: torch.Tensor) -> None:
    """Kept rows grow in blocks of about :data:`ROW_BLOCK` (few large products later, not many small ones)."""
    if blocks and blocks[-1].shape[0] < ROW_BLOCK:
        blocks[-1] = torch.cat([blocks[-1], rows])
    else:
        blocks.append(rows)


class TrainingRows:
    """The dual solver's training rows as :class:`RidgeStatistics` kept them (blocks as given, e.g.
    float16), read around the data's own means block by block, never as a centred copy: each block
    is converted and centred at the statistics' shift when used (exact for nearby float32 numbers),
    and the small remaining offset of the mean is a rank-one correction: ``h @ Yc = h @ (Y - shift)
    - (h 1) my^T``.

    ``x(source)`` ``[n, d]`` is one source layer's centred rows (formed once and kept while the
    same source is asked for); ``times(h)`` is ``h @ Yc`` for ``h`` ``[m, n]`` (``cols``: only
    those output columns)."""

    def __init__(self, stats: RidgeStatistics, dtype: torch.dtype):
        self.dtype = dtype
        self.n = stats.n
        self._x, self._y = list(stats.x_rows), list(stats.y_rows)  # copies of the lists: the statistics may grow later
        self.x_shift, self.y_shift = stats.x_shift.to(dtype), stats.y_shift.to(dtype)
        self.mx = (stats.sx / stats.n).to(dtype)  # offsets of the data's means from the shifts
        self.my = (stats.sy / stats.n).to(dtype)
        self._source: tuple[int, torch.Tensor] | None = None

    @property
    def n_sources(self) -> int:
        return self._x[0].shape[1]

    @property
    def width(self) -> int:
        return self._y[0].shape[1]

    def x(self, source: int) -> torch.Tensor:
        if self._source is None or self._source[0] != source:
            self._source = None  # free the previous source's rows first
            rows = torch.cat([block[:, source] for block in self._x]).to(self.dtype)
            self._source = (source, rows.sub_(self.x_shift[source]).sub_(self.mx[source]))
        return self._source[1]

    def _y_block(self, block: torch.Tensor, cols: torch.Tensor | slice | None) -> torch.Tensor:
        if cols is None:
            return block.to(self.dtype) - self.y_shift
        return block[:, cols].to(self.dtype) - self.y_shift[cols]

    def times(self, h: torch.Tensor, cols: torch.Tensor | None = None) -> torch.Tensor:
        """``h @ Yc`` ``[m, k]``, a block of output columns at a time: each block's rows are converted
        and shifted into one re-used buffer (no fresh temporaries of the rows' size) and multiplied
        over all training rows at once, so each output column is written once."""
        columns = torch.arange(self.width, device=h.device) if cols is None else cols
        out = torch.empty(h.shape[0], len(columns), dtype=self.dtype, device=h.device)
        width = max(1, min(len(columns), COLUMN_BLOCK))
        buffer = torch.empty(self.n, width, dtype=self.dtype, device=h.device)
        h_sum = h.sum(1)
        for start in range(0, len(columns), width):
            part = slice(start, min(start + width, len(columns)))
            block_cols = slice(start, part.stop) if cols is None else columns[part]
            rows = buffer[:, : part.stop - start]
            first = 0
            for block in self._y:  # a converting copy, then the shift: each vectorised (a mixed-dtype sub is not; 3x slower)
                rows[first : first + block.shape[0]].copy_(block[:, block_cols]).sub_(self.y_shift[block_cols])
                first += block.shape[0]
            torch.mm(h, rows, out=out[:, part])
            out[:, part].addr_(h_sum, self.my[block_cols], alpha=-1.0)  # the mean's offset from the shift: rank one
        return out

    def y_columns(self, columns: slice) -> torch.Tensor:
        """``Yc[:, columns]`` ``[n, k]``: a few target columns of the centred rows."""
        return torch.cat([self._y_block(block, columns) for block in self._y]) - self.my[columns]

    def to(self, device) -> TrainingRows:
        self._x = [block.to(device) for block in self._x]
        self._y = [block.to(device) for block in self._y]
        self.x_shift, self.y_shift, self.mx, self.my = (t.to(device) for t in (self.x_shift, self.y_shift, self.mx, self.my))
        self._source = None
        return self


def choose_solver(n_train: int, d: int, n_outputs: int, n_predicted: int, n_products: int, n_fewest: int | None = None) -> str:
    """``"dual"`` where predicting through the training rows costs less arithmetic than forming
    ``X^T Y``. ``n_products`` predictions (alphas x band ratios) of ``n_predicted`` rows each, for
    ``n_outputs`` output columns (every target layer): the primal forms ``C = X^T Y``
    (``n_train * d * n_outputs``) and multiplies each prediction by it (``n_predicted * d *
    n_outputs``); the dual multiplies each prediction by the training rows (``n_predicted *
    n_train * (d + n_outputs)``). Both decompose ``X^T X`` (``d^3``), unless the rows are fewer
    than the hidden size: then the dual decomposes the Gram matrix ``X X^T`` (``n_train^3``) and
    the primal, in float32, loses accuracy (:class:`RidgeSolution`), so the dual is chosen; also
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


class RidgeSolution:
    """Ridge solutions of every source, ready to predict or give weights for any ``alpha`` (one per
    target layer if wanted).

    The matrix inverted is ``A + alpha I`` with ``A = S Xc^T Xc S`` (``d x d``), or, for the dual
    solver with fewer training rows than dimensions, the Gram matrix ``A = Xc S^2 Xc^T`` (``n x n``,
    the kernel form: ``x S^2 Xc^T (A + alpha I)^-1 Yc``, the same predictions). ``decomposition``:
    ``"eigh"`` decomposes ``A`` once per source and serves any alpha from it (an alpha grid);
    ``"inverse"`` factors ``A + alpha I`` per alpha by Cholesky and solves through it, several
    times cheaper for one alpha.

    Predictions never form the weights: ``((x - m) S (A + alpha I)^-1 S) C`` with ``C = Xc^T Yc``
    costs one ``[b, d] @ [d, K]`` product per source and alpha, the same as applying ``W``, without
    the ``d^2 K`` cost of forming it; the dual multiplies through the rows instead of ``C``
    (:class:`TrainingRows`). ``C`` takes over the statistics' ``X^T Y`` buffer unless
    ``keep_stats=True`` (then it is copied; needed to add more sums later); ``shared_c`` re-uses
    the ``C`` (or rows) of another solution of the same statistics instead (they do not depend on
    the column scales).

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
        shared_c: torch.Tensor | TrainingRows | None = None,
        decomposition: str = "eigh",
        alphas: Sequence[float] | Sequence[Sequence[float]] | None = None,
    ):
        if stats.n < 2:
            raise ValueError("ridge needs at least two training rows")
        if decomposition not in DECOMPOSITIONS:
            raise ValueError(f"decomposition must be one of {DECOMPOSITIONS}, got '{decomposition}'")
        self.single = stats.single
        n, d = stats.n, stats.d
        self.x_mean, self.y_mean = stats.means()
        if scale:
            std = torch.sqrt(torch.clamp(stats.column_ss() / n, min=1e-12))  # as StandardScaler
        else:
            std = torch.ones_like(self.x_mean)
        self.inv_std = 1.0 / std  # [S, d]: the column scale S
        if column_scale is not None:
            self.inv_std = self.inv_std * column_scale.to(self.inv_std).reshape(self.inv_std.shape)
        self.product_dtype = product_dtype
        self._scale_mm = self.inv_std.to(product_dtype)
        # What predictions multiply: C = Xc^T Yc (primal) or the training rows (dual).
        self.c: torch.Tensor | TrainingRows
        if shared_c is not None:
            self.c = shared_c
        elif stats.keep_rows:
            self.c = TrainingRows(stats, product_dtype)
        else:
            assert stats.sxy is not None
            mx = stats.sx / n
            c = stats.sxy.clone() if keep_stats else stats.sxy
            c = c.to(product_dtype)  # no copy when the dtypes agree
            for s in range(stats.n_sources):  # around the data's own means: a rank-one update in place
                c[s].addr_(mx[s].to(product_dtype), stats.sy.to(product_dtype), alpha=-1.0)  # n mx my^T = mx sy^T
            self.c = c
        self.kernel = isinstance(self.c, TrainingRows) and n < d
        if self.kernel:  # the scaled Gram matrix Xs Xs^T, Xs = Xc S, one source at a time
            assert isinstance(self.c, TrainingRows)
            grams = []
            for s in range(stats.n_sources):
                xs = self.c.x(s).double() * self.inv_std[s]
                grams.append(xs @ xs.T)
            a = torch.stack(grams)
        else:
            a = stats.covariance().mul_(self.inv_std[:, :, None]).mul_(self.inv_std[:, None, :])
            if not stats.keep_rows and n <= d and product_dtype == torch.float32:
                warn_once(
                    log,
                    ("primal_float32_rank", n, d),
                    "primal ridge with %d training rows for %d dimensions and float32 products: R² may be off by up to 1e-2 at "
                    "small alpha; use affine.solver=dual or auto, or affine.matmul_dtype=float64",
                    n,
                    d,
                )
        self.decomposition = decomposition
        # (source, alpha) -> A + alpha I's Cholesky factor (True) or pseudo-inverse (False), float64
        self._factors: dict[tuple[int, float], tuple[torch.Tensor, bool]] = {}
        if decomposition == "eigh":
            eigvals, self.eigvecs = torch.linalg.eigh(a)
            self.eigvals = torch.clamp(eigvals, min=0.0)
            self.q = self.eigvecs.to(product_dtype)
            return
        # The factor for each alpha asked for, made now; A's own storage takes the first one's.
        if alphas is None:
            raise ValueError("decomposition='inverse' needs the alphas the solution will serve")
        for s in range(stats.n_sources):
            wanted = alphas[s] if isinstance(alphas[0], Sequence) else alphas
            values = sorted({float(value) for value in wanted})  # type: ignore[union-attr,arg-type]
            for value in values[1:]:
                self._factors[(s, value)] = _factor(a[s], value)
            factor, is_cholesky = _factor(a[s], values[0])
            self._factors[(s, values[0])] = (a[s].copy_(factor), is_cholesky)

    @property
    def n_sources(self) -> int:
        return self.x_mean.shape[0]

    @property
    def width(self) -> int:
        """Output columns (every target layer's)."""
        return self.c.width if isinstance(self.c, TrainingRows) else self.c.shape[2]

    def to(self, device) -> RidgeSolution:
        """The solution's tensors on ``device`` (in place; Lightning moves the module, not this)."""
        names = ["x_mean", "y_mean", "inv_std", "_scale_mm", "c"] + (["eigvals", "eigvecs", "q"] if self.decomposition == "eigh" else [])
        for name in names:
            setattr(self, name, getattr(self, name).to(device))
        self._factors = {key: (value.to(device), is_cholesky) for key, (value, is_cholesky) in self._factors.items()}
        return self

    def _shrink(self, source: int, alpha: float) -> torch.Tensor:
        """``1 / (eigenvalue + alpha)``, 0 where that is numerically 0 (alpha 0 on rank-deficient
        data, e.g. the kernel form, whose centred Gram matrix always has the ones vector in its null
        space: the minimum-norm solution)."""
        shifted = self.eigvals[source] + alpha
        tol = float(self.eigvals[source].max()) * shifted.shape[0] * torch.finfo(torch.float64).eps
        return torch.where(shifted > tol, 1.0 / shifted, torch.zeros_like(shifted))

    def inverse(self, source: int, alpha: float) -> torch.Tensor:
        """``(A + alpha I)^-1`` (float64) of one source (the pseudo-inverse at alpha 0)."""
        if self.decomposition == "eigh":
            return (self.eigvecs[source] * self._shrink(source, alpha)) @ self.eigvecs[source].T
        factor, is_cholesky = self._stored_factor(source, alpha)
        return torch.cholesky_inverse(factor) if is_cholesky else factor

    def _stored_factor(self, source: int, alpha: float) -> tuple[torch.Tensor, bool]:
        key = (source, float(alpha))
        if key not in self._factors:
            served = sorted(a for s, a in self._factors if s == source)
            raise ValueError(
                f"this solution holds source {source}'s factors for alphas {served} only, not {alpha}: "
                "solve with one of them, or build the solution with this alpha in its grid"
            )
        return self._factors[key]

    def solve(self, source: int, alpha: float, v: torch.Tensor) -> torch.Tensor:
        """``(A + alpha I)^-1 v`` (float64) for ``v`` ``[m, k]``."""
        if self.decomposition == "eigh":
            q = self.eigvecs[source]
            return q @ ((q.T @ v) * self._shrink(source, alpha)[:, None])
        factor, is_cholesky = self._stored_factor(source, alpha)
        return torch.cholesky_solve(v, factor) if is_cholesky else factor @ v

    def rotated(self, x: torch.Tensor, source: int) -> torch.Tensor:
        """What every alpha starts from: ``(x - mean) S``, in the kernel form ``(x - mean) S^2 Xc^T``
        (the rows' products with the training rows); with ``decomposition="eigh"``, in ``A``'s eigenbasis."""
        centred = (x.double() - self.x_mean[source]) * self.inv_std[source]
        if self.kernel:
            assert isinstance(self.c, TrainingRows)
            u = (centred * self.inv_std[source]).to(self.product_dtype) @ self.c.x(source).T
        else:
            u = centred if self.decomposition == "inverse" else centred.to(self.product_dtype)  # the factor is applied in float64
        return u if self.decomposition == "inverse" else u @ self.q[source]

    def _times(self, z: torch.Tensor, value: float, source: int, cols: torch.Tensor | None = None) -> torch.Tensor:
        """The centred predictions (``cols`` only) of rotated rows ``z`` at one ``alpha``."""
        if self.decomposition == "eigh":
            shrunk = (z * self._shrink(source, value).to(self.product_dtype)) @ self.q[source].T
        else:  # in float64: a solve in float32 would lose more than the eigenbasis does
            shrunk = self.solve(source, value, z.double().T).T.to(self.product_dtype)  # z (A + alpha I)^-1, A symmetric
        if self.kernel:  # shrunk is the hat matrix's rows [b, n]
            assert isinstance(self.c, TrainingRows)
            return self.c.times(shrunk, cols)
        left = shrunk * self._scale_mm[source]  # [b, d]
        if isinstance(self.c, TrainingRows):
            return self.c.times(left @ self.c.x(source).T, cols)
        c = self.c[source]
        return left @ (c if cols is None else c[:, cols])

    def predict_centred(
        self, x: torch.Tensor, alpha, source: int = 0, z: torch.Tensor | None = None, targets: list[int] | None = None
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

    def predict(self, x: torch.Tensor, alpha, source: int = 0) -> torch.Tensor:
        """``x @ W + b`` (float64 ``[b, K]``)."""
        return self.predict_centred(x, alpha, source).double() + self.y_mean

    def weights(self, alpha, source: int = 0, columns: slice = slice(None)) -> tuple[torch.Tensor, torch.Tensor]:
        """``(W, b)`` with ``y ~ x @ W + b`` for the output ``columns``; the bias is not regularised."""
        alpha = float(alpha)
        inv_std = self.inv_std[source][:, None]
        if isinstance(self.c, TrainingRows):
            xc, yc = self.c.x(source).double(), self.c.y_columns(columns).double()
            if self.kernel:  # W = S^2 Xc^T (A + alpha I)^-1 Yc
                w = inv_std**2 * (xc.T @ self.solve(source, alpha, yc))
                return w, self.y_mean[columns] - self.x_mean[source] @ w
            scaled_c = inv_std * (xc.T @ yc)
        else:
            scaled_c = inv_std * self.c[source][:, columns].double()
        w = self.solve(source, alpha, scaled_c) * inv_std
        b = self.y_mean[columns] - self.x_mean[source] @ w
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


@dataclass
class Bands:
    """Banded ridge's design (:class:`nsync.probes.AffineProbe`): where each band after the first
    begins, the penalty ratio combinations to choose from per cell on validation (:func:`band_scales`),
    the band whose total variance the others are brought to, and optionally which combinations each
    (source, target layer) cell may choose (``[combinations, S, T]`` bool; default all)."""

    start: list[int]
    ratios: list
    reference: str = "first"
    allowed: torch.Tensor | None = None


#: Which band's total variance the others are brought to (``band_scales``): the first's (the source
#: beside a baseline: the alpha grid keeps its meaning) or the largest's (features side by side).
BAND_REFERENCES = ("first", "largest")


def band_scales(
    stats: RidgeStatistics,
    band_start: int | Sequence[int] | None,
    ratios: Sequence[float | Sequence[float]],
    standardised: bool = False,
    reference: str = "first",
) -> list[torch.Tensor | None]:
    """Column scales ``[S, d]`` of banded ridge, one per combination of band penalty ratios
    (``[None]`` without bands). ``band_start``: where each band after the first begins (one column
    or several, ascending). Each of those bands is first brought to the first band's total variance
    on the rows of ``stats`` (bands differ in size and scale by orders of magnitude), then divided
    by ``sqrt(r)``, ``r`` its penalty over the first band's: each entry of ``ratios`` gives one
    ``r`` per band (a number: the same for every band). ``reference="largest"``: every band, the
    first too, is brought to the largest band's total variance instead. ``standardised``: columns
    are scaled to unit variance first (the solution's ``scale=True``), so each band's total
    variance is its width.

    >>> stats = RidgeStatistics(torch.zeros(3), torch.zeros(1))
    >>> stats.update(torch.tensor([[1.0, 10.0, 0.0], [-1.0, -10.0, 0.0]]), torch.zeros(2, 1))
    >>> [s.tolist() for s in band_scales(stats, 1, [1.0, 4.0])]   # the band [10, 0] brought to the source's variance
    [[[1.0, 0.1, 0.1]], [[1.0, 0.05, 0.05]]]
    >>> stats = RidgeStatistics(torch.zeros(3), torch.zeros(1))
    >>> stats.update(torch.tensor([[1.0, 10.0, 2.0], [-1.0, -10.0, -2.0]]), torch.zeros(2, 1))
    >>> [s.tolist() for s in band_scales(stats, [1, 2], [(1.0, 4.0)])]   # two bands, each its own ratio
    [[[1.0, 0.1, 0.25]]]
    """
    if band_start is None:
        return [None]
    var = stats.column_ss()  # [S, d] centred sums of squares
    starts = band_bounds(band_start, var.shape[1])
    if standardised:
        var = (var > 0).to(var.dtype)
    if reference not in BAND_REFERENCES:
        raise ValueError(f"reference must be one of {BAND_REFERENCES}, got '{reference}'")
    bounds = [0, *starts]
    totals = [var[:, lo:hi].sum(1) for lo, hi in zip(bounds, bounds[1:], strict=False)]  # [S] per band
    target = totals[0] if reference == "first" else torch.stack(totals).amax(0)

    def to_target(total: torch.Tensor) -> torch.Tensor:  # a constant band (or reference) stays as it is
        both = (total > 0) & (target > 0)
        return torch.sqrt(torch.where(both, target, 1.0) / torch.where(both, total, 1.0))

    equalise = [to_target(t) for t in totals[1:]]
    scales: list[torch.Tensor | None] = []
    for combination in ratios:
        per_band = [float(r) for r in combination] if isinstance(combination, Sequence) else [float(combination)] * len(equalise)
        if len(per_band) != len(equalise):
            raise ValueError(f"band penalty ratios {combination} name {len(per_band)} bands; the design has {len(equalise)} after the first")
        scale = torch.ones_like(var)
        scale[:, : starts[0]] = to_target(totals[0])[:, None]
        for (lo, hi), eq, r in zip(zip(starts, starts[1:], strict=False), equalise, per_band, strict=True):
            scale[:, lo:hi] = (eq / r**0.5)[:, None]
        scales.append(scale)
    return scales


def band_bounds(band_start: int | Sequence[int], d: int) -> list[int]:
    """Where each band after the first begins, then ``d``: checked to ascend inside ``(0, d)``.

    >>> band_bounds(3, 8), band_bounds([3, 5], 8)
    ([3, 8], [3, 5, 8])
    """
    starts = [int(s) for s in band_start] if isinstance(band_start, Sequence) else [int(band_start)]
    if not starts or any(b <= a for a, b in zip([0, *starts], [*starts, d], strict=True)):
        raise ValueError(f"band starts {starts} must ascend inside (0, {d})")
    return [*starts, d]


def choose_alpha(scores: torch.Tensor, alphas: list[float], per: str = "cell") -> torch.Tensor:
    """``[sources, targets]`` alphas from validation R² ``[alphas, sources, targets]``.

    ``per="cell"``: the best alpha of every (source, target layer) cell; a cell whose target
    layer has no R² for any alpha (no variance on the validation side) gets NaN and a warning,
    never the first alpha by default. ``per="source"``: the best mean over target layers (NaN
    layers left out) for each source layer.

    >>> s = torch.tensor([[[0.1, float("nan")]], [[0.3, float("nan")]]])   # 2 alphas, 1 source, 2 targets
    >>> choose_alpha(s, [1.0, 10.0]).tolist()
    [[10.0, nan]]
    """
    scores = scores.cpu()  # a few numbers per cell; the grid is on the CPU too
    a = torch.tensor(alphas, dtype=torch.float64)
    n_alphas, n_sources, n_targets = scores.shape
    if per == "source":
        mean = scores.nanmean(2)  # [alphas, sources]
        if torch.isnan(mean).all(0).any():
            raise ValueError(
                "no target layer has a validation R² for some source layer: no alpha can be chosen "
                "(the validation targets do not vary; give more validation data)"
            )
        by_source = a[torch.nan_to_num(mean, nan=-torch.inf).argmax(0)]
        _warn_at_grid_edge(by_source, alphas)  # one choice per source layer: counted once each
        return by_source[:, None].expand(n_sources, n_targets).clone()
    chosen = a[torch.nan_to_num(scores, nan=-torch.inf).argmax(0)]
    empty = torch.isnan(scores).all(0)
    if empty.any():
        layers = tuple(sorted(set(torch.nonzero(empty)[:, 1].tolist())))
        warn_once(
            log,
            ("no_alpha", layers),
            "target layer positions %s have no validation R² for any alpha (constant on the validation side, e.g. "
            "the embedding at the last prompt token): no alpha chosen there, and their test R² is undefined",
            list(layers),
        )
        chosen[empty] = float("nan")
    _warn_at_grid_edge(chosen, alphas)
    return chosen


def _warn_at_grid_edge(chosen: torch.Tensor, alphas: list[float], share: float = 0.25) -> None:
    """Warn when the grid's largest (or smallest) alpha wins in more than ``share`` of the cells
    (of the whole fit run): the best alpha probably lies beyond the grid (ridge alpha scales with
    the states' variance)."""
    finite = chosen[torch.isfinite(chosen)]
    if len(alphas) < 2 or finite.numel() == 0:
        return
    for edge, value, fix in (("largest", max(alphas), "upward (or set affine.scale=true)"), ("smallest", min(alphas), "downward")):
        warn_share(
            log,
            ("alpha_edge", edge, value),
            int((finite == value).sum()),
            finite.numel(),
            share,
            "the alpha grid's %(edge)s value (%(value)g) was chosen in %(percent).0f%% of the cells: the best alpha may lie "
            "beyond the grid; extend affine.alphas %(fix)s",
            {"edge": edge, "value": value, "fix": fix},
        )


@dataclass
class ValidationChoice:
    """What validation R² chose for every (source, target layer) cell (CPU tensors)."""

    alpha: torch.Tensor  # [S, T] float64: the chosen alpha (NaN where no alpha has an R²)
    ratio_index: torch.Tensor  # [S, T] int64: position of the chosen band penalty ratio (0 without bands)
    val_r2: torch.Tensor  # [S, T]: validation R² at the chosen alpha and ratio (NaN where no alpha was chosen)
    val_r2_by_alpha: torch.Tensor  # [alphas, S, T]: each alpha at its best ratio


def choose_on_validation(by_ratio: torch.Tensor, alphas: list[float], per: str = "cell", allowed: torch.Tensor | None = None) -> ValidationChoice:
    """The alpha (:func:`choose_alpha`) and band penalty ratio of every cell from validation R²
    ``[ratios, alphas, S, T]``: each alpha is scored at its best ratio, and a cell's ratio is the
    one that gave its chosen alpha that score. ``allowed`` ``[ratios, S, T]``: the ratios each cell
    may choose from (default all).

    >>> by_ratio = torch.tensor([[0.1, 0.2, 0.1], [0.3, 0.5, 0.2]], dtype=torch.float64)[:, :, None, None]  # 2 ratios, 3 alphas, 1 cell
    >>> c = choose_on_validation(by_ratio, [1.0, 10.0, 100.0])
    >>> c.alpha.item(), c.ratio_index.item(), c.val_r2.item()   # alpha 10 scores best (0.5), at the second ratio
    (10.0, 1, 0.5)
    """
    by_ratio = by_ratio.cpu()
    if allowed is not None:
        by_ratio = torch.where(allowed.cpu()[:, None], by_ratio, torch.nan)
    scores = torch.nan_to_num(by_ratio, nan=-torch.inf).amax(0)
    scores = torch.where(torch.isinf(scores), torch.nan, scores)
    alpha = choose_alpha(scores, alphas, per)
    grid = torch.tensor(alphas, dtype=torch.float64)
    chosen = (torch.nan_to_num(alpha, nan=alphas[0])[None] == grid[:, None, None]).to(torch.int64).argmax(0)  # [S, T] position in the grid
    at_alpha = by_ratio.gather(1, chosen[None, None].expand(by_ratio.shape[0], 1, -1, -1)).squeeze(1)  # [ratios, S, T]
    ratio_index = torch.nan_to_num(at_alpha, nan=-torch.inf).argmax(0)
    val_r2 = torch.where(torch.isnan(alpha), torch.nan, scores.gather(0, chosen[None])[0])
    return ValidationChoice(alpha, ratio_index, val_r2, scores)
