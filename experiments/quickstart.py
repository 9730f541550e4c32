"""``make quickstart``: a first synchrony figure next to a control, in a few minutes on a CPU.

    python experiments/quickstart.py

1. simulates ``configs/simulate/quickstart.yaml`` (SmolLM2-135M talking to itself in 48 built-in
   episodes of 6 utterances; resumed if the cache exists),
2. fits the main condition and the shuffled-partner control (targets from another episode at the
   same utterance index) with ``configs/fit/quickstart.yaml``,
3. prints a short table: SyncR² with its 95% interval for both, the training pairs, the best
   layer pair, and where the plots are; with ``--docs docs/quickstart`` the same table and the
   controls' bar plot go to the documentation site's quickstart page.
"""

from __future__ import annotations

import argparse
import shutil
import time
from pathlib import Path

import numpy as np

from nsync.analysis.controls import main_beside_shuffled
from nsync.cache import ActivationCache, describe_reply_flags
from nsync.config import load_config
from nsync.errors import configure_logging, run_cli
from nsync.fit import FitResult
from nsync.simulation.config import SimulateConfig
from nsync.simulation.run import simulate


#: How often the quickstart's 95% interval held the population value on 1,000 planted problems of its
#: shape (3 split seeds x 21 test episodes of 48, 6 utterances each): `python
#: experiments/benchmarks/bootstrap_coverage.py --only quickstart --reps 1000` (2026-12-07, 24 s).
COVERAGE = "94.8% of 1,000 planted problems of this shape (nominal 95%)"


def best_pair(result: FitResult) -> str:
    """The (direction, source layer -> target layer) cell with the highest mean test R²."""
    best = (-np.inf, "")
    for direction, d in result.directions.items():
        r2 = np.where(np.isfinite(d.r2_matrix), d.r2_matrix, -np.inf)
        i, j = np.unravel_index(np.argmax(r2), r2.shape)
        if r2[i, j] > best[0]:
            best = (r2[i, j], f"{direction}: {result.source_layer_names[i]} -> {result.target_layer_names[j]} (R² {r2[i, j]:.3f})")
    return best[1]


def main(argv) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--simulate", default="configs/simulate/quickstart.yaml")
    parser.add_argument("--fit", default="configs/fit/quickstart.yaml")
    parser.add_argument("--out", default="runs/quickstart/controls")
    # Maintainers pass --docs docs/quickstart to refresh the documentation's quickstart page; by default a
    # user's run leaves the repository's files alone.
    parser.add_argument("--docs", default="", help="also write the table and figures for the documentation here (e.g. docs/quickstart)")
    parser.add_argument("overrides", nargs="*", help="key=value overrides of the simulation config (tests: models=[tiny])")
    args = parser.parse_args(argv)
    configure_logging()
    run(args)


def run(args: argparse.Namespace, models: dict | None = None) -> None:
    """The quickstart with ``args`` (as parsed by :func:`main`); ``models`` overrides loading by
    name (a test runs it with a tiny model)."""
    start = time.perf_counter()
    cache, stats = simulate(load_config(SimulateConfig, ["--config", args.simulate, *args.overrides], prog="nsync simulate"), models)
    print(f"cache {cache}: {stats.line()}" if stats.runs else f"cache {cache}: every episode already simulated (delete the folder to simulate again)")
    print(f"replies: {describe_reply_flags(ActivationCache.open(cache).reply_flags())}")
    table = main_beside_shuffled(cache, args.out, args.fit, overwrite=True)
    main_result = FitResult.load(f"{args.out}/main")
    n_train = ", ".join(f"{d} {int(np.mean(r.n_train))}" for d, r in main_result.directions.items())
    lines = ["| condition | SyncR² (bias-corrected) | 95% interval over test episodes | SyncR² (raw) |", "|---|---|---|---|"]
    for name, label in (("main", "main: partner's next state"), ("shuffled_partner", "control: shuffled partner")):
        r = table.loc[name]
        lines.append(f"| {label} | {r['sync_r2_bias_corrected']:.3f} | [{r['ci95_low']:.3f}, {r['ci95_high']:.3f}] | {r['sync_r2']:.3f} |")
    above = table.loc["main", "ci95_low"] > table.loc["shuffled_partner", "ci95_high"]
    d = table.loc["shuffled_partner"]
    lines += ["", f"control minus main: {d['diff_bias_corrected']:.3f}, 95% interval [{d['diff_ci95_low']:.3f}, {d['diff_ci95_high']:.3f}]; "
              f"the main interval lies {'above' if above else 'NOT above'} the control's",
              f"training pairs per direction: {n_train}; best layer pair: {best_pair(main_result)}",
              f"the intervals held the population value in {COVERAGE}"]
    print("\n" + "\n".join(lines))
    print(f"plots: {args.out}/main/r2_by_layer.png, layer_profile.png, heatmap_A_to_B.png; {args.out}/controls.png")
    if args.docs:
        docs = Path(args.docs)
        docs.mkdir(parents=True, exist_ok=True)
        (docs / "output.md").write_text("```\n" + "\n".join(lines) + "\n```\n")
        for name, source in (("controls.png", "controls.png"), ("layer_profile.png", "main/layer_profile.png")):
            shutil.copyfile(Path(args.out) / source, docs / name)
        print(f"wrote {docs}/output.md, controls.png, layer_profile.png")
    print(f"done in {(time.perf_counter() - start) / 60:.1f} min")


if __name__ == "__main__":
    run_cli(main)
