"""Coverage of SyncR²'s episode-bootstrap interval on planted problems with a known population value.

    python experiments/benchmarks/bootstrap_coverage.py [--reps 400] [--only quickstart]

Each problem (:func:`nsync.testing.synthetic.planted_fits`) splits planted episodes as ``nsync.fit``
does, over several split seeds whose test sides overlap: per seed it chooses each source layer's
target layer on validation episodes, fits ridge probes on the training side and scores them on the
test side; targets carry an episode-level offset (what a conversation's shape explains). The
population value is the same probes' SyncR² on thousands of fresh episodes, averaged over the
seeds. For each method the table gives how often the 95% interval holds the population value, the
raw estimate and the bias-corrected estimate, its mean width, and how often the interval left
SyncR²'s range [0, 1] before nsync kept it inside (with how often it held the population value
then). The number of test episodes below which intervals stop holding: ``few_test_episodes.py``.
"""

from __future__ import annotations

import argparse
import time

from nsync.testing.coverage import interval_coverage

SETTINGS = {
    "3 split seeds x 20 test episodes, targets chosen on validation": {},
    "the quickstart's shape: 3 split seeds x 21 of 48 episodes of 6 utterances": dict(n_episodes=48, test_size=0.42, turns=6),
    "3 split seeds x 20, targets picked on the test side (the paper's rule)": dict(target_choice="test"),
    "1 split seed x 20 test episodes": dict(split_seeds=1),
    "8 split seeds x 30 of 60 episodes (test sides overlap)": dict(split_seeds=8, test_size=0.5),
    "the same, independent draws per split seed (the replaced scheme)": dict(split_seeds=8, test_size=0.5, joint=False),
    "3 split seeds x 10 test episodes": dict(n_episodes=30),
    "3 split seeds x 40 test episodes, offsets sd 2": dict(n_episodes=120, shape=2.0),
    "3 split seeds x 20 test episodes, no offsets": dict(shape=0.0),
    "no relation (population 0)": dict(couplings=(0.0, 0.0, 0.0)),
    "paired difference, 3 split seeds x 20 test episodes": dict(difference=True, source_noise=(0.5, 1.5)),
}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--reps", type=int, default=400, help="problems per setting")
    parser.add_argument("--boot", type=int, default=500, help="bootstrap replicates per problem")
    parser.add_argument("--only", default="", help="run only the settings whose name contains this text (e.g. quickstart)")
    args = parser.parse_args()
    print("| setting | method | holds population value | holds estimate | holds bias-corrected | mean width | left the range | held it then |")
    print("|---|---|---|---|---|---|---|---|")
    start = time.perf_counter()
    for name, kwargs in SETTINGS.items():
        if args.only not in name:
            continue
        for method, c in interval_coverage(n_rep=args.reps, n_boot=args.boot, population=2000, **kwargs).items():
            print(
                f"| {name} | {method} | {c['truth']:.3f} | {c['estimate']:.3f} | {c['bias_corrected']:.3f} | {c['width']:.3f} "
                f"| {c['escaped']:.3f} | {c['escaped_truth']:.3f} |",
                flush=True,
            )
    print(f"{args.reps} problems per setting, nominal 95%, {time.perf_counter() - start:.0f} s")


if __name__ == "__main__":
    main()
