"""The choice of alpha (and of the band penalty ratio of banded ridge) on validation R²: plain
tensor functions, which :class:`nsync.probes.AffineProbe` only calls."""

from __future__ import annotations

import logging
from dataclasses import dataclass

import torch

from nsync.errors import warn_once, warn_share

log = logging.getLogger("nsync.probes")
#: How an alpha grid is chosen on validation data: per (source, target layer) cell, or per source layer.
ALPHA_CHOICES = ("cell", "source")


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
        _warn_at_grid_edge(by_source, alphas, mean)  # one choice per source layer: counted once each
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
    _warn_at_grid_edge(chosen, alphas, scores)
    return chosen


def _warn_at_grid_edge(
    chosen: torch.Tensor, alphas: list[float], scores: torch.Tensor | None = None, share: float = 0.25, rise: float = 0.005
) -> None:
    """Warn when the grid's largest (or smallest) alpha wins in more than ``share`` of the cells
    (of the whole fit run) while the validation R² (``scores`` ``[alphas, ...]``, as ``chosen``)
    still rises towards that edge by more than ``rise``: the best alpha probably lies beyond the
    grid (ridge alpha scales with the states' variance). A cell whose R² is flat at the edge (a
    control without a relation tends to the mean's 0 as alpha grows; a near-exact relation barely
    gains from a smaller alpha) is no sign of a short grid, and is not counted."""
    valid = torch.isfinite(chosen)
    finite = chosen[valid]
    if len(alphas) < 2 or finite.numel() == 0:
        return
    order = sorted(range(len(alphas)), key=lambda i: alphas[i])
    for edge, at, inner, fix in (
        ("largest", order[-1], order[-2], "upward (or set affine.scale=true)"),
        ("smallest", order[0], order[1], "downward"),
    ):
        hits = finite == alphas[at]
        if scores is not None:
            gain = (scores[at] - scores[inner]).to(chosen.device)
            hits &= torch.nan_to_num(gain, nan=0.0)[valid] > rise
            if edge == "largest":  # R² at or below 0: the probe predicts nothing, a larger alpha only nears the mean
                hits &= torch.nan_to_num(scores[at].to(chosen.device), nan=0.0)[valid] > 0
        warn_share(
            log,
            ("alpha_edge", edge, alphas[at]),
            int(hits.sum()),
            finite.numel(),
            share,
            "the alpha grid's %(edge)s value (%(value)g) was chosen in %(percent).0f%% of the cells, with the validation R² still "
            "rising there: the best alpha may lie beyond the grid; extend affine.alphas %(fix)s",
            {"edge": edge, "value": alphas[at], "fix": fix},
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
