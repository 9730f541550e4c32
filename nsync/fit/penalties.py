"""The band penalty grids of the variance partition's ridge fits (:mod:`nsync.fit.partition`):
the baseline alone and the source beside it, each feature a band with a penalty of its own."""

from __future__ import annotations

import itertools
from collections.abc import Sequence

import numpy as np
import torch

from nsync.data.bands import Baseline
from nsync.fit.config import PartitionConfig
from nsync.probes.ridge import Bands

#: The penalty ratio of a band whose ratio is fixed (an indicator, ``nsync.data.bands.INDICATOR_BANDS``):
#: brought to the largest band's total variance, one column is then in effect unpenalised.
FIXED_BAND_RATIO = 1.0


def baseline_bands(cfg: PartitionConfig, feature_starts: list[int], fixed: Sequence[bool] = ()) -> Bands | None:
    """Banded ridge for a baseline alone (``None`` for one band: plain ridge): every band
    brought to the largest one's total variance, each later band at each of
    ``cfg.feature_ratios`` of the first one's penalty (whose own is the alpha), or at
    :data:`FIXED_BAND_RATIO` where ``fixed`` says so.

    >>> baseline_bands(PartitionConfig(feature_ratios=[0.1, 1.0]), [4, 7]).ratios
    [(0.1, 0.1), (0.1, 1.0), (1.0, 0.1), (1.0, 1.0)]
    >>> baseline_bands(PartitionConfig(feature_ratios=[0.1, 10.0]), [4, 5], fixed=(False, True)).ratios
    [(0.1, 1.0), (10.0, 1.0)]
    """
    if not feature_starts:
        return None
    grid = tuple(float(q) for q in cfg.feature_ratios)
    options = [(FIXED_BAND_RATIO,) if f else grid for f in (tuple(fixed) or (False,) * len(feature_starts))]
    return Bands(list(feature_starts), list(itertools.product(*options)), reference="largest")


def joint_bands(cfg: PartitionConfig, d_in: int, feature_starts: list[int], baseline_ratio: np.ndarray | None) -> Bands:
    """Banded ridge for the source (``d_in`` columns) beside a baseline: every band brought to the
    source's total variance (its alpha grid keeps its meaning), the baseline's first feature at
    each of ``cfg.ratios`` of the source's penalty. Later features keep, in each cell, the ratios
    to the first that the baseline alone chose there (``baseline_ratio`` ``[S or 1, T, features -
    1]``): the joint fit nests the baseline-alone one, and chooses among as many combinations per
    cell as beside a one-feature baseline (more choices would let the joint fit win on validation
    episodes by chance, and bias the unique share down on the test ones).

    >>> joint_bands(PartitionConfig(ratios=[1.0, 10.0]), 5, [], None).ratios
    [1.0, 10.0]
    >>> b = joint_bands(PartitionConfig(ratios=[1.0, 10.0]), 5, [3], np.array([[[0.1], [1.0]]]))  # 1 source, 2 targets
    >>> b.start, b.ratios, b.allowed[:, 0].tolist()
    ([5, 8], [(1.0, 0.1), (1.0, 1.0), (10.0, 1.0), (10.0, 10.0)], [[True, False], [False, True], [True, False], [False, True]])
    """
    ratios = [float(r) for r in cfg.ratios]
    if not feature_starts:
        return Bands([d_in], ratios)
    assert baseline_ratio is not None  # the baseline alone is banded where it has several features
    later = np.unique(baseline_ratio.reshape(-1, baseline_ratio.shape[-1]), axis=0)  # [distinct, features - 1]
    combinations = [(r, *(r * float(q) for q in qs)) for r in ratios for qs in later]
    matches = (baseline_ratio[None] == later[:, None, None]).all(-1)  # [distinct, S or 1, T]
    allowed = torch.from_numpy(np.tile(matches, (len(ratios), 1, 1)))  # [combinations, S or 1, T], in the order of combinations
    return Bands([d_in] + [d_in + s for s in feature_starts], combinations, allowed=allowed)


def max_band_combinations(cfg: PartitionConfig) -> int:
    """The most band penalty ratio combinations any fit of the partition may validate (1 without
    baselines): a joint fit's where the baseline alone chose every one of its combinations somewhere.

    >>> max_band_combinations(PartitionConfig(baselines=["observer+own_past"], ratios=[1.0, 10.0], feature_ratios=[0.1, 1.0, 10.0]))
    6
    """
    features = [len(Baseline.parse(b).features) for b in cfg.baselines]
    return max((len(cfg.ratios) * len(cfg.feature_ratios) ** (k - 1) for k in features), default=1)
