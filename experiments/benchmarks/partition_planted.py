"""Variance partitioning on planted caches with a known answer (the table on docs/concepts/partition.md).

    python experiments/benchmarks/partition_planted.py [--out runs/partition_planted] [--null-seeds 8]

Three caches written with the public cache writer (nsync.testing.synthetic): a shared text plus the
partner's own past and nothing private to the speaker (unique share 0), the same plus a private
part of the speaker (unique share known in closed form), and a passive observer that sees half
of the speaker's state (unique and shared shares 0.25 each). Each is fitted with
``python -m nsync.fit``'s code path (affine probe, alpha grid, 3 split seeds, 200 surrogates).
Then the first (a unique share of 0) again on ``--null-seeds`` caches of other seeds: where its
interval lies (around, below or above 0) and its p-values, since one cache can only show one draw.
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import numpy as np

from nsync.config import load_config
from nsync.testing.synthetic import PLANTED_TEXT, write_partition_cache, write_synthetic_cache
from nsync.fit import FitConfig, run_fit


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", default="runs/partition_planted", help="folder for the caches and fits")
    parser.add_argument("--null-seeds", type=int, default=8, help="caches of the null setting (unique share 0) to fit again, each another seed")
    args = parser.parse_args()
    out = Path(args.out)
    both = f"{PLANTED_TEXT}+own_past"
    settings = []
    for private in (0.0, 0.7):
        cache, truth = write_partition_cache(out / f"cache_private_{private}", private=private)
        settings.append((f"text + own past, private part {private}", cache, both, {"unique": truth}))
    cache = write_synthetic_cache(out / "cache_observer", "linear", n_episodes=200, turns=8, hidden=6, n_layers=1, observer_share=0.5)
    settings.append(("observer sees half of the speaker's state", cache, "observer", {"unique": 0.25, "shared": 0.25}))
    print("| planted cache | baseline | SyncR² (p) | quantity | population | estimate [95% CI] | p (unique) |")
    print("|---|---|---|---|---|---|---|")
    start = time.perf_counter()
    for name, cache, baseline, truths in settings:
        res = _fit(cache, out, baseline)
        p = res.partition[baseline]
        for quantity, truth in truths.items():
            lo, hi = p.ci95[quantity]
            print(f"| {name} | {baseline} | {res.sync_r2:.3f} ({res.sync_r2_p_value:.3f}) | {quantity} | {truth:.3f} | "
                  f"{p.values[quantity]:.3f} [{lo:.3f}, {hi:.3f}] | {p.unique_p_value:.3f} |", flush=True)
    print(f"{len(settings)} planted caches, 3 split seeds each, {time.perf_counter() - start:.0f} s; fits in {out}")
    if args.null_seeds:
        start, where, estimates, p_values = time.perf_counter(), [], [], []
        for seed in range(1, args.null_seeds + 1):
            cache, _ = write_partition_cache(out / f"cache_null_seed_{seed}", private=0.0, seed=seed)
            p = _fit(cache, out, both).partition[both]
            lo, hi = p.ci95["unique"]
            where.append("below" if hi < 0 else "above" if lo > 0 else "around")
            estimates.append(p.values["unique"])
            p_values.append(p.unique_p_value)
        print(f"null (unique share 0), {args.null_seeds} more caches: interval around 0 in {where.count('around')}, below in "
              f"{where.count('below')}, above in {where.count('above')}; estimates {min(estimates):.4f} to {max(estimates):.4f} "
              f"(mean {np.mean(estimates):.4f}); p <= 0.05 in {sum(p <= 0.05 for p in p_values)}; {time.perf_counter() - start:.0f} s")


def _fit(cache: Path, out: Path, baseline: str):
    cfg = load_config(FitConfig, [f"out={out / ('fit_' + cache.name)}", f"data.cache={cache}", "logger.kind=none", "progress=false",
                                  "overwrite=true", "data.directions=[A->B]", "data.test_size=0.25",
                                  "affine.alphas=[0.1,1,10,100,1000,10000]", f"partition.baselines=[{baseline}]"], prog="benchmark")
    return run_fit(cfg)


if __name__ == "__main__":
    main()
