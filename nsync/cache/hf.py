"""Caches that travel: a cache as a Hugging Face ``datasets`` dataset, and back.

The exported dataset is a ``DatasetDict`` with one split per (model, condition), named
``<model>__<condition>`` (characters a split name cannot hold become ``_``; the manifest file
maps each split back): the turns table's columns plus
one array column per layer (``layer_0`` = the embedding output, ...), rows in the cache's order.
The manifest travels as the dataset's description (JSON) and as ``nsync_manifest.json``.
``datasets.load_from_disk`` opens it, ``push_to_hub`` shares it, and :func:`import_hf` turns
it back into a normal (memory-mapped) cache, identical row for row. Fits always read the
memory-mapped layout; the dataset is for moving and sharing caches.
"""

from __future__ import annotations

import json
import re
import shutil
from pathlib import Path

import numpy as np

from nsync.cache.layout import MANIFEST
from nsync.cache.reader import ActivationCache
from nsync.cache.writer import CacheWriter, ModelInfo
from nsync.errors import NsyncError

MANIFEST_FILE = "nsync_manifest.json"


def split_name(model: str, condition: str) -> str:
    """A valid ``datasets`` split name for (model, condition).

    >>> split_name("HuggingFaceTB/SmolLM2-135M", "interactive")
    'HuggingFaceTB_SmolLM2_135M__interactive'
    """
    return re.sub(r"\W", "_", model) + "__" + condition


def export_hf(cache_path: str | Path, out: str | Path) -> Path:
    """Write the cache at ``cache_path`` as a ``datasets.DatasetDict`` folder ``out``.

    >>> export_hf("runs/quickstart/cache", "runs/quickstart/cache_hf")   # doctest: +SKIP
    >>> datasets.load_from_disk("runs/quickstart/cache_hf")["smollm2_135m__interactive"][0]["layer_15"]  # doctest: +SKIP
    """
    from datasets import Dataset, DatasetDict, DatasetInfo

    cache = ActivationCache.open(cache_path)
    out = Path(out)
    if out.exists():
        raise NsyncError(f"{out} exists; choose a new folder for the exported dataset")
    manifest = json.loads((cache.root / MANIFEST).read_text())
    turns = cache.turns
    splits, names = {}, {}
    for (model, condition), rows in turns.groupby(["model", "condition"], sort=True):
        rows = rows.sort_values("row")
        columns = {c: rows[c].tolist() for c in rows.columns if c != "row"}
        for layer in range(len(cache.layer_names(model))):
            states = cache.read_rows(model, layer, rows["row"].to_numpy(), condition)
            columns[f"layer_{layer}"] = list(states)
        info = DatasetInfo(description=json.dumps(manifest))
        name = split_name(model, condition)
        splits[name], names[name] = Dataset.from_dict(columns, info=info), [model, condition]
    tmp = out.with_name(f".{out.name}.tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    try:
        DatasetDict(splits).save_to_disk(str(tmp))
        (tmp / MANIFEST_FILE).write_text(json.dumps({**manifest, "hf_splits": names}, indent=1))
        tmp.rename(out)  # a crash leaves no half-written dataset under the final name
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return out


def import_hf(src: str | Path, out: str | Path) -> Path:
    """Turn a dataset written by :func:`export_hf` (a folder) back into a cache at ``out``."""
    from datasets import load_from_disk

    src = Path(src)
    if not (src / MANIFEST_FILE).is_file():
        raise NsyncError(f"{src} is not a dataset exported by nsync ({MANIFEST_FILE} missing); export one with: nsync cache export CACHE OUT")
    manifest = json.loads((src / MANIFEST_FILE).read_text())
    data = load_from_disk(str(src))
    splits = manifest.pop("hf_splits")
    models = [ModelInfo(**info) for info in manifest["models"].values()]
    rows, states = [], {}
    for name, (model, condition) in splits.items():
        part = data[name]
        layers = [f"layer_{i}" for i in range(len(manifest["models"][model]["layer_names"]))]
        table = part.remove_columns(layers).to_pandas()
        if "characters" not in table:  # exported before groups: dyads
            table = table.assign(characters=table["character_a"] + "|" + table["character_b"], n_agents=2)
        rows += table.to_dict("records")
        part = part.with_format("numpy", columns=layers)
        states[(model, condition)] = np.stack([part[c] for c in layers], axis=1)
    with CacheWriter(
        out, config=manifest.get("config", {}), identity=manifest["identity"], models=models, dtype=manifest["dtype"], resume=False
    ) as writer:
        writer.write_shard(rows, states)
        writer.finalize()
    return Path(out)
