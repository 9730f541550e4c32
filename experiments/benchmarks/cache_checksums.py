"""What the cache's checksums cost, and what ``nsync cache verify`` finds, on a real SmolLM2 cache.

Simulates the quickstart's setting (SmolLM2-135M, built-in episodes, 10 utterances) into a fresh
folder with the writer's checksum step timed, so its share of the simulation's wall time is
measured in the same run; then verifies the cache, and copies of it with 64 bytes flipped in one
state file and with one layer's rows shuffled:

    python experiments/benchmarks/cache_checksums.py                  # 8 episodes, ~3 min on 2 cores
    python experiments/benchmarks/cache_checksums.py --episodes 20

Prints one line per measurement and a summary; the issue's target is a checksum share under 2%.
"""

from __future__ import annotations

import argparse
import shutil
import tempfile
import time
from pathlib import Path

import numpy as np


def simulate_timed(out: Path, episodes: int) -> tuple[float, float, int]:
    """(simulation seconds, checksum seconds, files checksummed) of one quickstart-like run."""
    import nsync.cache.writer as writer
    from nsync.config import load_config
    from nsync.simulation.config import SimulateConfig
    from nsync.simulation.run import simulate

    spent = {"seconds": 0.0, "files": 0}
    checksums = writer.write_checksums

    def timed(folder: Path) -> None:
        start = time.perf_counter()
        checksums(folder)
        spent["seconds"] += time.perf_counter() - start
        spent["files"] += sum(1 for p in folder.rglob("*") if p.is_file())

    writer.write_checksums = timed
    cfg = load_config(
        SimulateConfig,
        ["--config", "configs/simulate/quickstart.yaml", f"out={out}", f"scenarios.limit={episodes}", f"episodes_in_flight={episodes}", "progress=false"],
        prog="bench",
    )
    start = time.perf_counter()
    try:
        simulate(cfg)
    finally:
        writer.write_checksums = checksums
    return time.perf_counter() - start, spent["seconds"], spent["files"]


def damaged_copy(cache: Path, where: Path, damage: str) -> tuple[Path, Path]:
    """A copy of ``cache`` with one state file damaged: ``flip`` (64 bytes) or ``shuffle`` (rows)."""
    from nsync.cache import ActivationCache

    copy = Path(shutil.copytree(cache, where))
    shard = ActivationCache.open(copy).shards[0]
    f = sorted((shard / "states").rglob("layer_*.npy"))[len(list((shard / "states").rglob("layer_*.npy"))) // 2]
    if damage == "flip":
        data = bytearray(f.read_bytes())
        middle = len(data) // 2
        data[middle : middle + 64] = bytes(b ^ 0xFF for b in data[middle : middle + 64])
        f.write_bytes(bytes(data))
    else:
        states = np.load(f)
        np.save(f, states[np.random.default_rng(0).permutation(len(states))])
    return copy, f


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--episodes", type=int, default=8)
    args = parser.parse_args()
    from nsync.cache import ActivationCache
    from nsync.cache.verify import verify_cache

    work = Path(tempfile.mkdtemp(prefix="nsync-checksums-"))
    cache = work / "cache"
    seconds, checksum_seconds, files = simulate_timed(cache, args.episodes)
    size = sum(p.stat().st_size for p in cache.rglob("*") if p.is_file())
    share = checksum_seconds / seconds
    print(f"simulation: {seconds:.1f} s for {ActivationCache.open(cache).turns['run_id'].nunique()} episodes ({size / 1e6:.1f} MB cache)")
    print(f"checksums while writing: {checksum_seconds:.3f} s over {files} files = {share:.3%} of the simulation")
    clean = verify_cache(cache, progress=False)
    print(f"verify, intact cache: {'ok' if clean.ok else clean.problems} in {clean.seconds:.2f} s")
    found = {}
    for damage in ("flip", "shuffle"):
        copy, f = damaged_copy(cache, work / damage, damage)
        result = verify_cache(copy, progress=False)
        found[damage] = any(str(f) in p for p in result.problems)
        print(f"verify, {damage}: {'names' if found[damage] else 'MISSES'} {f.relative_to(copy)}: {result.problems}")
    print(
        f"summary: checksums cost {share:.2%} of a SmolLM2 simulation (target < 2%); verify finds a flipped byte: {found['flip']}, "
        f"a shuffled layer: {found['shuffle']}; wrote {work}"
    )


if __name__ == "__main__":
    main()
