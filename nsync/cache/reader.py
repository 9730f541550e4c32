"""Read an activation cache: the turns table and one layer's states at a time."""

from __future__ import annotations

import hashlib
import json
from functools import cached_property
from pathlib import Path

import numpy as np
import pandas as pd

from nsync.cache.layout import (
    ECHO_KINDS,
    FORMAT_VERSION,
    MANIFEST,
    REPLY_FLAGS,
    damaged,
    flagged,
    layer_file,
    live_shards,
    load_states,
    model_dir,
    participant_ids,
    read_manifest,
    read_turns,
    row_count_mismatches,
    rows_twice,
)
from nsync.errors import NsyncError


def next_utterances(candidates: pd.DataFrame, run_ids, after, lag: int = 1, agent=None) -> np.ndarray:
    """For each query ``(run_ids[i], after[i])``: the position in ``candidates`` of the ``lag``-th
    row of that run after utterance ``after[i]`` (``lag`` < 0: the ``-lag``-th row before it; 0: the
    row at it), only rows of agent ``agent[i]`` counted when ``agent`` is given (a scalar or one per
    query); -1 where the run has no such row.

    The one rule behind every pairing: with ``agent=None`` and one row per utterance it is the
    utterance ``after + lag``; with ``agent=j`` it is agent j's ``lag``-th next utterance.

    >>> rows = pd.DataFrame({"run_id": ["r"] * 5, "utterance": [0, 1, 2, 3, 4], "agent": [0, 1, 2, 0, 1]})
    >>> next_utterances(rows, ["r", "r", "r"], [0, 0, 3], lag=1, agent=[2, 1, 2]).tolist()
    [2, 1, -1]
    >>> next_utterances(rows, ["r", "r"], [1, 4], lag=2).tolist(), next_utterances(rows, ["r"], [4], lag=-1, agent=0).tolist()
    ([3, -1], [3])
    """
    n = len(run_ids)
    queries = pd.DataFrame({"run_id": np.asarray(run_ids, dtype=object), "after": np.asarray(after, dtype=np.int64), "query": np.arange(n)})
    cands = pd.DataFrame(
        {
            "run_id": candidates["run_id"].to_numpy(dtype=object),
            "utterance": candidates["utterance"].to_numpy(dtype=np.int64),
            "position": np.arange(len(candidates)),
        }
    )
    keys = ["run_id"]
    if agent is not None:
        queries["agent"] = np.broadcast_to(np.asarray(agent, dtype=np.int64), (n,))
        cands["agent"] = candidates["agent"].to_numpy(dtype=np.int64)
        keys.append("agent")
    cands = cands.sort_values(keys + ["utterance"])
    cands["rank"] = cands.groupby(keys, sort=False).cumcount()
    # rank of the last candidate at or before the anchor (-1: none); backwards, the anchor excludes `after`
    queries["anchor"] = queries["after"] - (lag < 0)
    last = pd.merge_asof(
        queries.sort_values("anchor"),
        cands.sort_values("utterance")[keys + ["utterance", "rank"]],
        left_on="anchor",
        right_on="utterance",
        by=keys,
        direction="backward",
    )
    last["rank"] = last["rank"].fillna(-1).astype(np.int64) + (lag if lag >= 0 else lag + 1)
    found = last.drop(columns="utterance").merge(cands[keys + ["rank", "position", "utterance"]], on=keys + ["rank"], how="left")
    if lag == 0:  # the row at `after` itself, not the last one before it
        found.loc[found["utterance"] != found["after"], "position"] = np.nan
    found = found[found["position"].notna() & (found["rank"] >= 0)]
    out = np.full(n, -1, dtype=np.int64)
    out[found["query"].to_numpy()] = found["position"].to_numpy().astype(np.int64)
    return out


#: Fewer pairs than this in a direction: too few for a synchrony estimate at all.
MIN_PAIRS = 40


class ActivationCache:
    """A cache folder opened for reading.

    >>> import tempfile
    >>> from nsync.testing.synthetic import write_synthetic_cache
    >>> cache = ActivationCache.open(write_synthetic_cache(tempfile.mkdtemp() + "/c", n_episodes=3, turns=4, hidden=8))
    >>> cache.turns[["episode_id", "agent", "utterance"]].shape
    (12, 3)
    >>> cache.states("synthetic", layer=1).shape  # [rows, hidden], rows aligned with
    (12, 8)
    >>> # cache.turns[(cache.turns.model == "synthetic") & (cache.turns.condition == "interactive")]
    """

    def __init__(self, root: Path, manifest: dict, shards: list[Path]):
        self.root = root
        self.manifest = manifest
        self.shards = shards

    @classmethod
    def open(cls, path: str | Path) -> ActivationCache:
        root = Path(path)
        if root.exists() and not root.is_dir():
            raise NsyncError(f"{root} is a file, not an nsync activation cache folder")
        manifest = read_manifest(root)
        version = manifest.get("format_version")
        if version != FORMAT_VERSION:
            raise NsyncError(f"{root}: cache format version {version}, this nsync reads version {FORMAT_VERSION}")
        return cls(root, manifest, live_shards(root))

    def content_id(self) -> str:
        """A hash of what the cache holds: its manifest and every live shard (name and size of its
        turns table). It changes when states are added (a re-read) or a shard is merged."""
        parts = [json.dumps(self.manifest, sort_keys=True)]
        parts += [f"{shard.name}:{(shard / 'turns.parquet').stat().st_size}" for shard in sorted(self.shards)]
        return hashlib.sha256("\n".join(parts).encode()).hexdigest()[:16]

    @property
    def models(self) -> list[str]:
        return list(self.manifest["models"])

    @property
    def simulated_models(self) -> list[str]:
        """The models that took part in the conversations (not states added by ``nsync.reread``)."""
        return [m for m, info in self.manifest["models"].items() if not info.get("derived")]

    def scenario_source(self, override: str | None = None) -> str:
        """Where the cache's episodes came from (``builtin`` or a SOTOPIA folder), for re-rendering
        prompts and transcripts; ``override`` wins (imported caches do not record one)."""
        source = override or self.manifest.get("config", {}).get("scenarios", {}).get("source")
        if source is None:
            raise NsyncError(f"{self.root} does not record its scenarios; set scenarios=builtin or a SOTOPIA folder")
        return source

    def model_info(self, model: str) -> dict:
        if model not in self.manifest["models"]:
            raise NsyncError(f"model '{model}' is not in cache {self.root}; it holds {self.models}")
        return self.manifest["models"][model]

    def layer_names(self, model: str) -> list[str]:
        return list(self.model_info(model)["layer_names"])

    @cached_property
    def turns(self) -> pd.DataFrame:
        """One row per cached utterance; ``row`` indexes :meth:`states` for its model and condition."""
        frames = [read_turns(s) for s in self.shards]
        if not frames:
            raise NsyncError(f"cache {self.root} holds no utterances yet")
        turns = pd.concat(frames, ignore_index=True)
        if "characters" not in turns:  # caches written before groups: two agents
            turns["characters"] = turns["character_a"] + "|" + turns["character_b"]
            turns["n_agents"] = 2
        if twice := rows_twice(turns):  # two writers at once, before caches were locked
            raise NsyncError(f"cache {self.root} holds {twice}; `nsync cache repair {self.root}` keeps the first copy of each row")
        if wrong := row_count_mismatches(self.manifest, turns):  # the manifest's counts, written when it was finished
            raise damaged(self.root / MANIFEST, wrong[0])
        turns["row"] = turns.groupby(["model", "condition"]).cumcount()
        return turns

    def incomplete(self) -> str | None:
        """Why the cache is not finished (its writer stopped, or is still running), with what it
        holds so far; None when it is complete."""
        if self.manifest.get("complete"):
            return None
        runs = self.turns["run_id"].nunique() if self.shards else 0
        return (
            f"its writer has not finished (or was stopped): {runs} runs in {len(self.shards)} shard(s) so far; "
            "run the same command again to resume it"
        )

    @property
    def agents(self) -> list[int]:
        """The agent indices that speak in the cache (``[0, 1]`` for dyads)."""
        return sorted(int(a) for a in self.turns.loc[self.turns["condition"] == "interactive", "agent"].unique())

    def utterances(self, agent: int, condition: str = "interactive", model: str | None = None) -> pd.DataFrame:
        """Every utterance of agent ``agent`` (its rows of the turns table, in run and utterance
        order); ``row`` indexes :meth:`states` of the row's model and ``condition``.

        >>> from nsync.testing import example_cache
        >>> cache = ActivationCache.open(example_cache())     # 40 planted episodes of 6 utterances
        >>> cache.utterances(0).shape[0]                      # agent 0 speaks at t = 0, 2, 4
        120
        """
        t = self.turns
        rows = t[(t["agent"] == agent) & (t["condition"] == condition)]
        if model is not None:
            rows = rows[rows["model"] == model]
        return rows.sort_values(["run_id", "utterance"])

    def next_utterance(self, run_id: str, t: int, agent: int, lag: int = 1, condition: str = "interactive") -> pd.Series | None:
        """Agent ``agent``'s ``lag``-th utterance after utterance ``t`` of run ``run_id`` (its turns
        row), or None when the run ends before it; the rule of ``data.directions=i->j``.

        >>> from nsync.testing import example_cache
        >>> cache = ActivationCache.open(example_cache())
        >>> int(cache.next_utterance("ep0001|o0|s0", t=3, agent=0)["utterance"])
        4
        """
        rows = self.turns[(self.turns["condition"] == condition) & (self.turns["run_id"] == run_id)]
        position = next_utterances(rows, [run_id], [t], lag, agent=agent)[0]
        return None if position < 0 else rows.iloc[position]

    def states(self, model: str, layer: int, condition: str = "interactive") -> np.ndarray:
        """``[rows, hidden]`` states of one layer (0 = embeddings), memory-mapped when the cache
        is a single shard; rows follow the turns table's rows of that model and condition."""
        info = self.model_info(model)
        n_layers = len(info["layer_names"])
        if not 0 <= layer < n_layers:
            raise NsyncError(f"layer {layer} out of range for {model}: it has layers 0..{n_layers - 1} (0 = {info['layer_names'][0]})")
        if beyond := [f for f in self._layer_files(model, n_layers, condition) if f.exists()]:
            raise damaged(self.root / MANIFEST, f"it names {n_layers} layers of {model}, but {beyond[0].parent} holds more ({beyond[0].name})")
        parts = [load_states(f) for f in self._layer_files(model, layer, condition)]
        expected = int(((self.turns["model"] == model) & (self.turns["condition"] == condition)).sum())
        if not parts:
            if expected:
                raise NsyncError(f"cache {self.root} lacks the states of {model}/{condition} layer {layer}")
            raise NsyncError(f"cache {self.root} has no '{condition}' states for {model}")
        array = parts[0] if len(parts) == 1 else np.concatenate(parts)
        if array.shape != (expected, info["hidden_size"]):
            files = self._layer_files(model, layer, condition)
            raise damaged(
                files[0] if len(files) == 1 else self.root,
                f"{model}/{condition} layer {layer} has shape {array.shape}, expected ({expected}, {info['hidden_size']}) "
                "from the turns table and manifest",
            )
        return array

    def _layer_files(self, model: str, layer: int, condition: str) -> list[Path]:
        """The ``.npy`` files of one layer's states, one per shard that holds some, in shard order."""
        files = [shard / "states" / model_dir(model) / condition / layer_file(layer) for shard in self.shards]
        return [f for f in files if f.exists() or f.parent.is_dir()]

    def read_rows(self, model: str, layer: int, rows: np.ndarray, condition: str = "interactive", dtype=None) -> np.ndarray:
        """``states(model, layer, condition)[rows]`` in memory (as ``dtype``), checked to be finite: a
        NaN or inf (a damaged file) stops with the file and the rows named, before it reaches a fit.

        >>> from nsync.testing import example_cache
        >>> ActivationCache.open(example_cache()).read_rows("synthetic", 1, np.array([0, 2])).shape
        (2, 4)
        """
        x = np.asarray(self.states(model, layer, condition)[rows], dtype=dtype)
        if not np.isfinite(x).all():
            bad = np.asarray(rows)[~np.isfinite(x.reshape(len(x), -1)).all(1)]
            raise self._not_finite(model, layer, condition, bad)
        return x

    def _not_finite(self, model: str, layer: int, condition: str, bad_rows: np.ndarray) -> NsyncError:
        """The error for NaN/inf at ``bad_rows``: the file (and its rows) that holds the first one."""
        files = self._layer_files(model, layer, condition)
        sizes = np.cumsum([0] + [load_states(f).shape[0] for f in files])
        bad_rows = np.unique(bad_rows)
        shard = int(np.searchsorted(sizes, bad_rows[0], side="right")) - 1
        in_file = bad_rows[(bad_rows >= sizes[shard]) & (bad_rows < sizes[shard + 1])] - sizes[shard]
        shown = ", ".join(map(str, in_file[:5])) + (", ..." if len(in_file) > 5 else "")
        return damaged(files[shard], f"{len(in_file)} row(s) read hold NaN or inf (rows {shown} of this file; {model}/{condition} layer {layer})")

    def summary(self) -> str:
        """A few lines describing what the cache holds."""
        from nsync.cache.verify import verification_line

        t = self.turns
        lines = [f"cache {self.root} ({'complete' if self.manifest.get('complete') else 'in progress'}, {self.manifest.get('dtype')})"]
        if not self.manifest.get("complete"):
            lines.append(f"  incomplete: {self.incomplete()}")
        lines.append(f"  {verification_line(self.root)}")
        lines.append(
            f"  {t['run_id'].nunique()} runs, {t['episode_id'].nunique()} episodes, {t['scenario_id'].nunique()} scenarios, "
            f"{len({c for cs in t['characters'].unique() for c in participant_ids(cs)})} characters, {len(self.agents)} agents per episode at most, "
            f"{len(self.shards)} shard(s)"
        )
        for model in self.models:
            info = self.model_info(model)
            counts = t[t["model"] == model].groupby("condition").size().to_dict()
            ran_in = f", ran in {info['dtype']}" if info.get("dtype") else ""
            lines.append(
                f"  {model}: {len(info['layer_names'])} layers x hidden {info['hidden_size']} (source {info['source']}{ran_in}); rows {counts}"
            )
        inter = t[t["condition"] == "interactive"]
        if len(inter):
            per_run = inter.groupby("run_id").size()
            lines.append(f"  utterances per run: mean {per_run.mean():.1f}, min {per_run.min()}, max {per_run.max()}")
            q = self.quality()
            lines.append(f"  episodes by length (utterances: runs): {_counts(q['runs_by_length'])}")
            lines.append(f"  leaves by utterance index: {_counts(q['leaves_by_utterance']) or 'none'}")
            if q["flags_recorded"]:
                lines.append(f"  replies: {describe_reply_flags(q)}; {q['resampled']} re-sampled")
            pairs = ", ".join(f"{d} {n}" for d, n in q["pairs_lag1"].items())
            lines.append(f"  pairs at lag 1 per direction: {pairs}")
            lines += [f"  note: {n}" for n in q["notes"]] + [f"  warning: {w}" for w in q["warnings"]]
        return "\n".join(lines)

    def reply_flags(self) -> dict:
        """How many interactive replies the cache holds and how many carry each flag (the
        fit records this beside its result).

        >>> from nsync.testing import write_synthetic_cache
        >>> import tempfile
        >>> path = write_synthetic_cache(tempfile.mkdtemp() + "/c", n_episodes=10, turns=4, hidden=4, flag_share=0.25)
        >>> ActivationCache.open(path).reply_flags()["replies"]
        40
        """
        q = self.quality()
        return {k: q[k] for k in ("replies", "flagged", "empty", "echo", "echo_by_kind", "early_leave")}

    def quality(self) -> dict:
        """What the conversations are worth for synchrony: episode lengths, when agents left,
        flagged replies, the pairs each direction has at lag 1, and warnings.

        ``warnings`` says when more than 20% of episodes end before their fourth utterance, and when
        a direction has fewer than :data:`MIN_PAIRS` pairs (too few for a synchrony estimate);
        ``notes`` when it has fewer than twice the hidden size (enough for ridge with an alpha
        chosen on validation, not for the paper's near-unregularised probe).
        """
        t = self.turns
        inter = t[t["condition"] == "interactive"]
        lengths = inter.groupby("run_id").size()
        flags = inter["flag"] if "flag" in inter else None
        has = lambda name: int(flagged(flags, [name]).sum()) if flags is not None else 0  # noqa: E731
        pairs = {}
        agents = self.agents
        # dyads: an utterance of the agent and the next one of the run; groups: every ordered pair
        plan = [("A->B", 0, None), ("B->A", 1, None)] if agents == [0, 1] else [(f"{i}->{j}", i, j) for i in agents for j in agents if i != j]
        for direction, source, target in plan:
            src = inter[inter["agent"] == source]
            found = next_utterances(inter, src["run_id"], src["utterance"], 1, agent=target)
            pairs[direction] = int((found >= 0).sum())
        hidden = max((info["hidden_size"] for m, info in self.manifest["models"].items() if not info.get("derived")), default=0)
        warnings = []
        short = float((lengths < 4).mean()) if len(lengths) else 0.0
        if short > 0.2:
            warnings.append(f"{short:.0%} of episodes end before their fourth utterance")
        notes = []
        too_few = {d: n for d, n in pairs.items() if n < MIN_PAIRS}
        few = {d: n for d, n in pairs.items() if MIN_PAIRS <= n < 2 * hidden}
        if too_few:
            warnings.append(
                f"too few pairs for a synchrony estimate ({', '.join(f'{d} {n}' for d, n in too_few.items())}; "
                f"fewer than {MIN_PAIRS}); simulate more episodes"
            )
        if few:
            notes.append(
                f"fewer pairs than twice the hidden size {hidden} ({', '.join(f'{d} {n}' for d, n in few.items())}): fit with an "
                "alpha chosen on validation (an affine.alphas grid, as configs/fit/quickstart.yaml does); the paper's single alpha 0.1 overfits them"
            )
        return {
            "runs_by_length": lengths.value_counts().sort_index().to_dict(),
            "leaves_by_utterance": inter.loc[inter["left"].astype(bool), "utterance"].value_counts().sort_index().to_dict(),
            "flags_recorded": flags is not None,
            "empty": has("empty"),
            "echo": has("echo"),
            "echo_by_kind": {k: n for k in ECHO_KINDS if (n := has(f"echo:{k}"))},
            "replies": len(inter),
            "flagged": int(flagged(flags, list(REPLY_FLAGS)).sum()) if flags is not None else 0,
            "early_leave": has("early_leave"),
            "resampled": int((inter["resampled"].fillna(0) > 0).sum()) if "resampled" in inter else 0,
            "pairs_lag1": pairs,
            "warnings": warnings,
            "notes": notes,
        }


def describe_reply_flags(flags: dict) -> str:
    """One line for :meth:`ActivationCache.reply_flags` (or ``quality()``): how many replies are
    flagged, and by what.

    >>> describe_reply_flags({"replies": 200, "flagged": 9, "empty": 1, "echo": 8, "echo_by_kind": {"goal": 6, "own_reply": 2},
    ...                       "early_leave": 0})
    '9 of 200 flagged (4.5%): 1 empty, 8 echo (goal 6, own_reply 2), 0 early leaves ignored'
    """
    kinds = ", ".join(f"{k} {n}" for k, n in flags.get("echo_by_kind", {}).items())
    return (
        f"{flags['flagged']} of {flags['replies']} flagged ({flags['flagged'] / max(flags['replies'], 1):.1%}): "
        f"{flags['empty']} empty, {flags['echo']} echo{f' ({kinds})' if kinds else ''}, {flags['early_leave']} early leaves ignored"
    )


def _counts(d: dict) -> str:
    return ", ".join(f"{k}: {v}" for k, v in d.items())
