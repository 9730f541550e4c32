"""``make groups``: synchrony between every ordered pair of three agents, beside a control.

    python experiments/groups.py

1. simulates ``configs/simulate/groups.yaml`` (SmolLM2-135M playing all three agents of 24
   built-in three-agent episodes, round robin, 15 utterances; resumed if the cache exists),
2. fits every ordered agent pair (``data.directions=[all]``, ``configs/fit/groups.yaml``) in the
   main condition and the shuffled-partner control,
3. writes ``docs/groups/agent_pairs.png`` (the main condition's 3 x 3 SyncR² matrix) and
   ``docs/groups/results.md`` (both matrices and the means with their intervals), and prints them.
"""

from __future__ import annotations

import argparse
import shutil
import time
from pathlib import Path

from nsync.analysis.controls import main_beside_shuffled
from nsync.cache import ActivationCache
from nsync.config import load_config
from nsync.errors import run_cli
from nsync.fit import FitResult
from nsync.simulation.config import SimulateConfig
from nsync.simulation.run import simulate


def _matrix(result: FitResult) -> str:
    """A markdown table of the agent matrix: rows source agents, columns target agents."""
    m = result.agent_matrix()
    lines = ["| source \\ target | " + " | ".join(f"agent {j}" for j in m.columns) + " |", "|---" * (len(m.columns) + 1) + "|"]
    for i, row in m.iterrows():
        lines.append(f"| agent {i} | " + " | ".join("-" if v != v else f"{v:.3f}" for v in row) + " |")
    return "\n".join(lines)


def main(argv) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--simulate", default="configs/simulate/groups.yaml")
    parser.add_argument("--fit", default="configs/fit/groups.yaml")
    parser.add_argument("--out", default="runs/groups/controls")
    parser.add_argument("--docs", default="docs/groups")
    args = parser.parse_args(argv)
    start = time.perf_counter()
    cache, stats = simulate(load_config(SimulateConfig, ["--config", args.simulate], prog="nsync simulate"))
    print(f"cache {cache}: {stats.line()}")
    table = main_beside_shuffled(cache, args.out, args.fit)
    results = {name: FitResult.load(Path(args.out) / name) for name in ("main", "shuffled_partner")}
    docs = Path(args.docs)
    docs.mkdir(parents=True, exist_ok=True)
    shutil.copy(Path(args.out) / "main" / "agent_pairs.png", docs / "agent_pairs.png")
    main_result = results["main"]
    n_train = sorted({int(min(d.n_train)) for d in main_result.directions.values()})
    lines = [
        f"Three agents (SmolLM2-135M each), {ActivationCache.open(cache).turns['run_id'].nunique()} runs; `python experiments/groups.py`. SyncR² per ordered "
        f"pair (source agent's utterance -> target agent's next utterance), mean over {len(main_result.splits)} split seeds; "
        f"{n_train[0]}-{n_train[-1]} training pairs per pair, {main_result.bootstrap.test_episodes if main_result.bootstrap else '?'} "
        "test episodes.",
        "",
    ]
    for name, label in (("main", "Main condition"), ("shuffled_partner", "Control: shuffled partner (targets from another episode)")):
        r = table.loc[name]
        lines += [f"{label}: mean over pairs {r['sync_r2']:.3f} (bias-corrected {r['sync_r2_bias_corrected']:.3f}, "
                  f"95% interval over test episodes [{r['ci95_low']:.3f}, {r['ci95_high']:.3f}])", "", _matrix(results[name]), ""]
    text = "\n".join(lines)
    (docs / "results.md").write_text(text)
    print("\n" + text)
    print(f"wrote {docs / 'agent_pairs.png'}, {docs / 'results.md'}; fits in {args.out}; done in {(time.perf_counter() - start) / 60:.1f} min")


if __name__ == "__main__":
    run_cli(main)
