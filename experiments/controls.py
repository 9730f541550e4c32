"""Every control on one SmolLM2-135M cache, end to end.

    python experiments/controls.py [--simulate configs/simulate/controls.yaml] [--controls configs/controls/quickstart.yaml]

1. simulates the controls cache (16 built-in episodes x 2 sampling seeds, observer and listener
   states; resumed if it exists),
2. runs ``nsync.controls``: adds the untrained-copy and text-embedding states, fits the main
   condition and every control, and writes ``controls.md``, ``controls.csv``, ``controls.png``
   and ``lag_curve.png`` next to one run folder per control.
"""

from __future__ import annotations

import argparse
import time

from nsync.analysis.controls import ControlsConfig, markdown_table, run_controls
from nsync.config import load_config
from nsync.errors import run_cli
from nsync.simulation.config import SimulateConfig
from nsync.simulation.run import simulate


def main(argv) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--simulate", default="configs/simulate/controls.yaml")
    parser.add_argument("--controls", default="configs/controls/quickstart.yaml")
    parser.add_argument("overrides", nargs="*", help="key=value overrides of the controls config")
    args = parser.parse_args(argv)
    start = time.perf_counter()
    sim_cfg = load_config(SimulateConfig, ["--config", args.simulate], prog="nsync simulate")
    out, stats = simulate(sim_cfg)
    print(f"cache {out}: {stats.line()}")
    cfg = load_config(ControlsConfig, ["--config", args.controls, f"cache={out}", *args.overrides], prog="nsync controls")
    table = run_controls(cfg)
    print(markdown_table(table))
    print(f"done in {(time.perf_counter() - start) / 60:.1f} min; wrote {cfg.out}/controls.md, controls.png, lag_curve.png")


if __name__ == "__main__":
    run_cli(main)
