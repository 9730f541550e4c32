"""Names and formats shared by the cache writer and reader.

A cache folder::

    manifest.json                    format version, models, row counts, resolved config
    shards/<name>/turns.parquet      one row per cached utterance
    shards/<name>/checksums.json     each file's content checksum (nsync cache verify)
    shards/<name>/states/<model>/<condition>/layer_<ii>.npy   [rows, hidden], layer-major

A shard appears by an atomic rename, so a crash leaves either a whole shard or none. When a
run finishes, its shards are merged into one, so each (model, condition, layer) is then a
single ``.npy`` read with ``np.load(mmap_mode="r")``.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass, field, fields
from pathlib import Path

import numpy as np
import pandas as pd
import xxhash

from nsync.errors import NsyncError

FORMAT_VERSION = 1
MANIFEST = "manifest.json"
SHARDS = "shards"
MERGED_FROM = "merged_from.json"
#: Each shard's record of its files' checksums, written with the shard.
CHECKSUMS = "checksums.json"
CHECKSUM_ALGORITHM = "xxh3_128"
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


def row_count_mismatches(manifest: dict, turns: pd.DataFrame) -> list[str]:
    """Where a finished cache's manifest row counts disagree with its turns tables (``[]``: none;
    an unfinished cache has no counts to hold).

    >>> turns = pd.DataFrame({"model": ["m", "m"], "condition": ["interactive"] * 2})
    >>> row_count_mismatches({"complete": True, "rows": {"m": {"interactive": 3}}}, turns)
    ['it records 3 rows of m/interactive, the turns tables hold 2']
    """
    if not manifest.get("complete"):
        return []
    counts = turns.groupby(["model", "condition"]).size()
    return [
        f"it records {n} rows of {model}/{condition}, the turns tables hold {found}"
        for model, by_condition in (manifest.get("rows") or {}).items()
        for condition, n in by_condition.items()
        if (found := int(counts.get((model, condition), 0))) != n
    ]


def participant_ids(characters: str) -> list[str]:
    """The character ids of a row's ``characters`` column, in agent order."""
    return characters.split("|")


def model_dir(model: str) -> str:
    """A folder name for a model name (hub ids and paths contain slashes)."""
    return re.sub(r"[^A-Za-z0-9._-]+", "__", model).strip("_") or "model"


def layer_file(layer: int) -> str:
    return f"layer_{layer:02d}.npy"


def checksum(path: Path) -> str:
    """The content checksum of a file (xxHash3, 128 bits: several GB/s, so sealing a shard costs
    little beside simulating it)."""
    digest = xxhash.xxh3_128()
    with open(path, "rb") as fh:
        while block := fh.read(1 << 24):
            digest.update(block)
    return digest.hexdigest()


def write_checksums(folder: Path) -> None:
    """Record the checksum of every file of a shard folder in its :data:`CHECKSUMS` (``nsync cache
    verify`` recomputes them)."""
    files = sorted(p for p in folder.rglob("*") if p.is_file() and p.name != CHECKSUMS)
    record = {"algorithm": CHECKSUM_ALGORITHM, "files": {p.relative_to(folder).as_posix(): checksum(p) for p in files}}
    (folder / CHECKSUMS).write_text(json.dumps(record, indent=1))


#: Keys every manifest has, and those of each of its models.
MANIFEST_KEYS = ("format_version", "identity", "dtype", "models")
MODEL_KEYS = ("name", "source", "n_layers", "hidden_size", "layer_names")


def damaged(path: Path, what: str) -> NsyncError:
    """The error for a damaged cache file: which file, what is wrong, what to do."""
    return NsyncError(
        f"{path} is damaged: {what}; `nsync cache verify {cache_root(path)}` lists every damaged file "
        "(restore them from a copy, or simulate the episodes again into a new folder)"
    )


def cache_root(path: Path) -> Path:
    """The cache folder that holds ``path`` (the folder with the manifest)."""
    for folder in [path, *path.parents]:
        if (folder / MANIFEST).exists():
            return folder
    return path.parent


def read_manifest(root: Path) -> dict:
    """The manifest of the cache in ``root``, with an error naming what is missing or damaged."""
    path = root / MANIFEST
    try:
        manifest = json.loads(path.read_text())
    except FileNotFoundError:
        raise NsyncError(f"{root} is not an nsync activation cache ({MANIFEST} not found)") from None
    except (ValueError, UnicodeDecodeError) as err:
        raise damaged(path, f"it is not valid JSON ({err}); truncated or overwritten") from None
    if not isinstance(manifest, dict):
        raise damaged(path, "it holds no JSON object")
    if missing := [k for k in MANIFEST_KEYS if k not in manifest]:
        raise damaged(path, f"it lacks the key(s) {missing}")
    for name, info in manifest["models"].items():
        if not isinstance(info, dict) or (missing := [k for k in MODEL_KEYS if k not in info]):
            raise damaged(path, f"model '{name}' lacks the key(s) {missing if isinstance(info, dict) else list(MODEL_KEYS)}")
    return manifest


def read_turns(shard: Path, columns: list[str] | None = None) -> pd.DataFrame:
    """A shard's turns table, with an error naming it when it is missing or unreadable."""
    path = shard / "turns.parquet"
    try:
        return pd.read_parquet(path, columns=columns)
    except FileNotFoundError:
        raise damaged(shard, "its turns table turns.parquet is missing") from None
    except (OSError, ValueError) as err:  # pyarrow's ArrowInvalid is a ValueError
        raise damaged(path, f"it cannot be read as a parquet table ({str(err).splitlines()[0]})") from None


def load_states(path: Path) -> np.ndarray:
    """One layer's ``.npy``, memory-mapped, with an error naming it when it is missing or damaged."""
    try:
        return np.load(path, mmap_mode="r")
    except FileNotFoundError:
        raise damaged(path.parent, f"its states file {path.name} is missing") from None
    except (OSError, ValueError) as err:  # truncated ("mmap length is greater than file size"), a garbled header
        raise damaged(path, f"it cannot be read as a .npy array ({str(err).splitlines()[0]})") from None


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
            try:
                superseded.update(json.loads(merged.read_text()))
            except ValueError:
                raise damaged(merged, "it is not valid JSON") from None
    return [s for s in shards if s.name not in superseded]
