"""Start-up of nsync's commands: how long a ``--help`` and a fit take before they do any work.

    python experiments/benchmarks/startup.py [--repeats 5]

Each figure is the median wall time of ``--repeats`` fresh interpreters, launched from here and
timed until the process ends (``--help``), until an import is done, or until the fit opens its
cache (the child stops there). Measured in one run beside two references, so the ratios hold on a shared machine: an
empty interpreter and ``import lightning`` (the fit's framework; it brings torch, torchmetrics and,
through torchmetrics, transformers and matplotlib).
"""

from __future__ import annotations

import argparse
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

#: Child code that runs a fit and stops it the moment it opens its cache.
FIT_UNTIL_OPEN = """
import os, sys
import nsync.cache.reader as reader
def opened(cls, *args, **kwargs):
    print("opened", flush=True)
    os._exit(0)
reader.ActivationCache.open = classmethod(opened)
from nsync.fit.__main__ import main
main(sys.argv[1:])
"""


def wall(args: list[str], until: str | None = None) -> float:
    """Seconds from launch until the process ends, or until it prints ``until``."""
    start = time.perf_counter()
    child = subprocess.Popen(args, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
    if until is not None:
        for line in child.stdout:
            if line.strip() == until:
                break
    if until is not None:
        child.kill()  # stopped where it was measured: an import's teardown is not start-up
    child.communicate()
    seconds = time.perf_counter() - start
    if until is None and child.returncode != 0:
        raise SystemExit(f"{' '.join(args)} exited with {child.returncode}")
    return seconds


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--repeats", type=int, default=5)
    args = parser.parse_args()
    py = sys.executable
    with tempfile.TemporaryDirectory() as tmp:
        cases = {
            "python -c pass": ([py, "-c", "pass"], None),
            "nsync --help": ([py, "-m", "nsync.cli", "--help"], None),
            "nsync fit --help": ([py, "-m", "nsync.cli", "fit", "--help"], None),
            "nsync simulate --help": ([py, "-m", "nsync.cli", "simulate", "--help"], None),
            # the references are timed until imported (not until exit: torch's teardown adds about a second)
            "import torch": ([py, "-c", "import torch; print('imported', flush=True)"], "imported"),
            "import lightning": ([py, "-c", "import lightning; print('imported', flush=True)"], "imported"),
            "fit: launch to opening the cache": ([py, "-c", FIT_UNTIL_OPEN, f"data.cache={tmp}/cache", f"out={tmp}/fit", "logger.kind=none"], "opened"),
        }
        rows = []
        for name, (cmd, until) in cases.items():
            times = [wall(cmd, until) for _ in range(args.repeats)]
            rows.append((name, statistics.median(times), min(times)))
            print(f"  {name:<34} median {rows[-1][1]:.2f} s, best {rows[-1][2]:.2f} s", flush=True)
    lightning = dict((n, m) for n, m, _ in rows)["import lightning"]
    fit = dict((n, m) for n, m, _ in rows)["fit: launch to opening the cache"]
    print(f"\nfit start-up {fit:.2f} s, of which Lightning's own import {lightning:.2f} s ({fit / lightning:.2f}x of it); "
          f"medians of {args.repeats} launches on {Path('/proc/cpuinfo').read_text().count('processor')} CPUs")


if __name__ == "__main__":
    main()
