"""Fitted probes loaded back from a run folder, to apply to new states.

A fit with ``save_weights=true`` writes ``weights.safetensors``: per direction and source layer,
the map to its chosen target layer from the first split seed, on the raw states as the cache
stores them (``x [rows, d_in]``), with the metadata (direction, layers, alpha, split seed, models,
probe, nsync version) in the file's header. An affine probe's map is ``y = x @ weight + bias``
(feature scaling, centring and the intercept folded in); an MLP probe's is its network and
standardisation (keys ``<cell>/mlp/...``), rebuilt as an :class:`~nsync.probes.MLPProbe`.

>>> from nsync.testing import example_cache
>>> from nsync.config import load_config
>>> from nsync.fit import FitConfig, run_fit
>>> import tempfile
>>> out = tempfile.mkdtemp() + "/fit"
>>> _ = run_fit(load_config(FitConfig, [f"data.cache={example_cache()}", f"out={out}", "data.split_seeds=[0]", "bootstrap=0",
...     "surrogates.n=0", "time_bins=-1", "logger.kind=none", "progress=false", "save_weights=true"], prog="doc"))
>>> probes = load_probes(out)
>>> p = probes[("A->B", 1)]                         # direction, source layer
>>> p.source_layer, p.target_layer, p.weight.shape
(1, 1, torch.Size([4, 4]))
>>> scores = score_cache(probes, example_cache())   # each probe's R² on a cache's test pairs (split seed 0)
>>> bool(scores.loc[("A->B", 1), "r2"] > 0.1)
True
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import pandas as pd
import torch

from nsync.errors import NsyncError

if TYPE_CHECKING:
    from nsync.probes.mlp import MLPProbe

#: The header key under which ``weights.safetensors`` keeps nsync's metadata.
METADATA_KEY = "nsync"
#: How a saved map is applied (stored in the metadata for readers outside nsync).
ORIENTATION = (
    "y = x @ weight + bias; x [rows, d_in] states as the cache stores them (residualised on context features where the fit's "
    "data.remove_context was true), y [rows, d_out]"
)


@dataclass
class SavedProbe:
    """One (direction, source layer) map to its chosen target layer: an affine probe's ``weight``
    and ``bias``, or an MLP probe's ``module`` (which predicts every target layer; ``target_index``
    is the chosen one's position)."""

    direction: str
    source_layer: int
    target_layer: int
    source_layer_name: str
    target_layer_name: str
    weight: torch.Tensor | None  # [d_in, d_out] (affine)
    bias: torch.Tensor | None  # [d_out] (affine)
    alpha: float | None
    split_seed: int
    data: dict  # the fit's data config (split, test size, pairing, lag, ...): score_cache pairs and splits as it did
    module: MLPProbe | None = None  # in eval mode (mlp)
    target_index: int = 0  # the chosen target layer's position among the module's outputs

    @property
    def d_in(self) -> int:
        """The width of the states the probe reads."""
        if self.weight is not None:
            return int(self.weight.shape[0])
        assert self.module is not None
        return int(self.module.x_mean.numel())

    def predict(self, x: torch.Tensor | np.ndarray) -> torch.Tensor:
        """The partner's predicted next state ``[rows, d_out]`` from states ``x`` ``[rows, d_in]``."""
        x = torch.as_tensor(np.asarray(x) if not isinstance(x, torch.Tensor) else x).to(torch.float32)
        if x.shape[-1] != self.d_in:
            raise NsyncError(
                f"states of width {x.shape[-1]} for a probe of input width {self.d_in} ({self.direction}, source layer {self.source_layer})"
            )
        if self.module is not None:
            with torch.no_grad():
                return self.module(x)[:, self.target_index]
        assert self.weight is not None and self.bias is not None
        return x @ self.weight + self.bias

    def score(self, x: torch.Tensor | np.ndarray, y: torch.Tensor | np.ndarray) -> float:
        """R² of :meth:`predict` against ``y`` (around ``y``'s own mean, uniform over its varying
        dimensions: the fit's test R²)."""
        from nsync.stats.r2 import r2_from_rows

        y = torch.as_tensor(np.asarray(y) if not isinstance(y, torch.Tensor) else y).double()
        varying = y.var(0) > 0
        return float(r2_from_rows(y, self.predict(x).double(), valid=varying))


def weights_metadata(result, split_seed: int) -> dict[str, str]:
    """The header of ``weights.safetensors`` for a fit's :class:`~nsync.fit.results.FitResult`."""
    from nsync import __version__

    cells = {}
    for direction, d in result.directions.items():
        for i, source in enumerate(result.source_layers):
            for j, target in enumerate(result.target_layers):
                alpha = d.alpha[0][i][j] if d.alpha else None
                cells[f"{direction}/source_{source}/target_{target}"] = {"alpha": alpha}
    meta = {
        "nsync_version": __version__,
        "orientation": ORIENTATION,
        "split_seed": split_seed,
        "models": result.models,
        "condition": result.condition,
        "target_condition": result.target_condition,
        "lag": result.lag,
        "probe": result.probe,
        "source_layer_names": dict(zip(map(str, result.source_layers), result.source_layer_names, strict=True)),
        "target_layer_names": dict(zip(map(str, result.target_layers), result.target_layer_names, strict=True)),
        "cells": cells,
    }
    if result.probe == "mlp":  # what rebuilds the network (its width and depth; it predicts every target layer)
        mlp = result.config.get("mlp", {})
        meta["mlp"] = {"hidden": mlp.get("hidden"), "depth": mlp.get("depth"), "target_layers": result.target_layers}
    return {METADATA_KEY: json.dumps(meta)}


def load_probes(run: str | Path) -> dict[tuple[str, int], SavedProbe]:
    """Every saved map of a finished fit's run folder, by ``(direction, source layer)``."""
    from safetensors import safe_open

    from nsync.fit.results import FitResult
    from nsync.fit.run_folder import RunFolder

    folder = RunFolder(run)
    tensors = folder.read_weights()  # refuses an unfinished folder, names a missing file
    data = dict(FitResult.load(folder.path).config.get("data", {}))
    with safe_open(str(folder.weights), framework="pt") as f:
        header = (f.metadata() or {}).get(METADATA_KEY)
    if header is None:
        raise NsyncError(f"{folder.weights} was written before nsync stored probe metadata; fit again with save_weights=true")
    meta = json.loads(header)
    probes = {}
    for key, cell in meta["cells"].items():
        direction, source, target = key.rsplit("/", 2)
        s, t = int(source.removeprefix("source_")), int(target.removeprefix("target_"))
        names = meta["source_layer_names"][str(s)], meta["target_layer_names"][str(t)]
        if f"{key}/weight" in tensors:
            probes[(direction, s)] = SavedProbe(
                direction, s, t, *names, tensors[f"{key}/weight"], tensors[f"{key}/bias"], cell["alpha"], int(meta["split_seed"]), data
            )
        elif mlp := {k.removeprefix(f"{key}/mlp/"): v for k, v in tensors.items() if k.startswith(f"{key}/mlp/")}:
            from nsync.probes.mlp import MLPProbe

            arch = meta["mlp"]
            module = MLPProbe.from_saved(mlp, len(arch["target_layers"]), arch["hidden"], arch["depth"])
            probes[(direction, s)] = SavedProbe(
                direction, s, t, *names, None, None, None, int(meta["split_seed"]), data, module, arch["target_layers"].index(t)
            )
    return probes


def score_cache(
    probes: dict[tuple[str, int], SavedProbe], cache: str | Path, part: str = "test", split_seed: int | None = None, **data
) -> pd.DataFrame:
    """Each probe's R² on the pairs of another (or the same) cache, paired and split as its fit
    did (its data config: split, test size, pairing, lag, flags left out, context removal), on
    its ``part`` (``test``, ``train`` or ``all``) of split seed ``split_seed`` (default: the
    fit's first, the one the maps come from); ``data``: :class:`~nsync.data.DataConfig` keys that
    differ (e.g. ``source_model`` on a cache of other models). Indexed by ``(direction, source layer)``."""
    from nsync.config import from_dict
    from nsync.data import DataConfig, SynchronyDataModule

    rows = []
    for direction in dict.fromkeys(d for d, _ in probes):
        mine = {s: p for (d, s), p in probes.items() if d == direction}
        first = next(iter(mine.values()))
        seed = first.split_seed if split_seed is None else split_seed
        layers = {"source_layers": sorted(mine), "target_layers": sorted({p.target_layer for p in mine.values()})}
        cfg = from_dict(DataConfig, first.data | {"cache": str(cache), "split_seeds": [seed], "directions": [direction]} | layers | data)
        dm = SynchronyDataModule(cfg, direction, seed, validation=False)
        dm.setup()
        index = np.arange(len(dm.pairs)) if part == "all" else dm.index[part]
        for position, s in enumerate(dm.source_layers):
            probe = mine[s]
            y = dm.y[index, dm.target_layers.index(probe.target_layer)]
            rows.append({"direction": direction, "source_layer": s, "target_layer": probe.target_layer, "pairs": len(index),
                         "r2": probe.score(dm.x[index, position], y)})  # fmt: skip
    return pd.DataFrame(rows).set_index(["direction", "source_layer"])
