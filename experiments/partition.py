"""``make partition``: how much of SyncR² is the speaker's own, from a fresh clone in minutes on a CPU.

    python experiments/partition.py

1. simulates ``configs/simulate/partition.yaml`` (the quickstart's 48 episodes of SmolLM2-135M
   talking to itself, with the observer pass; resumed if the cache exists),
2. re-reads every utterance with the text embedder (``nsync reread kind=text``: the text
   baseline; skipped where the cache holds it),
3. fits ``configs/fit/partition_small.yaml``: the source beside the observer, the text and the
   partner's own past, each alone,
4. prints SyncR² and, per baseline, the unique share with its interval and p-value, the shared
   share and the baseline alone, and where the run folder is.
"""

from __future__ import annotations

import argparse
import time

from nsync.config import load_config
from nsync.errors import configure_logging, run_cli
from nsync.fit import FitConfig, run_fit
from nsync.simulation.config import SimulateConfig
from nsync.simulation.reread import RereadConfig, reread
from nsync.simulation.run import simulate


def main(argv) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--simulate", default="configs/simulate/partition.yaml")
    parser.add_argument("--fit", default="configs/fit/partition_small.yaml")
    parser.add_argument("--out", default="runs/partition/fit", help="the fit's run folder")
    parser.add_argument("overrides", nargs="*", help="key=value overrides of the simulation config (tests: models=[tiny])")
    args = parser.parse_args(argv)
    configure_logging()
    run(args)


def run(args: argparse.Namespace, models: dict | None = None, embedder=None) -> None:
    """The chain with ``args`` (as parsed by :func:`main`); ``models`` and ``embedder`` override
    loading by name (a test runs it with tiny ones)."""
    start = time.perf_counter()
    cache, stats = simulate(load_config(SimulateConfig, ["--config", args.simulate, *args.overrides], prog="nsync simulate"), models)
    print(f"1. cache {cache}: {stats.line()}" if stats.runs else f"1. cache {cache}: every episode already simulated")
    fit_cfg = load_config(FitConfig, ["--config", args.fit, f"data.cache={cache}", f"out={args.out}", "overwrite=true"], prog="nsync fit")
    text = [b.removeprefix("text:") for b in fit_cfg.partition.baselines if b.startswith("text:")]
    for model in dict.fromkeys(text):
        name, n = reread(RereadConfig(cache=str(cache), kind="text", model=model), embedder=embedder)
        print(f"2. re-read {n} utterances as '{name}'" if n else f"2. the cache already holds '{name}'")
    result = run_fit(fit_cfg)
    print(f"\n3. {result.headline()}")
    for name, part in result.partition.items():
        print(f"   beyond {name}: {part.line(result.few_test_episodes)}")
    print(f"\nrun folder: {fit_cfg.out} (results.json, partition.png, time_course.png); nsync report {fit_cfg.out} writes a page")
    print(f"done in {(time.perf_counter() - start) / 60:.1f} min")


if __name__ == "__main__":
    run_cli(main)
