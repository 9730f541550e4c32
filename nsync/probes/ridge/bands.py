"""Banded ridge: bands of columns, each with its own penalty, as column scales of plain ridge
(scaling a band by ``1 / sqrt(r)`` is ridge with ``r`` times the penalty on it)."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch

from nsync.probes.ridge.statistics import RidgeStatistics


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
