"""``SynchronyDataModule``: (source state, partner's next state) pairs from an activation cache."""

from __future__ import annotations

import lightning as L
import numpy as np
import pandas as pd
import torch
from torch.utils.data import DataLoader, TensorDataset

from nsync.cache import ActivationCache
from nsync.data.pairs import build_pairs
from nsync.data.splits import make_split, validation_part
from nsync.errors import NsyncError


class SynchronyDataModule(L.LightningDataModule):
    """Pairs for one direction, one split seed and one source layer at a time.

    ``setup()`` builds the pairs, the grouped split (and a validation part of the training
    side), and loads the source layers and all target layers of the paired rows into memory.
    The loaders yield ``(x, y)`` with ``x`` ``[batch, hidden_src]`` from :attr:`source_layer` and
    ``y`` ``[batch, n_target_layers, hidden_tgt]``. Training-side means and standard deviations
    (float64) are in :attr:`stats`.

    >>> dm = SynchronyDataModule("runs/quickstart/cache", direction="A->B")  # doctest: +SKIP
    >>> dm.setup(); dm.source_layer = 15                                      # doctest: +SKIP
    >>> x, y = next(iter(dm.train_dataloader()))                              # doctest: +SKIP
    """

    def __init__(
        self,
        cache: str,
        source_model: str | None = None,
        target_model: str | None = None,
        direction: str = "A->B",
        lag: int = 1,
        condition: str = "interactive",
        split: str = "interaction",
        split_seed: int = 0,
        test_size: float = 0.2,
        val_size: float = 0.1,
        max_pairs: int | None = None,
        source_layers: list[int] | None = None,
        target_layers: list[int] | None = None,
        batch_size: int = 2048,
        num_workers: int = 0,
        target_condition: str = "interactive",
        control: str = "partner",
        source_layer_step: int = 1,
    ):
        super().__init__()
        self.save_hyperparameters()
        self.source_layer: int | None = None

    def setup(self, stage: str | None = None) -> None:
        if getattr(self, "_ready", False):
            return
        hp = self.hparams
        cache = ActivationCache.open(hp.cache)
        models = cache.simulated_models  # re-read models are chosen explicitly
        self.source_model = hp.source_model or _only(models, "source_model")
        self.target_model = hp.target_model or _only(models, "target_model")
        pairs = build_pairs(
            cache.turns, self.source_model, self.target_model, hp.direction, hp.lag, hp.condition, hp.target_condition,
            hp.control, hp.split_seed,
        )
        self.target_condition = "listener" if hp.control == "same_time" else hp.target_condition
        if hp.max_pairs:
            pairs = _budget(pairs, hp.max_pairs, hp.split_seed)
        split = make_split(pairs, hp.split, hp.test_size, hp.split_seed)
        fit, val = validation_part(pairs, split.train, hp.split, hp.val_size, hp.split_seed) if hp.val_size > 0 else (split.train, np.zeros_like(split.train))
        self.pairs, self.split = pairs, split
        self.index = {"fit": np.flatnonzero(fit), "val": np.flatnonzero(val), "test": np.flatnonzero(split.test), "train": np.flatnonzero(split.train)}
        n_src = len(cache.layer_names(self.source_model))
        n_tgt = len(cache.layer_names(self.target_model))
        self.source_layers = list(hp.source_layers) if hp.source_layers else list(range(0, n_src, hp.source_layer_step))
        self.target_layers = list(hp.target_layers) if hp.target_layers else list(range(n_tgt))
        for name, layers, n in (("source", self.source_layers, n_src), ("target", self.target_layers, n_tgt)):
            bad = [l for l in layers if not 0 <= l < n]
            if bad:
                raise NsyncError(f"{name} layers {bad} out of range: the model has layers 0..{n - 1}")
        src_rows, tgt_rows = pairs["source_row"].to_numpy(), pairs["target_row"].to_numpy()
        # Layer-major reads: each layer's array is read once, only the paired rows are kept.
        self.x = {l: torch.from_numpy(np.asarray(cache.states(self.source_model, l, hp.condition)[src_rows], dtype=np.float32)) for l in self.source_layers}
        self.y = torch.stack(
            [torch.from_numpy(np.asarray(cache.states(self.target_model, l, self.target_condition)[tgt_rows], dtype=np.float32)) for l in self.target_layers], dim=1
        )
        # Test rows carry the index of their episode in test_episodes (for per-episode sums).
        test_ep = pairs["episode_id"].to_numpy()[self.index["test"]]
        self.test_episodes, codes = np.unique(test_ep, return_inverse=True)
        self.test_episode_index = torch.from_numpy(codes.astype(np.int64))
        fit_idx = torch.from_numpy(self.index["fit"])
        self.stats = {
            "x_mean": {l: x[fit_idx].double().mean(0) for l, x in self.x.items()},
            "x_std": {l: x[fit_idx].double().std(0, unbiased=False) for l, x in self.x.items()},
            "y_mean": self.y[fit_idx].double().mean(0),
            "y_std": self.y[fit_idx].double().std(0, unbiased=False),
        }
        self._ready = True

    @property
    def d_in(self) -> int:
        return next(iter(self.x.values())).shape[1]

    @property
    def d_out(self) -> int:
        return self.y.shape[2]

    @property
    def n_test_episodes(self) -> int:
        return len(self.test_episodes)

    def n(self, part: str) -> int:
        return len(self.index[part])

    def _loader(self, part: str, shuffle: bool = False) -> DataLoader:
        if self.source_layer is None:
            raise RuntimeError("set dm.source_layer before asking for data")
        idx = torch.from_numpy(self.index[part])
        tensors = [self.x[self.source_layer][idx], self.y[idx]]
        if part == "test":
            tensors.append(self.test_episode_index)
        data = TensorDataset(*tensors)
        return DataLoader(data, batch_size=self.hparams.batch_size, shuffle=shuffle, num_workers=self.hparams.num_workers)

    def train_dataloader(self) -> DataLoader:
        return self._loader("fit", shuffle=True)

    def val_dataloader(self) -> DataLoader:
        return self._loader("val")

    def test_dataloader(self) -> DataLoader:
        return self._loader("test")


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
