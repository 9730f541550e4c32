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

    >>> cache = ActivationCache.open("runs/quickstart/cache")           # doctest: +SKIP
    >>> cache.turns[["episode_id", "agent", "utterance", "text"]].head() # doctest: +SKIP
    >>> x = cache.states("smollm2-135m", layer=15)  # [rows, 576], rows aligned with
    >>> # cache.turns[(cache.turns.model == "smollm2-135m") & (cache.turns.condition == "interactive")]
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
            lines.append(
                f"  {model}: {len(info['layer_names'])} layers x hidden {info['hidden_size']} "
                f"(source {info['source']}); rows {counts}"
            )
        inter = t[t["condition"] == "interactive"]
        if len(inter):
            per_run = inter.groupby("run_id").size()
            lines.append(f"  utterances per run: mean {per_run.mean():.1f}, min {per_run.min()}, max {per_run.max()}")
        return "\n".join(lines)
