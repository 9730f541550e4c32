"""Read an activation cache: the turns table and one layer's states at a time."""

from __future__ import annotations

import json
from functools import cached_property
from pathlib import Path

import numpy as np
import pandas as pd

from nsync.cache.layout import FORMAT_VERSION, MANIFEST, layer_file, live_shards, model_dir
from nsync.errors import NsyncError


class ActivationCache:
    """A cache folder opened for reading.

    >>> import tempfile
    >>> from nsync.data.synthetic import write_synthetic_cache
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
    def open(cls, path: str | Path) -> "ActivationCache":
        root = Path(path)
        manifest_path = root / MANIFEST
        if not manifest_path.is_file():
            raise NsyncError(f"{root} is not an nsync activation cache ({MANIFEST} not found)")
        manifest = json.loads(manifest_path.read_text())
        version = manifest.get("format_version")
        if version != FORMAT_VERSION:
            raise NsyncError(f"{root}: cache format version {version}, this nsync reads version {FORMAT_VERSION}")
        return cls(root, manifest, live_shards(root))

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
        frames = [pd.read_parquet(s / "turns.parquet") for s in self.shards]
        if not frames:
            raise NsyncError(f"cache {self.root} holds no utterances yet")
        turns = pd.concat(frames, ignore_index=True)
        turns["row"] = turns.groupby(["model", "condition"]).cumcount()
        return turns

    def states(self, model: str, layer: int, condition: str = "interactive") -> np.ndarray:
        """``[rows, hidden]`` states of one layer (0 = embeddings), memory-mapped when the cache
        is a single shard; rows follow the turns table's rows of that model and condition."""
        info = self.model_info(model)
        n_layers = len(info["layer_names"])
        if not 0 <= layer < n_layers:
            raise NsyncError(f"layer {layer} out of range for {model}: it has layers 0..{n_layers - 1} (0 = {info['layer_names'][0]})")
        parts = []
        for shard in self.shards:
            f = shard / "states" / model_dir(model) / condition / layer_file(layer)
            if f.exists():
                parts.append(np.load(f, mmap_mode="r"))
        expected = int(((self.turns["model"] == model) & (self.turns["condition"] == condition)).sum())
        if not parts:
            if expected:
                raise NsyncError(f"cache {self.root} lacks the states of {model}/{condition} layer {layer}")
            raise NsyncError(f"cache {self.root} has no '{condition}' states for {model}")
        array = parts[0] if len(parts) == 1 else np.concatenate(parts)
        if array.shape != (expected, info["hidden_size"]):
            raise NsyncError(
                f"cache {self.root}: {model}/{condition} layer {layer} has shape {array.shape}, expected "
                f"({expected}, {info['hidden_size']}) from the turns table and manifest; the cache is damaged"
            )
        return array

    def summary(self) -> str:
        """A few lines describing what the cache holds."""
        t = self.turns
        lines = [f"cache {self.root} ({'complete' if self.manifest.get('complete') else 'in progress'}, {self.manifest.get('dtype')})"]
        lines.append(
            f"  {t['run_id'].nunique()} runs, {t['episode_id'].nunique()} episodes, {t['scenario_id'].nunique()} scenarios, "
            f"{len(set(t['character_a']) | set(t['character_b']))} characters, {len(self.shards)} shard(s)"
        )
        for model in self.models:
            info = self.model_info(model)
            counts = t[t["model"] == model].groupby("condition").size().to_dict()
            ran_in = f", ran in {info['dtype']}" if info.get("dtype") else ""
            lines.append(
                f"  {model}: {len(info['layer_names'])} layers x hidden {info['hidden_size']} "
                f"(source {info['source']}{ran_in}); rows {counts}"
            )
        inter = t[t["condition"] == "interactive"]
        if len(inter):
            per_run = inter.groupby("run_id").size()
            lines.append(f"  utterances per run: mean {per_run.mean():.1f}, min {per_run.min()}, max {per_run.max()}")
            q = self.quality()
            lines.append(f"  episodes by length (utterances: runs): {_counts(q['runs_by_length'])}")
            lines.append(f"  leaves by utterance index: {_counts(q['leaves_by_utterance']) or 'none'}")
            if q["flags_recorded"]:
                lines.append(f"  replies: {q['empty']} empty, {q['resampled']} re-sampled, {q['echo']} still echo the prompt, "
                             f"{q['early_leave']} early leaves ignored")
            pairs = ", ".join(f"{d} {n}" for d, n in q["pairs_lag1"].items())
            lines.append(f"  pairs at lag 1 per direction: {pairs}")
            lines += [f"  warning: {w}" for w in q["warnings"]]
        return "\n".join(lines)

    def quality(self) -> dict:
        """What the conversations are worth for synchrony: episode lengths, when agents left,
        flagged replies, the pairs each direction has at lag 1, and warnings.

        ``warnings`` says when more than 20% of episodes end before their fourth utterance, and when
        a direction has fewer pairs than twice the hidden size (too few for a synchrony estimate).
        """
        t = self.turns
        inter = t[t["condition"] == "interactive"]
        lengths = inter.groupby("run_id").size()
        flags = inter["flag"].fillna("").astype(str) if "flag" in inter else None
        has = lambda name: int(flags.str.contains(name).sum()) if flags is not None else 0  # noqa: E731
        pairs = {}
        for direction, agent in (("A->B", 0), ("B->A", 1)):
            # a pair: an utterance of the agent and the next utterance of the same run
            src = inter[inter["agent"] == agent][["run_id", "utterance"]]
            nxt = inter[["run_id", "utterance"]].assign(utterance=lambda d: d["utterance"] - 1)
            pairs[direction] = int(len(src.merge(nxt, on=["run_id", "utterance"])))
        hidden = max((info["hidden_size"] for m, info in self.manifest["models"].items() if not info.get("derived")), default=0)
        warnings = []
        short = float((lengths < 4).mean()) if len(lengths) else 0.0
        if short > 0.2:
            warnings.append(f"{short:.0%} of episodes end before their fourth utterance")
        few = {d: n for d, n in pairs.items() if n < 2 * hidden}
        if few:
            warnings.append(f"too few pairs for a synchrony estimate ({', '.join(f'{d} {n}' for d, n in few.items())}; "
                            f"fewer than twice the hidden size {hidden}); simulate more episodes")
        return {
            "runs_by_length": lengths.value_counts().sort_index().to_dict(),
            "leaves_by_utterance": inter.loc[inter["left"].astype(bool), "utterance"].value_counts().sort_index().to_dict(),
            "flags_recorded": flags is not None,
            "empty": has("empty"),
            "echo": has("echo"),
            "early_leave": has("early_leave"),
            "resampled": int((inter["resampled"].fillna(0) > 0).sum()) if "resampled" in inter else 0,
            "pairs_lag1": pairs,
            "warnings": warnings,
        }


def _counts(d: dict) -> str:
    return ", ".join(f"{k}: {v}" for k, v in d.items())
