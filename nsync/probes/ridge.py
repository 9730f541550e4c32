"""Closed-form ridge regression from streamed sums, for many source layers and targets at once.

Sums are taken around a fixed shift (the training mean), so hidden states with huge-mean
dimensions ("massive activations") lose no precision: the paper's float32 ``X^T X`` on raw
states does. The batch products of centred data run in float32 (or float64) and are added up in
float64. One eigendecomposition of ``X^T X`` per source layer serves every target and every
``alpha``; the products with all target layers are one GEMM per batch. The choice of alpha (and
of the band penalty ratio of banded ridge) on validation R² is here too: plain tensor functions,
which :class:`nsync.probes.AffineProbe` only calls.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

import torch

from nsync.errors import warn_once

log = logging.getLogger("nsync.probes")
#: How an alpha grid is chosen on validation data: per (source, target layer) cell, or per source layer.
ALPHA_CHOICES = ("cell", "source")


class RidgeStatistics:
    """Sums over batches: ``n``, ``Σx``, ``Σy``, ``X^T X`` and ``X^T Y`` (centred at the shifts), for
    one source (``x_shift`` ``[d]``, batches ``[b, d]``) or several (``x_shift`` ``[S, d]``, batches
    ``[b, S, d]``). ``n``, ``Σx``, ``Σy`` and ``X^T X`` are float64; ``X^T Y``, by far the largest
    (``[S, d, K]``), is accumulated in ``matmul_dtype`` in place, one GEMM per batch: float32 is
    exact enough because the shifts are close to the data's means (pass the training means).
    Sums add up, so under DDP an all-reduce makes them exact.

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
        self.sxx = torch.zeros(s, d, d, dtype=torch.float64, device=device)
        # keep_rows (the dual solver): the centred rows instead of X^T Y, whose n*d*K product the
        # dual form never needs; rows cannot be all-reduced, so this is for one process.
        self.sxy: torch.Tensor | None = None if keep_rows else torch.zeros(s, d, k, dtype=matmul_dtype, device=device)
        self.x_rows: list[torch.Tensor] = []
        self.y_rows: list[torch.Tensor] = []
        self.keep_rows = keep_rows
        self.matmul_dtype = matmul_dtype

    @property
    def n_sources(self) -> int:
        return self.sx.shape[0]

    def update(self, x: torch.Tensor, y: torch.Tensor) -> None:
        """``x`` ``[b, d]`` or ``[b, S, d]``, ``y`` ``[b, K]`` (all target layers flattened)."""
        b = x.shape[0]
        # Centred first, so the products may run in float32 without cancellation.
        xc = x.reshape(b, self.n_sources, -1).to(self.matmul_dtype) - self._x_shift_mm
        yc = y.reshape(b, -1).to(self.matmul_dtype) - self._y_shift_mm
        self.n += b
        self.sx += xc.sum(0)  # in-place adds promote to float64 element by element, without a copy
        self.sy += yc.sum(0)
        xs = xc.transpose(0, 1)  # [S, b, d]
        self.sxx += torch.bmm(xs.transpose(1, 2), xs)
        if self.sxy is None:
            self.x_rows.append(xc)
            self.y_rows.append(yc)
            return
        # Every source against every target layer: one GEMM [S*d, b] @ [b, K], added in place.
        self.sxy.view(-1, yc.shape[1]).addmm_(xc.reshape(b, -1).T, yc)

    def tensors(self) -> list[torch.Tensor]:
        """The sums, for an all-reduce (``n`` travels as a tensor too)."""
        if self.sxy is None:
            raise ValueError("statistics that keep rows (the dual solver) cannot be all-reduced: use the primal solver under DDP")
        return [torch.tensor([float(self.n)], dtype=torch.float64, device=self.sx.device), self.sx, self.sy, self.sxx, self.sxy]

    def load(self, tensors: list[torch.Tensor]) -> None:
        n, self.sx, self.sy, self.sxx, self.sxy = tensors
        self.n = int(n.item())

    def __iadd__(self, other: RidgeStatistics) -> RidgeStatistics:
        self.n += other.n
        self.sx += other.sx
        self.sy += other.sy
        self.sxx += other.sxx
        if self.sxy is None or other.sxy is None:
            if self.sxy is not None or other.sxy is not None:
                raise ValueError("cannot add statistics that keep rows to ones that keep X^T Y")
            self.x_rows += other.x_rows
            self.y_rows += other.y_rows
        else:
            self.sxy += other.sxy
        return self

    def means(self) -> tuple[torch.Tensor, torch.Tensor]:
        """``[S, d]`` and ``[K]``: the data's means."""
        return self.x_shift + self.sx / self.n, self.y_shift + self.sy / self.n


class CrossProducts:
    """``C = Xc^T Yc`` of every source (centred at the data's means), as the predictions use it:
    ``left @ C``. Primal: ``C`` itself ``[S, d, K]``. Dual: the centred rows ``Xc`` ``[n, S, d]`` and
    ``Yc`` ``[n, K]``, and ``left @ C = (left @ Xc^T) @ Yc``: ``b*n*(d + K)`` per product instead of
    ``n*d*K`` once plus ``b*d*K`` per product, the cheaper form when the rows to predict and the
    training rows are fewer than the hidden size (:func:`choose_solver`)."""

    def __init__(self, c: torch.Tensor | None = None, rows: tuple[torch.Tensor, torch.Tensor] | None = None):
        if (c is None) == (rows is None):
            raise ValueError("CrossProducts takes C or the rows, one of them")
        self.c, self.rows = c, rows

    @property
    def dual(self) -> bool:
        return self.rows is not None

    @property
    def n_sources(self) -> int:
        return self.c.shape[0] if self.c is not None else self.rows[0].shape[1]  # type: ignore[index]

    @property
    def width(self) -> int:
        return self.c.shape[2] if self.c is not None else self.rows[1].shape[1]  # type: ignore[index]

    def times(self, left: torch.Tensor, source: int, cols: torch.Tensor | None = None) -> torch.Tensor:
        """``left @ C[source]`` (only the columns ``cols`` if given)."""
        if self.c is not None:
            c = self.c[source]
            return left @ (c if cols is None else c[:, cols])
        xc, yc = self.rows  # type: ignore[misc]
        return (left @ xc[:, source].T) @ (yc if cols is None else yc[:, cols])

    def columns(self, source: int, columns: slice) -> torch.Tensor:
        """``C[source][:, columns]`` (the dual forms only these)."""
        if self.c is not None:
            return self.c[source][:, columns]
        xc, yc = self.rows  # type: ignore[misc]
        return xc[:, source].T @ yc[:, columns]

    def to(self, device) -> CrossProducts:
        if self.c is not None:
            self.c = self.c.to(device)
        else:
            self.rows = (self.rows[0].to(device), self.rows[1].to(device))  # type: ignore[index]
        return self


#: How predictions use X^T Y: formed (primal) or through the training rows (dual).
SOLVERS = ("primal", "dual")


def choose_solver(n_train: int, d: int, n_outputs: int, n_predicted: int, n_products: int) -> str:
    """``"dual"`` where predicting through the training rows costs less arithmetic than forming
    ``X^T Y``. ``n_products`` predictions (alphas x band ratios) of ``n_predicted`` rows each, for
    ``n_outputs`` output columns (every target layer): the dual costs ``n_predicted * n_train *
    (d + n_outputs)`` per prediction; the primal ``n_train * d * n_outputs`` once (``C``) plus
    ``n_predicted * d * n_outputs`` per prediction. The eigendecomposition is the same in both.

    >>> choose_solver(n_train=5200, d=4096, n_outputs=33 * 4096, n_predicted=1300, n_products=1)   # the paper's 7B shape
    'dual'
    >>> choose_solver(n_train=5200, d=576, n_outputs=31 * 576, n_predicted=1300, n_products=7)     # SmolLM2's, an alpha grid
    'primal'
    """
    dual = n_products * n_predicted * n_train * (d + n_outputs)
    primal = n_train * d * n_outputs + n_products * n_predicted * d * n_outputs
    return "dual" if dual < primal else "primal"


class RidgeSolution:
    """``eigh(X^T X)`` of every source, ready to predict or give weights for any ``alpha`` (one per
    target layer if wanted), from one eigendecomposition per source.

    Predictions never form the weights: ``(x Q) D Q^T S C`` with ``C = Xc^T Yc`` costs one
    ``[b, d] @ [d, K]`` product per source and alpha, the same as applying ``W``, without the
    ``d^2 K`` cost of forming it. ``C`` takes over the statistics' ``X^T Y`` buffer unless
    ``keep_stats=True`` (then it is copied; needed to add more sums later); ``shared_c`` re-uses
    the centred ``C`` of another solution of the same statistics instead (it does not depend on
    the column scales).

    Columns are scaled before the ridge (``S``; the weights apply to unscaled inputs): by their
    inverse training standard deviation with ``scale=True``, and by ``column_scale`` ``[S, d]``.
    Scaling a band of columns by ``1 / sqrt(r)`` is ridge with ``r`` times the penalty on that
    band: banded ridge, one eigendecomposition per set of band penalties.
    """

    def __init__(
        self,
        stats: RidgeStatistics,
        scale: bool = False,
        product_dtype: torch.dtype = torch.float64,
        keep_stats: bool = True,
        column_scale: torch.Tensor | None = None,
        shared_c: CrossProducts | None = None,
    ):
        if stats.n < 2:
            raise ValueError("ridge needs at least two training rows")
        self.single = stats.single
        n = stats.n
        mx = stats.sx / n  # offsets of the data's means from the shifts
        self.x_mean, self.y_mean = stats.means()
        cxx = stats.sxx - n * mx[:, :, None] * mx[:, None, :]
        if scale:
            std = torch.sqrt(torch.clamp(torch.diagonal(cxx, dim1=1, dim2=2) / n, min=1e-12))  # as StandardScaler
        else:
            std = torch.ones_like(self.x_mean)
        self.inv_std = 1.0 / std  # [S, d]: the column scale S
        if column_scale is not None:
            self.inv_std = self.inv_std * column_scale.to(self.inv_std).reshape(self.inv_std.shape)
        cxx = cxx * self.inv_std[:, :, None] * self.inv_std[:, None, :]
        self.eigvals, self.eigvecs = torch.linalg.eigh(cxx)
        self.eigvals = torch.clamp(self.eigvals, min=0.0)
        self.product_dtype = product_dtype
        self.q = self.eigvecs.to(product_dtype)
        self._scale_mm = self.inv_std.to(product_dtype)
        if shared_c is not None:
            self.c = shared_c
            return
        if stats.sxy is None:  # the dual form: the rows around the data's own means
            my = stats.sy / n
            xc = torch.cat(stats.x_rows).to(product_dtype) - mx.to(product_dtype)
            yc = torch.cat(stats.y_rows).to(product_dtype) - my.to(product_dtype)
            self.c = CrossProducts(rows=(xc, yc))
            return
        c = stats.sxy.clone() if keep_stats else stats.sxy
        c = c.to(product_dtype)  # no copy when the dtypes agree
        for s in range(stats.n_sources):  # around the data's own means: a rank-one update in place
            c[s].addr_(mx[s].to(product_dtype), stats.sy.to(product_dtype), alpha=-1.0)  # n mx my^T = mx sy^T
        self.c = CrossProducts(c=c)

    @property
    def n_sources(self) -> int:
        return self.c.n_sources

    def to(self, device) -> RidgeSolution:
        """The solution's tensors on ``device`` (in place; Lightning moves the module, not this)."""
        for name in ("x_mean", "y_mean", "inv_std", "eigvals", "eigvecs", "q", "_scale_mm", "c"):
            setattr(self, name, getattr(self, name).to(device))
        return self

    def rotated(self, x: torch.Tensor, source: int) -> torch.Tensor:
        """``(x - mean) S @ Q``: the rows in the eigenbasis."""
        return ((x.double() - self.x_mean[source]) * self.inv_std[source]).to(self.product_dtype) @ self.q[source]

    def predict_centred(
        self, x: torch.Tensor, alpha, source: int = 0, z: torch.Tensor | None = None, targets: list[int] | None = None
    ) -> torch.Tensor:
        """``x @ W + b - y_mean`` (``[b, K]`` in ``product_dtype``) for rows ``x`` ``[b, d]`` of one
        source, with ``alpha`` a scalar or one value per target layer. ``z`` re-uses the rotated rows
        of an earlier call (an alpha grid). ``targets``: only these target layers' columns are
        computed (the others are left 0)."""
        z = self.rotated(x, source) if z is None else z
        a = torch.as_tensor(alpha, dtype=torch.float64).reshape(-1)
        shrunk = lambda value: ((z / (self.eigvals[source] + value).to(self.product_dtype)) @ self.q[source].T) * self._scale_mm[source]  # noqa: E731
        if targets is None and (a.numel() == 1 or bool((a == a[0]).all())):
            return self.c.times(shrunk(a[0]), source)
        # One alpha per target layer: one product per distinct alpha, over its target layers' columns.
        n_targets = a.numel() if a.numel() > 1 else (self.c.width if targets is None else max(targets) + 1)
        k = self.c.width // n_targets if a.numel() > 1 else None
        if k is None:  # a scalar alpha on some target layers: the caller says how wide a layer is
            raise ValueError("targets= needs one alpha per target layer")
        a = a.expand(n_targets) if a.numel() == 1 else a
        wanted = torch.zeros(n_targets, dtype=torch.bool)
        wanted[list(range(n_targets)) if targets is None else targets] = True
        out = torch.zeros(x.shape[0], self.c.width, dtype=self.product_dtype, device=x.device)
        for value in torch.unique(a[wanted]):
            cols = torch.cat([torch.arange(t * k, (t + 1) * k) for t in torch.nonzero((a == value) & wanted).flatten().tolist()]).to(x.device)
            out[:, cols] = self.c.times(shrunk(value), source, cols)
        return out

    def predict(self, x: torch.Tensor, alpha, source: int = 0) -> torch.Tensor:
        """``x @ W + b`` (float64 ``[b, K]``)."""
        return self.predict_centred(x, alpha, source).double() + self.y_mean

    def weights(self, alpha, source: int = 0, columns: slice = slice(None)) -> tuple[torch.Tensor, torch.Tensor]:
        """``(W, b)`` with ``y ~ x @ W + b`` for the output ``columns``; the bias is not regularised."""
        q = self.eigvecs[source]
        shrink = 1.0 / (self.eigvals[source] + float(alpha))
        scaled_c = self.inv_std[source][:, None] * self.c.columns(source, columns).double()
        w = (q * shrink) @ (q.T @ scaled_c) * self.inv_std[source][:, None]
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


def band_scales(stats: RidgeStatistics, band_start: int | None, ratios: list[float], standardised: bool = False) -> list[torch.Tensor | None]:
    """Column scales ``[S, d]`` of banded ridge, one per band penalty ratio ``r`` (``[None]`` without
    a band): the baseline band's columns (from ``band_start`` on) first brought to the source band's
    total variance on the rows of ``stats`` (bands differ in size and scale by orders of magnitude),
    then divided by ``sqrt(r)``. ``standardised``: columns are scaled to unit variance first (the
    solution's ``scale=True``), so each band's total variance is its width.

    >>> stats = RidgeStatistics(torch.zeros(3), torch.zeros(1))
    >>> stats.update(torch.tensor([[1.0, 10.0, 0.0], [-1.0, -10.0, 0.0]]), torch.zeros(2, 1))
    >>> [s.tolist() for s in band_scales(stats, 1, [1.0, 4.0])]   # the band [10, 0] brought to the source's variance
    [[[1.0, 0.1, 0.1]], [[1.0, 0.05, 0.05]]]
    """
    if band_start is None:
        return [None]
    mx = stats.sx / stats.n
    var = torch.diagonal(stats.sxx, dim1=1, dim2=2) - stats.n * mx**2  # [S, d] centred sums of squares
    if standardised:
        var = (var > 0).to(var.dtype)
    source, band = var[:, :band_start].sum(1), var[:, band_start:].sum(1)
    equalise = torch.sqrt(source / torch.where(band > 0, band, torch.ones_like(band)))  # [S]
    scales: list[torch.Tensor | None] = []
    for r in ratios:
        scale = torch.ones_like(var)
        scale[:, band_start:] = (equalise / r**0.5)[:, None]
        scales.append(scale)
    return scales


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
        return a[torch.nan_to_num(mean, nan=-torch.inf).argmax(0)][:, None].expand(n_sources, n_targets).clone()
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
    """Warn when the grid's largest (or smallest) alpha wins in more than ``share`` of the cells:
    the best alpha probably lies beyond the grid (ridge alpha scales with the states' variance)."""
    finite = chosen[torch.isfinite(chosen)]
    if len(alphas) < 2 or finite.numel() == 0:
        return
    for edge, value, fix in (("largest", max(alphas), "upward (or set affine.scale=true)"), ("smallest", min(alphas), "downward")):
        at_edge = float((finite == value).double().mean())
        if at_edge > share:
            warn_once(
                log,
                ("alpha_edge", edge),
                "the alpha grid's %s value (%g) was chosen in %.0f%% of the cells: the best alpha may lie beyond the grid; extend affine.alphas %s",
                edge,
                value,
                100 * at_edge,
                fix,
            )


@dataclass
class ValidationChoice:
    """What validation R² chose for every (source, target layer) cell (CPU tensors)."""

    alpha: torch.Tensor  # [S, T] float64: the chosen alpha (NaN where no alpha has an R²)
    ratio_index: torch.Tensor  # [S, T] int64: position of the chosen band penalty ratio (0 without bands)
    val_r2: torch.Tensor  # [S, T]: validation R² at the chosen alpha and ratio (NaN where no alpha was chosen)
    val_r2_by_alpha: torch.Tensor  # [alphas, S, T]: each alpha at its best ratio


def choose_on_validation(by_ratio: torch.Tensor, alphas: list[float], per: str = "cell") -> ValidationChoice:
    """The alpha (:func:`choose_alpha`) and band penalty ratio of every cell from validation R²
    ``[ratios, alphas, S, T]``: each alpha is scored at its best ratio, and a cell's ratio is the
    one that gave its chosen alpha that score.

    >>> by_ratio = torch.tensor([[0.1, 0.2, 0.1], [0.3, 0.5, 0.2]], dtype=torch.float64)[:, :, None, None]  # 2 ratios, 3 alphas, 1 cell
    >>> c = choose_on_validation(by_ratio, [1.0, 10.0, 100.0])
    >>> c.alpha.item(), c.ratio_index.item(), c.val_r2.item()   # alpha 10 scores best (0.5), at the second ratio
    (10.0, 1, 0.5)
    """
    by_ratio = by_ratio.cpu()
    scores = torch.nan_to_num(by_ratio, nan=-torch.inf).amax(0)
    scores = torch.where(torch.isinf(scores), torch.nan, scores)
    alpha = choose_alpha(scores, alphas, per)
    grid = torch.tensor(alphas, dtype=torch.float64)
    chosen = (torch.nan_to_num(alpha, nan=alphas[0])[None] == grid[:, None, None]).to(torch.int64).argmax(0)  # [S, T] position in the grid
    at_alpha = by_ratio.gather(1, chosen[None, None].expand(by_ratio.shape[0], 1, -1, -1)).squeeze(1)  # [ratios, S, T]
    ratio_index = torch.nan_to_num(at_alpha, nan=-torch.inf).argmax(0)
    val_r2 = torch.where(torch.isnan(alpha), torch.nan, scores.gather(0, chosen[None])[0])
    return ValidationChoice(alpha, ratio_index, val_r2, scores)
