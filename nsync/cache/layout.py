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
from dataclasses import dataclass, field, fields
from pathlib import Path

import numpy as np
import pandas as pd

from nsync.errors import NsyncError

FORMAT_VERSION = 1
MANIFEST = "manifest.json"
SHARDS = "shards"
MERGED_FROM = "merged_from.json"
#: interactive: the speaker's own prompt; observer: a passive re-reading of it; generated_mean: the
#: mean over the reply's tokens; listener: the non-speaker reading the same history with its own
#: prompt (the same-time control); teacher_forced: a re-reading of the transcript by another
#: model (untrained copy, text embedder) added by ``python -m nsync reread``.
CONDITIONS = ("interactive", "observer", "generated_mean", "listener", "teacher_forced")
#: Flags a reply may carry (the ``flag`` column, comma-joined): ``empty``; ``early_leave`` (a leave
#: before ``min_utterances``, ignored); ``echo:<kind>``, a reply that recites what
#: :mod:`nsync.simulation.echo` names (caches before the kinds: plain ``echo``).
REPLY_FLAGS = ("empty", "early_leave", "echo")
ECHO_KINDS = ("cue", "goal", "background", "scenario", "partner", "own_reply")


def check_flag_names(names: list[str]) -> None:
    """Raise a clear error for a name that is not a reply flag (``echo`` or ``echo:<kind>`` for echoes)."""
    known = list(REPLY_FLAGS) + [f"echo:{k}" for k in ECHO_KINDS]
    bad = [n for n in names if n not in known]
    if bad:
        raise NsyncError(f"unknown reply flag(s) {bad} in data.exclude_flags; use some of {known}")


def flagged(flag: pd.Series, names: list[str]) -> np.ndarray:
    """Which rows carry one of the flags ``names``: a name matches a flag equal to it, and
    ``echo`` also every ``echo:<kind>``.

    >>> import pandas as pd
    >>> flagged(pd.Series(["", "echo:goal", "empty,echo:partner", None]), ["echo:partner", "empty"]).tolist()
    [False, False, True, False]
    >>> flagged(pd.Series(["echo", "echo:goal"]), ["echo"]).tolist()
    [True, True]
    """
    wanted = set(names)

    def hit(value) -> bool:
        for f in str(value or "").split(","):
            if f and (f in wanted or f.split(":")[0] in wanted):
                return True
        return False

    return np.fromiter((hit(v) for v in flag), dtype=bool, count=len(flag))


@dataclass
class TurnRow:
    """One row of the turns table: one state (a model's, in one condition) at one utterance.
    Every writer of turn rows builds them with this (``as_dict()``); extra columns (``resampled``,
    ``flag``) go in ``extra``."""

    run_id: str  # one simulated conversation: episode x model order x sampling seed
    episode_id: str
    scenario_id: str
    scenario_codename: str
    relationship: int | str  # SOTOPIA relationship code (-1: unknown); synthetic caches write ""
    character_a: str  # agent 0's character (speaks first under round robin)
    character_b: str  # agent 1's character
    agent: int  # who speaks this utterance (0 .. n_agents - 1)
    character_id: str  # the speaker's character id
    model: str  # the speaker's model
    partner_model: str  # the other agents' model ("|"-joined when they differ)
    order: int  # which model order (rotation of the models over agents) this run uses
    seed: int
    utterance: int  # index of the utterance in the run, from 0
    condition: str  # one of CONDITIONS
    text: str = ""
    left: bool = False  # the speaker ended the conversation with this utterance
    n_prompt_tokens: int = 0
    n_new_tokens: int = 0
    characters: str = ""  # every participant's character id in agent order, "|"-joined (default: character_a|character_b)
    n_agents: int = 2
    extra: dict = field(default_factory=dict)

    def __post_init__(self) -> None:
        if not self.characters:
            self.characters = f"{self.character_a}|{self.character_b}"

    def as_dict(self) -> dict:
        row = {c: getattr(self, c) for c in TURN_COLUMNS}
        return row | self.extra


#: Columns of the turns table, in order.
TURN_COLUMNS = [f.name for f in fields(TurnRow) if f.name != "extra"]


#: What identifies one row of the turns table: one state of one speaker (or listener) at one utterance.
ROW_KEY = ["run_id", "utterance", "agent", "model", "condition"]


def rows_twice(turns: pd.DataFrame) -> str | None:
    """How many rows of ``turns`` repeat another's :data:`ROW_KEY`, with the first (None if none)."""
    twice = turns.duplicated(ROW_KEY)
    if not twice.any():
        return None
    first = turns[twice].iloc[0]
    return f"{int(twice.sum())} rows twice (e.g. run {first['run_id']}, utterance {first['utterance']}, {first['model']}/{first['condition']})"


def participant_ids(characters: str) -> list[str]:
    """The character ids of a row's ``characters`` column, in agent order."""
    return characters.split("|")


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
