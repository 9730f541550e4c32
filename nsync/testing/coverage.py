"""How often nsync's episode-bootstrap intervals hold the population value, over planted problems
(``experiments/benchmarks/bootstrap_coverage.py``, ``tests/test_bootstrap_coverage.py``)."""

from __future__ import annotations

import numpy as np

from nsync.stats.bootstrap import DIFFERENCE_RANGE, SYNC_R2_RANGE, EpisodeBootstrap, bias_corrected, interval, pool, replicate_r2, replicate_sync_r2
from nsync.testing.synthetic import planted_fits


def interval_coverage(
    n_rep: int = 200,
    n_boot: int = 400,
    seed: int = 0,
    difference: bool = False,
    methods: tuple[str, ...] = ("basic", "percentile"),
    joint: bool = True,
    **problem,
) -> dict[str, dict[str, float]]:
    """How often nsync's episode-bootstrap intervals hold the population SyncR² (or, with
    ``difference``, the population difference source 1 minus source 0, a paired comparison of two
    conditions on the same test episodes), the raw estimate and the bias-corrected one, over
    ``n_rep`` :func:`nsync.testing.synthetic.planted_fits` problems, each a mean over split seeds as
    ``nsync.fit`` reports it. ``joint=False`` draws every split seed's weights independently (the
    scheme this module replaced), to show what that costs. Intervals are kept inside SyncR²'s range
    (a difference's) as nsync.fit keeps them. Returns method -> {"truth", "estimate",
    "bias_corrected", "width", "escaped", "escaped_truth"}: how often the interval holds the
    population value, the raw and the bias-corrected estimate, its mean width, how often the
    interval before it was kept inside the range left it, and how often it held the population
    value then (NaN where it never left).

    >>> interval_coverage(n_rep=2, n_boot=50, population=200)["basic"]["estimate"]
    1.0
    """
    rng = np.random.default_rng(seed)
    hits = {m: np.zeros(4) for m in methods}
    escaped = {m: np.zeros(2) for m in methods}
    for r in range(n_rep):
        p = planted_fits(rng, **problem)

        # p and r bound as defaults: the closure is called only in this iteration, but explicit is safer
        def sync_and_replicates(sources: list[int], p: dict = p, r: int = r) -> tuple[float, np.ndarray]:
            estimates, replicates = [], []
            for k, fit in enumerate(p["seeds"]):
                draws = EpisodeBootstrap(n_boot, seed=r if joint else r * 1000 + k).weights(fit["episodes"])
                ones = np.ones((1, len(fit["episodes"])))
                estimates.append(replicate_sync_r2([replicate_r2(fit["sums"][s], ones, fit["targets"][s]) for s in sources])[0])
                replicates.append(replicate_sync_r2([replicate_r2(fit["sums"][s], draws, fit["targets"][s]) for s in sources]))
            return float(np.mean(estimates)), pool([(0, r) for r in replicates])

        if difference:
            (e0, r0), (e1, r1) = sync_and_replicates([0]), sync_and_replicates([1])
            estimate, replicates, truth = e1 - e0, r1 - r0, p["truth_per_source"][1] - p["truth_per_source"][0]
        else:
            (estimate, replicates), truth = sync_and_replicates(list(range(len(p["truth_per_source"])))), p["truth"]
        bounds = DIFFERENCE_RANGE if difference else SYNC_R2_RANGE
        centre = bias_corrected(estimate, replicates, bounds=bounds)
        assert centre is not None  # planted problems always have finite replicates
        for m in methods:
            kept, free = interval(replicates, estimate, method=m, bounds=bounds), interval(replicates, estimate, method=m)
            assert kept is not None and free is not None
            (lo, hi), left = kept, free != kept
            hits[m] += [lo <= truth <= hi, lo <= estimate <= hi, lo <= centre <= hi, hi - lo]
            escaped[m] += [left, left and lo <= truth <= hi]
    names = ("truth", "estimate", "bias_corrected", "width")
    return {
        m: dict(zip(names, (h / n_rep).tolist(), strict=True))
        | {"escaped": escaped[m][0] / n_rep, "escaped_truth": escaped[m][1] / escaped[m][0] if escaped[m][0] else float("nan")}
        for m, h in hits.items()
    }
