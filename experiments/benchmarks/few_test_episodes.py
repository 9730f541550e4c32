"""How many test episodes the intervals and p-values need: coverage and false-positive rate by
the number of test episodes per split seed, on planted problems with a known answer.

    python experiments/benchmarks/few_test_episodes.py [--reps 400]

For each count of test episodes: how often SyncR²'s 95% episode-bootstrap interval holds the
population value (3 split seeds, targets chosen on validation, episodes of 6 pairs with an
episode-level offset: :func:`nsync.testing.coverage.interval_coverage`), once with a planted
coupling and once with none (population 0, where the interval is cut at SyncR²'s range), and how
often the surrogate p-value (100 pseudo-dyad re-pairings) is <= 0.05 with nothing planted, for
SyncR² and for the unique share beyond a baseline (:func:`nsync.testing.surrogates.false_positive_rate`,
episodes of 8 pairs). ``nsync.fit``'s ``MIN_TEST_EPISODES`` is the smallest count from which every
column holds its nominal rate within the table's noise (coverage >= 0.92, false-positive rate <= 0.08).
"""

from __future__ import annotations

import argparse
import logging
import math
import time

from nsync.testing.coverage import interval_coverage
from nsync.testing.surrogates import false_positive_rate

COUNTS = (3, 4, 5, 6, 8, 10, 12, 15, 20)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--reps", type=int, default=400, help="problems per count and column")
    parser.add_argument("--boot", type=int, default=400, help="bootstrap replicates per problem")
    parser.add_argument("--counts", default=",".join(map(str, COUNTS)), help="test episodes per split seed, comma-separated")
    args = parser.parse_args()
    logging.getLogger("nsync.fit").setLevel(logging.ERROR)
    print("| test episodes | interval holds SyncR² (coupling) | interval holds SyncR² (none: 0) | p <= 0.05, SyncR², none | p <= 0.05, unique share, none |")
    print("|---|---|---|---|---|")
    start = time.perf_counter()
    for n in (int(c) for c in args.counts.split(",")):
        # interval_coverage holds out round(0.34 n_episodes) episodes; false_positive_rate n_episodes // 3
        n_episodes = math.ceil((n - 0.5) / 0.34)
        kw = dict(n_rep=args.reps, n_boot=args.boot, population=1000, n_episodes=n_episodes, turns=6)
        coupled = interval_coverage(methods=("basic",), **kw)["basic"]["truth"]
        null = interval_coverage(methods=("basic",), couplings=(0.0, 0.0, 0.0), **kw)["basic"]["truth"]
        fpr = false_positive_rate(n_rep=args.reps, n=100, n_episodes=3 * n, seed=7)
        fpr_unique = false_positive_rate(n_rep=args.reps, n=100, n_episodes=3 * n, unique=True, seed=7)
        print(f"| {n} | {coupled:.3f} | {null:.3f} | {fpr:.3f} | {fpr_unique:.3f} |", flush=True)
    print(f"{args.reps} problems per cell, nominal 95% intervals and 5% false positives, {time.perf_counter() - start:.0f} s")


if __name__ == "__main__":
    main()
