"""``SynchronyDataModule``: (source state, partner's next state) pairs from an activation cache."""

from __future__ import annotations

import copy
import logging
from functools import cached_property
from typing import TYPE_CHECKING

import lightning as L
import numpy as np
import pandas as pd
import torch
from torch.utils.data import BatchSampler, DataLoader, Dataset, RandomSampler, SequentialSampler

from nsync.cache import ActivationCache
from nsync.data.config import DataConfig

if TYPE_CHECKING:
    from nsync.probes.ridge import Bands
from nsync.data.context import context_features, design, residualize
from nsync.data.pairs import PAIRINGS, build_pairs, drop_flagged
from nsync.data.splits import make_split, validation_part
from nsync.errors import NsyncError, warn_once

log = logging.getLogger(__name__)
PARTS = ("fit", "val", "test")


class TooFewForValidation(NsyncError):
    """Holding out validation episodes leaves (almost) nothing to fit on."""


class SynchronyDataModule(L.LightningDataModule):
    """Pairs of one direction and one split seed, every source and target layer read once.

    ``setup()`` builds the pairs, the grouped split (and, with ``validation=True``, a validation
    part of the training side; otherwise the whole training side is fitted), and reads the paired
    rows of every source layer and every target layer into memory, layer by layer:
    :attr:`x` is ``[pairs, source layers, hidden_src]`` and :attr:`y` ``[pairs, target layers,
    hidden_tgt]``, in the cache's dtype (float16 takes half the memory of float32; with
    ``remove_context`` float32). Batches are float32 (in the cache's dtype from :meth:`as_stored`).
    Means and standard deviations of the fitted rows are float64.

    Loaders yield ``(x, y)`` with ``x`` ``[batch, sources, hidden_src]`` for the sources this
    module serves (all, or those chosen with :meth:`for_sources`) and ``y`` ``[batch, targets,
    hidden_tgt]``; test batches add each row's index in :attr:`test_episodes`. Under DDP every
    rank holds all rows and loads its own share (``rank::world``, no padding, so sums are exact).

    >>> from nsync.testing import example_cache
    >>> dm = SynchronyDataModule(str(example_cache()), direction="A->B")
    >>> dm.setup()
    >>> x, y = next(iter(dm.for_sources([2]).train_dataloader()))
    >>> x.shape[1:], y.shape[1:]          # one source layer; every target layer (embed and 2 blocks) of 4 dims
    (torch.Size([1, 4]), torch.Size([3, 4]))
    """

    def __init__(self, data: DataConfig | str, direction: str = "A->B", split_seed: int = 0, validation: bool = True):
        super().__init__()
        self.config = DataConfig(cache=data) if isinstance(data, str) else data
        self.direction, self.split_seed, self.validation = direction, split_seed, validation
        self.source_index: list[int] | None = None  # positions in the source axis served (None: all)
        self.bands: Bands | None = None  # banded ridge's design of the sources (with_source_data)
        self.stored_batches = False  # batches in the cache's dtype instead of float32 (as_stored)
        self._ready = False

    def setup(self, stage: str | None = None) -> None:
        if self._ready:
            return
        cfg, seed = self.config, self.split_seed
        cache = ActivationCache.open(cfg.cache)
        models = cache.simulated_models  # re-read models are chosen explicitly
        self.source_model = cfg.source_model or _only(models, "source_model")
        self.target_model = cfg.target_model or _only(models, "target_model")
        pairs = build_pairs(
            cache.turns,
            self.source_model,
            self.target_model,
            self.direction,
            cfg.lag,
            cfg.condition,
            cfg.target_condition,
            cfg.pairing,
            seed,
        )
        self.target_condition = PAIRINGS.get(cfg.pairing).target_condition or cfg.target_condition
        kept = drop_flagged(pairs, cache.turns, list(cfg.exclude_flags))
        self.n_excluded = len(pairs) - len(kept)
        if kept.empty:
            raise NsyncError(
                f"{self.direction}: data.exclude_flags={list(cfg.exclude_flags)} leaves none of its {len(pairs)} pairs; "
                "exclude fewer flags or simulate more episodes"
            )
        pairs = kept
        if cfg.max_pairs:
            pairs = _budget(pairs, cfg.max_pairs, seed)
        split = make_split(pairs, cfg.split, cfg.test_size, seed)
        if self.validation and cfg.val_size > 0:
            fit, val = validation_part(pairs, split.train, cfg.split, cfg.val_size, seed)
        else:
            fit, val = split.train, np.zeros_like(split.train)
        if self.validation and cfg.val_size > 0 and fit.sum() < 2:
            raise TooFewForValidation(
                f"{self.direction}: {int(fit.sum())} pairs left to fit after holding out validation episodes "
                f"({int(val.sum())} pairs); simulate more episodes, lower data.val_size, or choose target layers on the test side "
                "with target_choice=test and a single affine.alphas value"
            )
        self.pairs, self.split = pairs, split
        self.index = {
            "fit": np.flatnonzero(fit),
            "val": np.flatnonzero(val),
            "test": np.flatnonzero(split.test),
            "train": np.flatnonzero(split.train),
        }
        src_names, tgt_names = cache.layer_names(self.source_model), cache.layer_names(self.target_model)
        self.source_layers = list(cfg.source_layers) if cfg.source_layers else list(range(0, len(src_names), cfg.source_layer_step))
        self.target_layers = list(cfg.target_layers) if cfg.target_layers else list(range(len(tgt_names)))
        for name, layers, n in (("source", self.source_layers, len(src_names)), ("target", self.target_layers, len(tgt_names))):
            bad = [layer for layer in layers if not 0 <= layer < n]
            if bad:
                raise NsyncError(f"data.{name}_layers {bad} out of range: the model has layers 0..{n - 1}")
        self.n_source_layers, self.n_target_layers = len(src_names), len(tgt_names)  # of the whole models
        self.source_layer_names = [src_names[layer] for layer in self.source_layers]
        self.target_layer_names = [tgt_names[layer] for layer in self.target_layers]
        self.x = _read(cache, self.source_model, self.source_layers, cfg.condition, pairs["source_row"].to_numpy())
        self.y = _read(cache, self.target_model, self.target_layers, self.target_condition, pairs["target_row"].to_numpy())
        if not cfg.target_layers:
            self._drop_constant_targets(tgt_names)
        if cfg.remove_context:
            self.x, self.y = self.x.float(), self.y.float()  # residualised in place
            fit_rows = self.index["fit"]
            for data, model, condition, rows in (
                (self.x, self.source_model, cfg.condition, "source_row"),
                (self.y, self.target_model, self.target_condition, "target_row"),
            ):
                features = context_features(cache.turns, model, condition, pairs[rows].to_numpy())
                residualize(data, design(features, fit_rows), fit_rows)
        # Each test row carries the index of its episode in test_episodes (per-episode sums).
        self.test_episodes, codes = np.unique(pairs["episode_id"].to_numpy()[self.index["test"]], return_inverse=True)
        self.group = torch.full((len(pairs),), -1, dtype=torch.int64)
        self.group[torch.from_numpy(self.index["test"])] = torch.from_numpy(codes.astype(np.int64))
        self.x_mean, self.y_mean = _mean(self.x, self.index["fit"]), _mean(self.y, self.index["fit"])
        self._ready = True

    def _drop_constant_targets(self, names: list[str]) -> None:
        """Leave out target layers whose state is the same in every row: nothing can predict their
        variation, since they have none (the embedding at the last prompt token, which is the same
        token in every prompt). Only when the target layers were not named (data.target_layers)."""
        y = self.y
        constant = [i for i in range(y.shape[1]) if bool((y[:, i] == y[:1, i]).all())]
        if not constant or len(constant) == y.shape[1]:
            return
        left_out = [self.target_layers[i] for i in constant]
        warn_once(
            log,
            ("constant_target", tuple(left_out)),
            "target layers %s (%s) hold the same state in every row (e.g. the embedding at the last prompt token): not fitted as targets",
            left_out,
            ", ".join(names[layer] for layer in left_out),
            level=logging.INFO,
        )
        keep = [i for i in range(y.shape[1]) if i not in constant]
        self.y = y[:, keep].contiguous()
        self.target_layers = [self.target_layers[i] for i in keep]
        self.target_layer_names = [names[layer] for layer in self.target_layers]

    @cached_property
    def x_std(self) -> torch.Tensor:
        """``[source layers, hidden]`` float64 standard deviation of the fitted rows (the MLP's input scale)."""
        return _std(self.x, self.index["fit"], self.x_mean)

    @cached_property
    def y_std(self) -> torch.Tensor:
        return _std(self.y, self.index["fit"], self.y_mean)

    def for_sources(self, positions: list[int]) -> SynchronyDataModule:
        """A module sharing this one's data that serves only these positions of the source axis.

        >>> from nsync.testing import example_cache
        >>> dm = SynchronyDataModule(str(example_cache()), direction="A->B")
        >>> dm.setup()
        >>> dm.for_sources([1, 2]).sources
        [1, 2]
        """
        if not self._ready:
            raise RuntimeError("call setup() before for_sources()")
        view = copy.copy(self)
        view.source_index = list(positions)
        return view

    def as_stored(self) -> SynchronyDataModule:
        """A module sharing this one's data whose batches keep the cache's dtype (float16 as stored),
        for a probe that converts them itself: the affine probe's dual solver keeps its training
        rows that way, at half the memory of float32."""
        view = copy.copy(self)
        view.stored_batches = True
        return view

    def with_source_data(self, x: torch.Tensor, bands: Bands | None = None) -> SynchronyDataModule:
        """A module sharing this one's pairs, split and targets whose sources are ``x`` ``[pairs,
        sources, hidden]`` instead (a baseline's features, or the source joined with them), with
        banded ridge's design ``bands`` (:class:`nsync.probes.ridge.Bands`) where it has bands."""
        if not self._ready:
            raise RuntimeError("call setup() before with_source_data()")
        view = copy.copy(self)
        view.__dict__.pop("x_std", None)  # cached for the original sources
        view.x, view.source_index, view.bands = x, None, bands
        view.x_mean = _mean(x, self.index["fit"])
        return view

    @property
    def sources(self) -> list[int]:
        """Positions of the source axis this module serves."""
        return list(range(self.x.shape[1])) if self.source_index is None else self.source_index

    @property
    def d_in(self) -> int:
        return self.x.shape[2]

    @property
    def d_out(self) -> int:
        return self.y.shape[2]

    @property
    def n_test_episodes(self) -> int:
        return len(self.test_episodes)

    def n(self, part: str) -> int:
        return len(self.index[part])

    def _loader(self, part: str, shuffle: bool = False) -> DataLoader:
        rows = self.index[part]
        trainer = getattr(self, "trainer", None)
        if trainer is not None and trainer.world_size > 1:
            rows = rows[trainer.global_rank :: trainer.world_size]
        data = _Rows(self, torch.from_numpy(rows), with_group=part == "test")
        order = RandomSampler(range(len(rows))) if shuffle else SequentialSampler(range(len(rows)))
        # Batches are gathered with one index per batch, not row by row and collated.
        return DataLoader(data, sampler=BatchSampler(order, self.config.batch_size, drop_last=False), batch_size=None)

    def train_dataloader(self) -> DataLoader:
        return self._loader("fit", shuffle=True)

    def val_dataloader(self) -> DataLoader:
        return self._loader("val")

    def test_dataloader(self) -> DataLoader:
        return self._loader("test")


class _Rows(Dataset):
    """Rows of one part; an item is a whole batch (a list of positions)."""

    def __init__(self, dm: SynchronyDataModule, rows: torch.Tensor, with_group: bool):
        self.dm, self.rows, self.with_group = dm, rows, with_group
        self.sources = None if dm.source_index is None else torch.tensor(dm.source_index)

    def __len__(self) -> int:
        return len(self.rows)

    def __getitem__(self, positions: list[int]):
        rows = self.rows[positions]
        x = self.dm.x[rows] if self.sources is None else self.dm.x[rows[:, None], self.sources]
        y = self.dm.y[rows]
        batch = (x, y) if self.dm.stored_batches else (_float32(x), _float32(y))
        return (*batch, self.dm.group[rows]) if self.with_group else batch


def _read(cache: ActivationCache, model: str, layers: list[int], condition: str, rows: np.ndarray) -> torch.Tensor:
    """``[len(rows), len(layers), hidden]`` in the cache's dtype: each layer's array is read once
    (layer-major files), only the paired rows are kept."""
    first = cache.states(model, layers[0], condition)
    out = torch.empty((len(rows), len(layers), first.shape[1]), dtype=torch.from_numpy(np.empty(0, dtype=first.dtype)).dtype)
    for i, layer in enumerate(layers):
        out[:, i] = torch.from_numpy(cache.read_rows(model, layer, rows, condition))
    return out


def _float32(batch: torch.Tensor) -> torch.Tensor:
    """Half-precision states (as stored) in float32; wider ones as they are."""
    return batch.float() if batch.element_size() < 4 else batch


def _mean(data: torch.Tensor, rows: np.ndarray) -> torch.Tensor:
    """Float64 mean over ``rows`` of ``[rows, layers, hidden]``, one layer at a time (a float64 copy
    of every layer at once would double the memory)."""
    index = torch.from_numpy(rows)
    return torch.stack([data[index, i].double().mean(0) for i in range(data.shape[1])])


def _std(data: torch.Tensor, rows: np.ndarray, mean: torch.Tensor) -> torch.Tensor:
    index = torch.from_numpy(rows)
    return torch.stack([(data[index, i].double() - mean[i]).pow(2).mean(0).sqrt() for i in range(data.shape[1])])


def _only(models: list[str], key: str) -> str:
    if len(models) != 1:
        raise NsyncError(f"the cache holds several simulated models {models}; set data.{key}")
    return models[0]


def _budget(pairs: pd.DataFrame, max_pairs: int, seed: int) -> pd.DataFrame:
    """Keep whole episodes, in random order, until the pair budget is reached."""
    episodes = np.random.default_rng(seed).permutation(sorted(pairs["episode_id"].unique()))
    counts = pairs.groupby("episode_id").size()
    keep, total = [], 0
    for ep in episodes:
        if total >= max_pairs:
            break
        keep.append(ep)
        total += counts[ep]
    return pairs[pairs["episode_id"].isin(keep)].reset_index(drop=True)
