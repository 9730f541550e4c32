"""The streamed sums of closed-form ridge (:class:`RidgeStatistics`) and the dual solver's view of
the training rows they keep (:class:`TrainingRows`).

Sums are taken around a fixed shift (the training mean), so hidden states with huge-mean dimensions
("massive activations") lose no precision. The primal solver's sums (``X^T X``, ``X^T Y``) add up
across batches and DDP processes; the dual solver's statistics keep the rows instead.
"""

from __future__ import annotations

from collections.abc import Callable

import torch

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
