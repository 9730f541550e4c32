"""``nsync cache verify``: check every file of a cache against what was written.

Each shard records its files' checksums when it is committed (:func:`nsync.cache.layout.write_checksums`);
verifying recomputes them (a flipped byte, rows shuffled within a file), and checks what a checksum
cannot: each array's shape against the turns table and the manifest, the manifest's layer names
against the files, rows written twice, and NaN or inf in any state. The outcome is kept in
``verified.json`` beside the manifest, so ``nsync cache info`` can say whether the cache, as it is
now, was verified.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd
from tqdm.auto import tqdm

from nsync.cache.layout import (
    CHECKSUMS,
    MANIFEST,
    checksum,
    layer_file,
    live_shards,
    load_states,
    model_dir,
    read_manifest,
    read_turns,
    row_count_mismatches,
    rows_twice,
)
from nsync.errors import NsyncError
from nsync.storage import FolderLock, write_json_atomic

log = logging.getLogger(__name__)

#: The record of the last verification, beside the manifest.
VERIFIED = "verified.json"
#: Rows of one array checked for NaN/inf at a time (bounded memory on large caches).
_BLOCK_ROWS = 65536


@dataclass
class Verification:
    """What :func:`verify_cache` found: one line per problem, each naming its file."""

    root: Path
    problems: list[str] = field(default_factory=list)
    files: int = 0
    bytes: int = 0
    unsealed: list[str] = field(default_factory=list)  # shards written before checksums
    seconds: float = 0.0

    @property
    def ok(self) -> bool:
        return not self.problems

    def summary(self) -> str:
        head = f"checked {self.files} files ({self.bytes / 1e9:.2f} GB) of {self.root} in {self.seconds:.1f} s"
        lines = [f"{head}: {'no problem found' if self.ok else f'{len(self.problems)} problem(s)'}"]
        lines += [f"  {p}" for p in self.problems]
        if self.unsealed:
            lines.append(
                f"  note: {len(self.unsealed)} shard(s) were written before nsync recorded checksums ({', '.join(self.unsealed[:3])}"
                f"{', ...' if len(self.unsealed) > 3 else ''}): their shapes, rows and values were checked, not their bytes"
            )
        return "\n".join(lines)


def verify_cache(path: str | Path, progress: bool = True) -> Verification:
    """Check every file of the cache in ``path``; record the outcome in its ``verified.json``
    (when the folder is writable).

    >>> import tempfile
    >>> from nsync.testing.synthetic import write_synthetic_cache
    >>> verify_cache(write_synthetic_cache(tempfile.mkdtemp() + "/c", n_episodes=2, turns=2, hidden=4), progress=False).ok
    True
    """
    root = Path(path)
    start = time.perf_counter()
    result = Verification(root)
    manifest = read_manifest(root)  # a damaged manifest: nothing else can be checked
    writable = _writable(root)
    lock = FolderLock(root, "the cache").acquire() if writable else None  # not while a writer changes it
    try:
        shards = live_shards(root)
        states = [f for s in shards for f in s.glob("states/*/*/layer_*.npy")]  # the bulk of the bytes: the bar follows them
        bar = tqdm(total=sum(f.stat().st_size for f in states), unit="B", unit_scale=True, desc="verifying", disable=not progress)
        turns = []
        for shard in shards:
            turns.append(_check_shard(shard, manifest, result, bar))
        bar.close()
        _check_rows(root, manifest, [t for t in turns if t is not None], result)
        result.seconds = time.perf_counter() - start
        if writable:
            record = {"time": time.strftime("%Y-%m-%d %H:%M:%S"), "ok": result.ok, "problems": result.problems[:20]}
            write_json_atomic(root / VERIFIED, record | {"stamp": stamp(root)})
    finally:
        if lock is not None:
            lock.release()
    return result


def _writable(root: Path) -> bool:
    return os.access(root, os.W_OK)


def stamp(root: Path) -> str:
    """A hash of the name, size and modification time of every file of the cache's live shards and
    its manifest: it changes when anything is written to them (a flipped byte too)."""
    files = [root / MANIFEST] + [f for s in live_shards(root) for f in sorted(s.rglob("*")) if f.is_file()]
    parts = [f"{f.relative_to(root)}:{f.stat().st_size}:{f.stat().st_mtime_ns}" for f in files]
    return hashlib.sha256("\n".join(parts).encode()).hexdigest()[:16]


def _check_shard(shard: Path, manifest: dict, result: Verification, bar) -> pd.DataFrame | None:
    """Checksums, shapes and values of one shard's files; its turns table (None when unreadable)."""
    recorded = _recorded_checksums(shard, result)
    for rel, expected in recorded.items():
        f = shard / rel
        if not f.is_file():
            result.problems.append(f"{f}: missing (the shard recorded it when written)")
        elif checksum(f) != expected:
            result.problems.append(f"{f}: its content changed since it was written (checksum mismatch)")
    try:
        turns = read_turns(shard)
    except NsyncError as err:
        result.problems.append(str(err).split("; `nsync cache verify")[0])
        return None
    for model, info in manifest["models"].items():
        for condition, rows in turns[turns["model"] == model].groupby("condition"):
            _check_states(shard / "states" / model_dir(model) / str(condition), len(rows), info, result, bar)
    return turns


def _recorded_checksums(shard: Path, result: Verification) -> dict[str, str]:
    path = shard / CHECKSUMS
    if not path.is_file():
        result.unsealed.append(shard.name)
        return {}
    try:
        return dict(json.loads(path.read_text())["files"])
    except (ValueError, KeyError, TypeError):
        result.problems.append(f"{path}: damaged (not the checksum record nsync writes)")
        return {}


def _check_states(folder: Path, n_rows: int, info: dict, result: Verification, bar) -> None:
    """Every layer file of one model and condition in one shard: present, readable, of the shape
    the turns table and the manifest give, and finite."""
    n_layers = len(info["layer_names"])
    if (folder / layer_file(n_layers)).exists():
        result.problems.append(f"{folder}: holds more layer files than the manifest's {n_layers} layer names of {info['name']}")
    for layer in range(n_layers):
        f = folder / layer_file(layer)
        try:
            states = load_states(f)
        except NsyncError as err:
            result.problems.append(str(err).split("; `nsync cache verify")[0])
            continue
        result.files += 1
        result.bytes += f.stat().st_size
        if states.shape != (n_rows, info["hidden_size"]):
            result.problems.append(f"{f}: shape {states.shape}, expected ({n_rows}, {info['hidden_size']}) from the turns table and manifest")
            continue
        bad = [start + i for start in range(0, n_rows, _BLOCK_ROWS) for i in np.flatnonzero(~np.isfinite(states[start : start + _BLOCK_ROWS]).all(1))]
        if bad:
            result.problems.append(f"{f}: {len(bad)} row(s) hold NaN or inf (rows {', '.join(map(str, bad[:5]))}{', ...' if len(bad) > 5 else ''})")
        bar.update(f.stat().st_size)


def _check_rows(root: Path, manifest: dict, turns: list[pd.DataFrame], result: Verification) -> None:
    """Rows written twice, and the manifest's row counts against the turns tables."""
    if not turns:
        return
    table = pd.concat(turns, ignore_index=True)
    if twice := rows_twice(table):
        result.problems.append(f"{root}: holds {twice}; `nsync cache repair {root}` keeps the first copy of each row")
    result.problems += [f"{root / MANIFEST}: {wrong}" for wrong in row_count_mismatches(manifest, table)]


def verification_line(root: Path) -> str:
    """One line for ``nsync cache info``: when the cache was last verified, and with what outcome."""
    path = root / VERIFIED
    if not path.is_file():
        return f"never verified (`nsync cache verify {root}` checks every file)"
    try:
        record = json.loads(path.read_text())
    except ValueError:
        return f"{path} is damaged; verify again"
    outcome = "no problem found" if record.get("ok") else f"{len(record.get('problems', []))} problem(s) found"
    if record.get("stamp") != stamp(root):
        return f"verified {record.get('time')} ({outcome}), but the cache changed since: verify again"
    return f"verified {record.get('time')}: {outcome}"
