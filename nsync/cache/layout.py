"""Names and formats shared by the cache writer and reader.

A cache folder::

    manifest.json                    format version, models, row counts, resolved config
    shards/<name>/turns.parquet      one row per cached utterance
    shards/<name>/states/<model>/<condition>/layer_<ii>.npy   [rows, hidden], layer-major

A shard appears by an atomic rename, so a crash leaves either a whole shard or none. When a
run finishes, its shards are merged into one, so each (model, condition, layer) is then a
single ``.npy`` read with ``np.load(mmap_mode="r")``.
"""

from __future__ import annotations

import json
import os
import re
import tempfile
from pathlib import Path

FORMAT_VERSION = 1
MANIFEST = "manifest.json"
SHARDS = "shards"
MERGED_FROM = "merged_from.json"
#: interactive: the speaker's own prompt; observer: a passive re-reading of it; generated_mean: the
#: mean over the reply's tokens; listener: the non-speaker reading the same history with its own
#: prompt (the same-time control); teacher_forced: a re-reading of the transcript by another
#: model (untrained copy, text embedder) added by ``python -m nsync.reread``.
CONDITIONS = ("interactive", "observer", "generated_mean", "listener", "teacher_forced")

#: Columns of the turns table, in order.
TURN_COLUMNS = [
    "run_id",  # one simulated conversation: episode x model order x sampling seed
    "episode_id",
    "scenario_id",
    "scenario_codename",
    "relationship",
    "character_a",  # the character who speaks first (agent 0)
    "character_b",
    "agent",  # 0 or 1: who speaks this utterance
    "character_id",  # the speaker's character id
    "model",  # the speaker's model
    "partner_model",
    "order",  # 0 or 1: which of the two model orders this run uses
    "seed",
    "utterance",  # index of the utterance in the run, from 0
    "condition",  # one of CONDITIONS
    "text",
    "left",  # the speaker ended the conversation with this utterance
    "n_prompt_tokens",
    "n_new_tokens",
]


def model_dir(model: str) -> str:
    """A folder name for a model name (hub ids and paths contain slashes)."""
    return re.sub(r"[^A-Za-z0-9._-]+", "__", model).strip("_") or "model"


def layer_file(layer: int) -> str:
    return f"layer_{layer:02d}.npy"


def write_json_atomic(path: Path, obj: dict) -> None:
    """Write JSON through a temporary file and a rename, so readers never see half a file."""
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.")
    with os.fdopen(fd, "w") as fh:
        json.dump(obj, fh, indent=1, default=str)
        fh.flush()
        os.fsync(fh.fileno())
    os.replace(tmp, path)


def live_shards(root: Path) -> list[Path]:
    """Committed shards in order, without those already merged into another shard."""
    shard_root = root / SHARDS
    if not shard_root.is_dir():
        return []
    shards = sorted(p for p in shard_root.iterdir() if p.is_dir() and not p.name.startswith("."))
    superseded: set[str] = set()
    for shard in shards:
        merged = shard / MERGED_FROM
        if merged.exists():
            superseded.update(json.loads(merged.read_text()))
    return [s for s in shards if s.name not in superseded]
