"""The SyncR² interval covers the population value it estimates (planted problems, known truth)."""

import numpy as np
import pytest

from nsync.data.synthetic import planted_test_side
from nsync.fit import bootstrap as boot
from nsync.fit.bootstrap import interval_coverage


@pytest.fixture(scope="module")
def coverage():
    return interval_coverage(n_rep=200, n_boot=400, population=1000)


@pytest.mark.slow  # hundreds of planted problems
def test_basic_interval_covers_the_population_sync_r2(coverage):
    assert coverage["basic"]["truth"] >= 0.90
    assert coverage["basic"]["bias_corrected"] == 1.0  # the interval's own centre, always inside
    assert coverage["basic"]["estimate"] >= 0.99


@pytest.mark.slow  # hundreds of planted problems
def test_the_check_can_fail(coverage):
    # The percentile interval of the same replicates misses the population value too often here:
    # the coverage check tells the two apart.
    assert coverage["percentile"]["truth"] < 0.90


@pytest.mark.slow  # hundreds of planted problems
def test_paired_difference_covers_the_population_difference():
    c = interval_coverage(n_rep=200, n_boot=400, population=1000, seed=1, difference=True, source_noise=(0.5, 1.5))
    assert c["basic"]["truth"] >= 0.90


def test_all_ones_weights_reproduce_the_estimate():
    p = planted_test_side(np.random.default_rng(0), population=100)
    ones = np.ones((1, len(p["episodes"])))
    r2 = boot.replicate_r2(p["sums"][0], ones)[0]
    n, s1, s2, sse = (p["sums"][0][k].sum(0).numpy() for k in ("n", "s1", "s2", "sse"))
    expected = (1 - sse / (s2 - s1**2 / n)).mean(-1)  # per target layer, uniform over dimensions
    np.testing.assert_allclose(r2, expected, rtol=1e-10)
