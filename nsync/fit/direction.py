"""One (split seed, direction) of a fit: its source layers in chunks, each chunk fitted once and
handed to the analyses the config asks for (:mod:`nsync.fit.analyses`).

    chunk of source layers --fit--> ChunkFit --add--> every collector --finish--> DirectionFit

A :class:`ChunkFit` is what fitting a chunk gives (test and validation R², chosen alphas and
target layers, per-episode sums, the probe for predictions and weights); a
:class:`DirectionContext` is what every collector of the direction shares (the data module,
bootstrap draws, surrogate re-pairings, the time-course bins, and how to fit another probe).
"""

from __future__ import annotations

import dataclasses
import hashlib
import logging
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch

from nsync.data import SynchronyDataModule
from nsync.data.datamodule import TooFewForValidation
from nsync.errors import NsyncError
from nsync.fit.config import FitConfig
from nsync.fit.probe_types import probe_type
from nsync.stats.bootstrap import EpisodeBootstrap, ReplicateR2
from nsync.stats.r2 import choose_targets, valid_dims
from nsync.stats.surrogates import permutations
from nsync.stats.timecourse import TimeCourse

log = logging.getLogger("nsync.fit")


@dataclass
class DirectionContext:
    """What the collectors of one (split seed, direction) share."""

    cfg: FitConfig
    seed: int
    direction: str
    dm: SynchronyDataModule
    on_validation: bool  # targets (and alphas, penalties) chosen on validation episodes
    fit_probe: Callable[[SynchronyDataModule, str], Any]  # fits and tests a probe of cfg.probe on a view of dm
    draws: np.ndarray | None = None  # [n_boot, test episodes] the bootstrap's weights
    perms: np.ndarray | None = None  # [surrogates, test rows] re-pairings (only where targets are chosen on validation)
    course: TimeCourse | None = None  # the test rows' time-course bins
    replicate_r2: ReplicateR2 | None = None  # replicate R² of the test side (set by the first chunk: its target sums serve every chunk)
    x_test: torch.Tensor | None = None  # [test rows, sources, d] read once where predictions are scored row by row
    y_test: torch.Tensor | None = None

    @property
    def n_targets(self) -> int:
        return len(self.dm.target_layers)

    @property
    def key(self) -> str:
        return self.direction.replace("->", "_to_")


@dataclass
class ChunkFit:
    """What fitting one chunk of source layers gave (matrices ``[chunk, targets]``)."""

    sources: list[int]  # positions on the source axis
    probe: Any  # the tested probe: predictions (source_predictions) and, where it has them, weights
    r2: np.ndarray
    r2_weighted: np.ndarray
    val_r2: np.ndarray | None
    alpha: np.ndarray | None
    chosen: np.ndarray  # [chunk] target position per source layer (-1: none)
    sums: dict[str, torch.Tensor]  # per test episode n [E], s1, s2 [E, targets, dims], sse [E, chunk, targets, dims]
    valid: torch.Tensor  # [targets, dims] dimensions that vary on the test side
    prefix: str  # its W&B key prefix
    _predictions: dict[int, tuple[torch.Tensor, torch.Tensor]] | None = None

    def source_sums(self, i: int) -> dict[str, torch.Tensor]:
        """Chunk position ``i``'s per-episode sums (``sse`` ``[E, targets, dims]``)."""
        return {"n": self.sums["n"], "s1": self.sums["s1"], "s2": self.sums["s2"], "sse": self.sums["sse"][:, i]}

    def target(self, i: int) -> int | None:
        return None if self.chosen[i] < 0 else int(self.chosen[i])

    def predictions(self, ctx: DirectionContext) -> dict[int, tuple[torch.Tensor, torch.Tensor]]:
        """Per chunk position with a chosen target: ``(y, prediction)`` ``[test rows, d]`` float64
        at that target, both around the probe's ``target_shift``; computed once, on first use."""
        if self._predictions is None:
            assert ctx.x_test is not None and ctx.y_test is not None  # read when a collector scores rows
            self._predictions = chosen_predictions(self.probe, ctx.x_test[:, self.sources].float(), ctx.y_test, self.chosen)
        return self._predictions


def chosen_predictions(probe, x_test: torch.Tensor, y_test: torch.Tensor, chosen: np.ndarray) -> dict[int, tuple[torch.Tensor, torch.Tensor]]:
    """Per source position with a chosen target: ``(y, prediction)`` ``[rows, d]`` float64 of the
    test rows at that target, both around the probe's ``target_shift`` (any probe type).
    ``x_test`` ``[rows, chunk, d]``, ``y_test`` ``[rows, targets, d]``; ``chosen``: target positions (-1: none)."""
    out = {}
    y_centred = y_test.float() - probe.target_shift.cpu()  # the probe predicts around target_shift
    with torch.no_grad():
        for s, pred in probe.source_predictions(x_test):
            t = int(chosen[s])
            if t >= 0:
                out[s] = (y_centred[:, t].double(), pred[:, t].double())
    return out


@dataclass
class DirectionFit:
    """What one (split seed, direction) gave: the R² matrices, the chosen targets, and each
    collector's output by name (:mod:`nsync.fit.analyses`)."""

    seed: int
    direction: str
    layout: dict  # models, target condition, layers and their names (the same for every fit of a run)
    n_train: int
    n_test: int
    test_episodes: int
    split_ids: dict  # train and test episodes, scenarios, characters
    r2: np.ndarray  # [source layers, target layers]
    r2_weighted: np.ndarray
    alpha: np.ndarray | None  # chosen alphas (affine)
    chosen: np.ndarray  # [source layers] position of each one's target layer (-1: none)
    target_choice: str  # what the targets were chosen on
    n_excluded: int  # pairs left out by data.exclude_flags
    outputs: dict[str, Any] = field(default_factory=dict)  # collector name -> its finish()


def open_data(cfg: FitConfig, seed: int, direction: str) -> tuple[SynchronyDataModule, bool]:
    """The direction's data module, set up, and whether targets are chosen on validation episodes
    (a fit whose training episodes are too few for a validation part falls back to the test side
    where nothing else needs one)."""
    on_validation = cfg.target_choice == "validation"
    try:
        dm = SynchronyDataModule(cfg.data, direction, seed, validation=needs_validation(cfg))
        dm.setup()
    except TooFewForValidation as err:
        if not on_validation or needs_validation(dataclasses.replace(cfg, target_choice="test")):
            raise  # an alpha grid or the MLP's early stopping cannot do without
        log.warning("%s: target layers chosen on the test side for this fit (target_choice=test)", err)
        dm, on_validation = SynchronyDataModule(cfg.data, direction, seed, validation=False), False
        dm.setup()
    return dm, on_validation


def needs_validation(cfg: FitConfig) -> bool:
    """Something is chosen on validation data (an alpha grid, the MLP's early stopping, targets)."""
    return probe_type(cfg.probe).needs_validation(cfg)


def context(cfg: FitConfig, seed: int, direction: str, fit_probe: Callable[[SynchronyDataModule, str], Any]) -> DirectionContext:
    """The direction's data and what its collectors share (bootstrap draws, surrogates, time bins)."""
    dm, on_validation = open_data(cfg, seed, direction)
    ctx = DirectionContext(cfg, seed, direction, dm, on_validation, fit_probe)
    ctx.draws = EpisodeBootstrap(cfg.bootstrap).weights(dm.test_episodes) if cfg.bootstrap else None
    test_pairs = dm.pairs.iloc[dm.index["test"]]
    if cfg.surrogates.n and on_validation:  # targets picked on the test side would need re-picking per surrogate
        key_seed = int.from_bytes(hashlib.sha256(f"{seed}|{direction}".encode()).digest()[:4], "little")
        ctx.perms = permutations(test_pairs, cfg.surrogates.n, cfg.surrogates.kind, key_seed)
    if cfg.time_bins >= 0:
        codes = np.searchsorted(dm.test_episodes, test_pairs["episode_id"].to_numpy())
        ctx.course = TimeCourse(codes, test_pairs["t"].to_numpy(), len(dm.test_episodes), cfg.time_bins, ctx.draws)
    if ctx.perms is not None or ctx.course is not None:  # test rows of every layer, read once (not per chunk)
        test_rows = torch.from_numpy(dm.index["test"])
        ctx.x_test, ctx.y_test = dm.x[test_rows], dm.y[test_rows]
    return ctx


def fit_chunk(ctx: DirectionContext, sources: list[int]) -> ChunkFit:
    """Fit and test the probe of the source layers ``sources`` against every target layer."""
    dm, n_tgt = ctx.dm, ctx.n_targets
    one_of_several = len(sources) == 1 and len(dm.source_layers) > 1  # its own W&B curves per source layer
    prefix = f"{ctx.key}/seed_{ctx.seed}/" + (f"{dm.source_layer_names[sources[0]]}/" if one_of_several else "")
    probe = ctx.fit_probe(dm.for_sources(sources), prefix)
    res = probe.results
    if res.test_r2 is None or res.test_r2_weighted is None or res.episode_sums is None:
        raise NsyncError(f"probe type '{ctx.cfg.probe}' returned a probe without test results: its fit must run trainer.test")
    val_r2 = None if res.val_r2 is None else res.val_r2.reshape(len(sources), n_tgt).numpy()
    if ctx.on_validation and val_r2 is None:  # a probe type without one (docs/how-to/extending.md's baseline)
        log.warning(
            "probe type '%s' reports no validation R² (results.val_r2): target layers are chosen on the test R² (target_choice=test)", ctx.cfg.probe
        )
        ctx.on_validation, ctx.perms = False, None  # no surrogates for targets picked on the test side
    val_r2 = val_r2 if ctx.on_validation else None
    r2, r2_weighted = res.test_r2.reshape(len(sources), n_tgt).numpy(), res.test_r2_weighted.reshape(len(sources), n_tgt).numpy()
    sums = res.episode_sums
    if ctx.draws is not None and ctx.replicate_r2 is None:  # the target-side sums are the same for every chunk
        ctx.replicate_r2 = ReplicateR2(sums, ctx.draws)
    return ChunkFit(
        sources,
        probe,
        r2,
        r2_weighted,
        val_r2,
        None if res.alpha is None else res.alpha.numpy(),
        choose_targets(r2, val_r2),
        sums,
        valid_dims(sums),
        prefix,
    )
