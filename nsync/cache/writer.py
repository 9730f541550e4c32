"""Write an activation cache: atomic shards, resumable runs, a final merge."""

from __future__ import annotations

import hashlib
import json
import logging
import os
import shutil
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd

from nsync.cache.layout import (
    CONDITIONS,
    FORMAT_VERSION,
    MANIFEST,
    MERGED_FROM,
    ROW_KEY,
    SHARDS,
    TURN_COLUMNS,
    damaged,
    layer_file,
    live_shards,
    load_states,
    model_dir,
    read_manifest,
    read_turns,
    rows_twice,
    write_checksums,
)
from nsync.errors import NsyncError
from nsync.storage import LOCK_FILE, FolderLock, disk_errors, temp_dir, write_json_atomic

log = logging.getLogger(__name__)

DTYPES = {"float16": np.float16, "float32": np.float32}


@dataclass
class ModelInfo:
    """What the manifest records about each model in a cache."""

    name: str
    source: str
    checksum: str | None
    n_layers: int  # decoder blocks; arrays hold n_layers + 1 (embeddings first) unless layer_names says otherwise
    hidden_size: int
    layer_names: list[str] = field(default_factory=list)
    derived: dict | None = None  # states added by nsync.reread: {"kind": ...}; None for simulated models
    dtype: str | None = None  # the precision the model ran in (e.g. bfloat16), when known

    def __post_init__(self) -> None:
        if not self.layer_names:
            self.layer_names = ["embed"] + [f"blocks.{i}.resid_post" for i in range(self.n_layers)]


def config_hash(identity: dict) -> str:
    return hashlib.sha256(json.dumps(identity, sort_keys=True, default=str).encode()).hexdigest()[:16]


def _same_identity(old: dict, new: dict) -> bool:
    """``old`` agrees with ``new`` on every key ``new`` has (recursively)."""
    for key, value in new.items():
        if isinstance(value, dict) and isinstance(old.get(key), dict):
            if not _same_identity(old[key], value):
                return False
        elif key not in old or old[key] != value:
            return False
    return True


def _with_defaults(identity: dict, defaults: dict) -> dict:
    """``identity`` with the keys it lacks taken from ``defaults`` (recursively)."""
    out = dict(identity)
    for key, value in defaults.items():
        if key not in out:
            out[key] = value
        elif isinstance(value, dict) and isinstance(out[key], dict):
            out[key] = _with_defaults(out[key], value)
    return out


class CacheWriter:
    """Append whole conversations to a cache folder; every :meth:`write_shard` is atomic.

    ``identity`` is the part of the config that decides the content of every conversation;
    reopening a folder with a different identity is refused, with the same one it resumes.
    Keys the caller no longer puts in its identity are not compared (a manifest written before a
    key left the identity still opens); keys added to the identity later are compared with
    ``identity_defaults``, the value a manifest without them implicitly had.

    >>> import tempfile, numpy as np
    >>> from nsync.cache import ActivationCache
    >>> from nsync.cache.layout import TurnRow
    >>> row = TurnRow(run_id="e0|o0|s0", episode_id="e0", scenario_id="s", scenario_codename="s", relationship="",
    ...               character_a="a", character_b="b", agent=0, character_id="a", model="m", partner_model="m",
    ...               order=0, seed=0, utterance=0, condition="interactive", characters="a|b", n_agents=2).as_dict()
    >>> w = CacheWriter(tempfile.mkdtemp() + "/c", config={}, identity={"x": 1}, models=[ModelInfo("m", "toy", None, 1, 3)])
    >>> _ = w.write_shard([row], {("m", "interactive"): np.zeros((1, 2, 3), dtype=np.float32)})   # [rows, layers, hidden]
    >>> _ = w.finalize()
    >>> ActivationCache.open(w.root).states("m", 1).shape
    (1, 3)
    """

    def __init__(
        self,
        path: str | Path,
        config: dict,
        identity: dict,
        models: list[ModelInfo],
        dtype: str = "float16",
        resume: bool = True,
        rank: int = 0,
        create: bool = True,
        identity_defaults: dict | None = None,
        lock: bool | None = None,
    ):
        if dtype not in DTYPES:
            raise NsyncError(f"cache dtype must be float16 or float32, got '{dtype}'")
        self.root = Path(path)
        self.dtype = dtype
        self.rank = rank
        self.models = {m.name: m for m in models}
        self.identity_hash = config_hash(identity)
        # One writer per cache (rank 0 holds it for a distributed run, whose other ranks write
        # their own shards); taken before the manifest is read, so what is read stays true.
        self._lock = FolderLock(self.root, "the cache") if (rank == 0 if lock is None else lock) else None
        if self._lock is not None and not (create or (self.root / MANIFEST).exists()):
            raise NsyncError(f"{self.root} holds no cache ({MANIFEST} missing)")
        self._hold()
        try:
            self._open(config, identity, models, resume, create, identity_defaults)
        except BaseException:
            self.close()  # a refused open leaves the folder free
            raise

    def _open(self, config: dict, identity: dict, models: list[ModelInfo], resume: bool, create: bool, identity_defaults: dict | None) -> None:
        dtype = self.dtype
        manifest_path = self.root / MANIFEST
        if manifest_path.exists():
            manifest = read_manifest(self.root)
            old = _with_defaults(manifest.get("identity", {}), identity_defaults or {})
            if manifest.get("config_hash") != self.identity_hash and not _same_identity(old, identity):
                diff = sorted(k for k in set(old) | set(identity) if k in identity and old.get(k) != identity.get(k))
                raise NsyncError(
                    f"{self.root} holds a cache made with a different config (differs in: {', '.join(diff) or 'format'}); "
                    "write to another folder, or delete this one to start over"
                )
            if not resume:
                raise NsyncError(f"{self.root} already holds a cache of this config; set resume=true to continue it")
            # The manifest stays as written: the same identity (keys added since at their old values) and
            # runtime settings do not change what the cache holds, and rewriting them would change its
            # content id, so every fit of it would be refitted.
            self.manifest = manifest
            # Models added later (nsync.reread) stay known, so a merge keeps their states.
            for name, info in manifest.get("models", {}).items():
                self.models.setdefault(name, ModelInfo(**info))
        elif not create:
            raise NsyncError(f"{self.root} holds no cache ({MANIFEST} missing)")
        else:
            if self.root.exists() and any(p.name != LOCK_FILE for p in self.root.iterdir()):
                raise NsyncError(f"{self.root} exists and is not an nsync cache; choose an empty or new folder")
            self.root.mkdir(parents=True, exist_ok=True)
            self.manifest = {
                "format_version": FORMAT_VERSION,
                "config_hash": self.identity_hash,
                "identity": identity,
                "config": config,
                "dtype": dtype,
                "models": {m.name: asdict(m) for m in models},
                "rows": {},
                "complete": False,
            }
            write_json_atomic(manifest_path, self.manifest)
        (self.root / SHARDS).mkdir(exist_ok=True)
        self._clean_leftovers()
        # (run, model, condition) already committed: a run's rows are written once (a second write of
        # the same rows, e.g. a writer re-run into its own folder, would double every utterance).
        self._written = self._committed()
        numbers = [int(p.name.rsplit("-", 1)[-1].lstrip("m")) for p in live_shards(self.root)]
        self._seq = max(numbers, default=-1) + 1  # shard names sort in the order they were written

    @classmethod
    def extend(cls, path: str | Path, models: list[ModelInfo]) -> CacheWriter:
        """Open a finished cache to add states of new models (``python -m nsync reread``); their
        shards are committed and merged like the simulation's."""
        if not (Path(path) / MANIFEST).exists():
            raise NsyncError(f"{path} holds no cache ({MANIFEST} missing)")
        manifest = read_manifest(Path(path))
        infos = [ModelInfo(**m) for name, m in manifest["models"].items() if name not in {m.name for m in models}]
        writer = cls(path, manifest.get("config", {}), manifest["identity"], infos + list(models), manifest["dtype"], create=False)
        for m in models:
            writer.manifest["models"][m.name] = asdict(m)
        write_json_atomic(writer.root / MANIFEST, writer.manifest)
        return writer

    def _hold(self) -> None:
        """Take the folder's lock unless this writer holds it (again after :meth:`finalize`)."""
        if self._lock is not None and not self._lock.held:
            self._lock.acquire()

    def close(self) -> None:
        """Release the cache folder for other writers (:meth:`finalize` does it too)."""
        if self._lock is not None:
            self._lock.release()

    def __enter__(self) -> CacheWriter:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def _clean_leftovers(self) -> None:
        """Drop half-written temp folders and shards that a finished merge superseded."""
        shard_root = self.root / SHARDS
        live = {p.name for p in live_shards(self.root)}
        for p in shard_root.iterdir():
            if p.name.startswith(f".tmp-{self.rank}-") or (p.is_dir() and not p.name.startswith(".") and p.name not in live):
                shutil.rmtree(p, ignore_errors=True)

    def _committed(self) -> set[tuple[str, str, str]]:
        keys: set[tuple[str, str, str]] = set()
        for shard in live_shards(self.root):
            turns = read_turns(shard, columns=["run_id", "model", "condition"]).drop_duplicates()
            keys.update(turns.itertuples(index=False, name=None))
        return keys

    def done_runs(self, model: str | None = None, condition: str | None = None) -> set[str]:
        """Ids of the conversations already committed (to skip when resuming); with ``model`` or
        ``condition``, those that hold rows of that model or condition."""
        return {r for r, m, c in self._written if model in (None, m) and condition in (None, c)}

    def write_shard(self, rows: list[dict], states: dict[tuple[str, str], np.ndarray]) -> Path | None:
        """Commit turns and their states as one shard.

        ``states[(model, condition)]`` is ``[n, n_layers + 1, hidden]``, its rows in the order of
        the ``rows`` that have that model and condition.
        """
        if not rows:
            return None
        turns = pd.DataFrame(rows)
        missing = [c for c in TURN_COLUMNS if c not in turns.columns]
        if missing:
            raise ValueError(f"turn rows lack columns {missing}")
        turns = turns[TURN_COLUMNS + [c for c in turns.columns if c not in TURN_COLUMNS]]
        if twice := rows_twice(turns):
            raise NsyncError(f"the rows to write hold {twice}: a run id names one run")
        keys = set(turns[["run_id", "model", "condition"]].drop_duplicates().itertuples(index=False, name=None))
        if again := sorted(keys & self._written):
            run, model, condition = again[0]
            raise NsyncError(
                f"{self.root} already holds {len(again)} of these runs' rows (e.g. run {run}, {model}/{condition}); "
                "a run is written once: skip the runs in done_runs(), or write to a new folder"
            )
        for (model, condition), array in states.items():
            self._check(turns, model, condition, array)
        self._hold()
        self._mark_in_progress()
        with disk_errors(self.root / SHARDS):
            tmp = temp_dir(self.root / SHARDS, f".tmp-{self.rank}-")
        try:
            with disk_errors(tmp):
                for (model, condition), array in states.items():
                    out = tmp / "states" / model_dir(model) / condition
                    out.mkdir(parents=True)
                    stored = array.astype(DTYPES[self.dtype])
                    for layer in range(array.shape[1]):
                        np.save(out / layer_file(layer), np.ascontiguousarray(stored[:, layer]))
                turns.to_parquet(tmp / "turns.parquet", index=False)
                _seal(tmp)
            final = self._commit(tmp, f"r{self.rank}")
            self._written |= keys
            return final
        except BaseException:
            shutil.rmtree(tmp, ignore_errors=True)
            raise

    def _mark_in_progress(self) -> None:
        """A finished cache that grows (a simulation resumed with more episodes) reads as in
        progress until :meth:`finalize` counts its rows again: never as a cache whose turns tables
        disagree with its manifest."""
        if self.manifest.get("complete") and self.rank == 0:
            self.manifest["complete"] = False
            write_json_atomic(self.root / MANIFEST, self.manifest)

    def _commit(self, tmp: Path, prefix: str) -> Path:
        """Rename a sealed temporary shard into place: the commit point."""
        final = self.root / SHARDS / f"{prefix}-{self._seq:05d}"
        self._seq += 1
        os.replace(tmp, final)
        return final

    def _check(self, turns: pd.DataFrame, model: str, condition: str, array: np.ndarray) -> None:
        if model not in self.models:
            raise ValueError(f"states for unknown model '{model}'")
        if condition not in CONDITIONS:
            raise ValueError(f"unknown condition '{condition}'; use one of {CONDITIONS}")
        sel = turns[(turns["model"] == model) & (turns["condition"] == condition)]
        info = self.models[model]
        expected = (len(sel), len(info.layer_names), info.hidden_size)
        if array.shape != expected:
            raise ValueError(f"states for {model}/{condition} have shape {array.shape}, expected {expected}")
        bad = ~np.isfinite(array)
        if not bad.any() and self.dtype == "float16":
            with np.errstate(over="ignore"):
                bad = ~np.isfinite(array.astype(np.float16))
            if bad.any():
                raise NsyncError(
                    f"hidden states of {model} exceed the float16 range (|x| > 65504); store float32 "
                    "(nsync.simulate: capture.dtype=float32, in a new output folder)"
                )
        if bad.any():
            row, layer = map(int, np.argwhere(bad)[0][:2])
            run = sel.iloc[row]
            raise NsyncError(
                f"NaN or inf in the hidden state of run {run['run_id']} (episode {run['episode_id']}), "
                f"utterance {run['utterance']}, layer {layer} ({info.layer_names[layer]}) of model {model}"
            )

    def finalize(self, merge: bool = True) -> dict:
        """Merge all shards into one (one array per model, condition and layer) and write the
        manifest's row counts, then release the folder. Safe to call again after a crash."""
        self._hold()
        shards = live_shards(self.root)
        if merge and len(shards) > 1:
            log.info("merging %d shards of %s into one", len(shards), self.root)
            self._merge(shards)
        self._write_row_counts(complete=True)
        self.close()
        return self.manifest

    def repair(self) -> list[str]:
        """Drop rows written twice (a cache two writers wrote at once, before caches were locked),
        keeping each row's first copy, and merge what is left into one shard. Returns one line per
        kind of dropped row (``[]``: nothing was wrong).

        >>> import tempfile
        >>> from nsync.testing.synthetic import write_synthetic_cache
        >>> path = write_synthetic_cache(tempfile.mkdtemp() + "/c", n_episodes=2, turns=2, hidden=4)
        >>> CacheWriter.open_existing(path).repair()
        []
        """
        self._hold()
        shards = live_shards(self.root)
        turns = _read_turns(shards)
        twice = turns.duplicated(ROW_KEY)
        dropped = []
        if twice.any():
            counts = turns[twice].groupby(["model", "condition"]).size()
            dropped = [f"{n} rows of {model}/{condition} written twice (kept the first copy)" for (model, condition), n in counts.items()]
            self._merge(shards, keep=~twice.to_numpy())
            self._write_row_counts(complete=bool(self.manifest.get("complete")))  # an unfinished cache stays unfinished
        self.close()
        return dropped

    @classmethod
    def open_existing(cls, path: str | Path) -> CacheWriter:
        """A writer of an existing cache as it is (its own identity, models and dtype)."""
        if not (Path(path) / MANIFEST).exists():
            raise NsyncError(f"{path} holds no cache ({MANIFEST} missing)")
        manifest = read_manifest(Path(path))
        infos = [ModelInfo(**m) for m in manifest["models"].values()]
        return cls(path, manifest.get("config", {}), manifest["identity"], infos, manifest["dtype"], create=False)

    def _write_row_counts(self, complete: bool) -> None:
        turns = _read_turns(live_shards(self.root))
        rows: dict[str, dict[str, int]] = {}
        if len(turns):
            for (model, condition), n in turns.groupby(["model", "condition"]).size().items():
                rows.setdefault(model, {})[condition] = int(n)
        self.manifest.update(
            rows=rows,
            n_runs=int(turns["run_id"].nunique()) if len(turns) else 0,
            shards=[p.name for p in live_shards(self.root)],
            complete=complete,
        )
        write_json_atomic(self.root / MANIFEST, self.manifest)

    def _merge(self, shards: list[Path], keep: np.ndarray | None = None) -> None:
        """One shard of ``shards``' rows (those ``keep`` marks, in the order of their turns tables)."""
        turns = _read_turns(shards)
        keep = np.ones(len(turns), dtype=bool) if keep is None else keep
        if twice := rows_twice(turns[keep]):  # two writers' work mixed: never merge it into one cache
            raise NsyncError(f"{self.root} holds {twice}; run `nsync cache repair {self.root}` to keep the first copy of each row")
        with disk_errors(self.root / SHARDS):
            tmp = temp_dir(self.root / SHARDS, f".tmp-{self.rank}-")
        try:
            with disk_errors(tmp):
                for model, info in self.models.items():
                    for condition in CONDITIONS:
                        self._merge_states(shards, turns, keep, model, condition, len(info.layer_names), tmp)
                turns[keep].to_parquet(tmp / "turns.parquet", index=False)
                (tmp / MERGED_FROM).write_text(json.dumps([s.name for s in shards]))
                _seal(tmp)
            self._commit(tmp, "m")
        except BaseException:
            shutil.rmtree(tmp, ignore_errors=True)
            raise
        for shard in shards:  # superseded; a crash here is cleaned up on the next open
            shutil.rmtree(shard, ignore_errors=True)

    def _merge_states(self, shards: list[Path], turns: pd.DataFrame, keep: np.ndarray, model: str, condition: str, n_layers: int, tmp: Path) -> None:
        parts = [s / "states" / model_dir(model) / condition for s in shards]
        parts = [p for p in parts if p.is_dir()]
        if not parts:
            return
        of_model = ((turns["model"] == model) & (turns["condition"] == condition)).to_numpy()
        rows = np.flatnonzero(keep[of_model])  # rows of this model and condition, over shards in order
        out = tmp / "states" / model_dir(model) / condition
        out.mkdir(parents=True)
        for layer in range(n_layers):
            arrays = [load_states(p / layer_file(layer)) for p in parts]
            merged = np.concatenate(arrays)
            if len(merged) != len(of_model[of_model]):
                raise damaged(
                    self.root, f"{model}/{condition} layer {layer} holds {len(merged)} rows over its shards, the turns tables {int(of_model.sum())}"
                )
            np.save(out / layer_file(layer), merged if len(rows) == len(merged) else merged[rows])


def _read_turns(shards: list[Path]) -> pd.DataFrame:
    frames = [read_turns(s) for s in shards]
    return pd.concat(frames, ignore_index=True) if frames else pd.DataFrame(columns=TURN_COLUMNS)


def _seal(folder: Path) -> None:
    """Record the checksums of a shard's files and flush them all to disk, before its commit."""
    write_checksums(folder)
    _fsync_tree(folder)


def _fsync_tree(path: Path) -> None:
    for p in path.rglob("*"):
        if p.is_file():
            with open(p, "rb") as fh:
                os.fsync(fh.fileno())
