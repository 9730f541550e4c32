"""What ``python -m nsync.fit`` does, in four steps: plan the (split seed, direction) fits, fit
one direction (source layers in chunks, one Trainer per chunk), aggregate over split seeds and
directions into a :class:`~nsync.fit.results.FitResult`, and write the run folder."""

from __future__ import annotations

import contextlib
import ctypes
import dataclasses
import functools
import gc
import hashlib
import logging
import sys
import time
import warnings
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import lightning as L
import numpy as np
import torch
from lightning.pytorch.utilities import rank_zero_only

from nsync.data import SynchronyDataModule
from nsync.data.bands import Baseline, BaselineFeatures
from nsync.data.datamodule import TooFewForValidation
from nsync.data.pairs import NoPairsError
from nsync.errors import NsyncError, warnings_once_per_run
from nsync.fit import bootstrap as boot
from nsync.fit import partition as part
from nsync.fit import surrogates as sur
from nsync.fit import timecourse as tc
from nsync.fit.config import FitConfig, fingerprint, resolve_out
from nsync.fit.probe_types import PROBE_TYPES
from nsync.fit.results import SCHEMA_VERSION, BootstrapInfo, FitResult, choose_targets, nan_to_none, summarise_direction
from nsync.probes.cka import debiased_cka
from nsync.probes.metrics import ProbeResults

log = logging.getLogger("nsync.fit")
#: Below this many test episodes the episode bootstrap under-covers (see nsync.fit.bootstrap).
MIN_TEST_EPISODES = 20
#: Lightning warnings that every chunk's Trainer would repeat and that say nothing about the fit.
LIGHTNING_NOISE = (
    ".*configure_optimizers. returned .None.",  # the closed-form probe has no optimiser
    ".*isinstance\\(treespec, LeafSpec\\).*",
    ".*does not have many workers.*",
    ".*Total length of .DataLoader. across ranks is zero.*",  # no validation part
)


@contextlib.contextmanager
def quiet_lightning() -> Iterator[None]:
    """Around a fit's Trainers (one per chunk of source layers; entered once per run): Lightning's per-Trainer
    banners and :data:`LIGHTNING_NOISE` stay out of the output. Scoped, so importing nsync
    changes no warning filter or logger level of the user's process."""
    lightning_log = logging.getLogger("lightning.pytorch")
    level = lightning_log.level
    lightning_log.setLevel(max(level, logging.WARNING))
    try:
        with warnings.catch_warnings():
            for message in LIGHTNING_NOISE:
                warnings.filterwarnings("ignore", message=message)
            yield
    finally:
        lightning_log.setLevel(level)


def release_memory() -> None:
    """Free what is unreachable and hand freed heap memory back to the system: glibc keeps freed
    blocks below its mmap threshold (a moving one, up to 32 MB) for re-use, and they would count
    in the next chunk's RSS."""
    gc.collect()
    if sys.platform.startswith("linux"):
        try:
            ctypes.CDLL("libc.so.6").malloc_trim(0)
        except (OSError, AttributeError):  # not glibc
            pass


@dataclass
class DirectionFit:
    """What one (split seed, direction) gave."""

    seed: int
    direction: str
    layout: dict  # models, target condition, layers and their names (the same for every fit of a run)
    n_train: int
    n_test: int
    split_ids: dict  # train and test episodes, scenarios, characters
    r2: np.ndarray  # [source layers, target layers]
    r2_weighted: np.ndarray
    alpha: np.ndarray | None  # chosen alphas (affine)
    replicates: np.ndarray | None  # [n_boot] SyncR² replicates
    episodes: list[dict] = field(default_factory=list)  # per test episode SyncR²
    weights: dict[str, torch.Tensor] = field(default_factory=dict)
    cka: np.ndarray | None = None  # [source layers, target layers] debiased linear CKA on the test side
    chosen: np.ndarray | None = None  # [source layers] position of each one's target layer (-1: none), see choose_targets
    target_choice: str = "validation"  # what the targets were chosen on
    partition: dict[str, dict] = field(default_factory=dict)  # baseline -> nsync.fit.partition.join_chunks
    null_sync: np.ndarray | None = None  # [surrogates] SyncR² of each surrogate re-pairing of the test rows
    time_course: dict | None = None  # SyncR² by utterance index (nsync.fit.timecourse.summarise_fit)
    n_excluded: int = 0  # pairs left out by data.exclude_flags


def plan(cfg: FitConfig) -> list[tuple[int, str]]:
    """The (split seed, direction) fits of a run, in order."""
    return [(seed, direction) for seed in cfg.data.split_seeds for direction in cfg.data.directions]


def source_chunks(cfg: FitConfig, dm: SynchronyDataModule) -> list[list[int]]:
    """Positions of the source axis fitted together (the probe type decides)."""
    return PROBE_TYPES.get(cfg.probe)().source_chunks(cfg, dm)


def _trainer(cfg: FitConfig, logger, max_epochs: int = 1, callbacks: list | None = None, strategy="auto") -> L.Trainer:
    return L.Trainer(
        max_epochs=max_epochs,
        accelerator=cfg.accelerator,
        devices=cfg.devices,
        strategy=strategy,
        logger=logger if logger is not None else False,
        log_every_n_steps=1,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        num_sanity_val_steps=0,
        use_distributed_sampler=False,  # the DataModule shards rows itself, without padding (exact sums)
        callbacks=callbacks or [],
    )


def fit_chunk(cfg: FitConfig, dm: SynchronyDataModule, logger=None, log_prefix: str = ""):
    """Fit and test one probe of type ``cfg.probe`` from the source layers ``dm`` serves to every
    target layer; returns the tested probe."""
    return PROBE_TYPES.get(cfg.probe)().fit(cfg, dm, functools.partial(_trainer, cfg, logger), log_prefix)


def fit_direction(cfg: FitConfig, seed: int, direction: str, logger=None, bar=None) -> DirectionFit:
    """Every source layer of one (split seed, direction), chunk by chunk; raises NoPairsError."""
    on_validation = cfg.target_choice == "validation"
    try:
        dm = SynchronyDataModule(cfg.data, direction, seed, validation=cfg.needs_validation)
        dm.setup()
    except TooFewForValidation as err:
        if not on_validation or dataclasses.replace(cfg, target_choice="test").needs_validation:
            raise  # an alpha grid or the MLP's early stopping cannot do without
        log.warning("%s: target layers chosen on the test side for this fit (target_choice=test)", err)
        dm, on_validation = SynchronyDataModule(cfg.data, direction, seed, validation=False), False
        dm.setup()
    n_src, n_tgt = len(dm.source_layers), len(dm.target_layers)
    if bar is not None and bar.total is None:
        bar.total = len(plan(cfg)) * n_src
        bar.refresh()
    r2, r2w, alpha = np.full((n_src, n_tgt), np.nan), np.full((n_src, n_tgt), np.nan), np.full((n_src, n_tgt), np.nan)
    val_r2 = np.full((n_src, n_tgt), np.nan) if on_validation else None
    has_alpha = False  # whether the probe type chooses a ridge alpha (reported per cell)
    draws = boot.EpisodeBootstrap(cfg.bootstrap).weights(dm.test_episodes) if cfg.bootstrap else None
    replicates, per_episode, weights, replicate_r2 = [], [], {}, None
    bands = partition_bands(cfg, dm)
    test_rows = torch.from_numpy(dm.index["test"])
    test_pairs = dm.pairs.iloc[dm.index["test"]]
    perms = None  # surrogate re-pairings of the test rows; only where targets are chosen on validation (else the test choice would need re-picking)
    if cfg.surrogates.n and val_r2 is not None:
        key_seed = int.from_bytes(hashlib.sha256(f"{seed}|{direction}".encode()).digest()[:4], "little")
        perms = sur.permutations(test_pairs, cfg.surrogates.n, cfg.surrogates.kind, key_seed)
    null_sync: list[np.ndarray] = []
    course = None  # SyncR² by utterance index: [source layers] of (estimate [bins], replicates [n_boot, bins])
    if cfg.time_bins >= 0:
        codes = np.searchsorted(dm.test_episodes, test_pairs["episode_id"].to_numpy())
        course = tc.TimeCourse(codes, test_pairs["t"].to_numpy(), len(dm.test_episodes), cfg.time_bins, draws)
    by_time = []
    # Test rows of every layer, read once (not per chunk) when predictions are scored row by row.
    x_test, y_test = (dm.x[test_rows], dm.y[test_rows]) if perms is not None or course is not None else (None, None)
    shares: dict[str, list[part.ChunkShares]] = {name: [] for name in bands}
    fitted_baselines: dict[str, dict] = {name: {} for name in bands}  # baseline-alone fits that serve every source layer
    key = direction.replace("->", "_to_")
    for chunk in source_chunks(cfg, dm):
        prefix = f"{key}/seed_{seed}/" + (f"{dm.source_layer_names[chunk[0]]}/" if len(chunk) == 1 and len(dm.source_layers) > 1 else "")
        probe = fit_chunk(cfg, dm.for_sources(chunk), logger, prefix)
        res: ProbeResults = probe.results
        if res.test_r2 is None or res.test_r2_weighted is None or res.episode_sums is None:
            raise NsyncError(f"probe type '{cfg.probe}' returned a probe without test results: its fit must run trainer.test")
        r2[chunk] = res.test_r2.reshape(len(chunk), n_tgt).numpy()
        r2w[chunk] = res.test_r2_weighted.reshape(len(chunk), n_tgt).numpy()
        if res.alpha is not None:
            alpha[chunk], has_alpha = res.alpha.numpy(), True
        if val_r2 is not None and res.val_r2 is None:  # a probe type without one (docs/extending.md's baseline)
            log.warning(
                "probe type '%s' reports no validation R² (results.val_r2): target layers are chosen on the test R² (target_choice=test)",
                cfg.probe,
            )
            val_r2, perms, null_sync = None, None, []  # no surrogates for targets picked on the test side
        if val_r2 is not None and res.val_r2 is not None:
            val_r2[chunk] = res.val_r2.reshape(len(chunk), n_tgt).numpy()
        chosen = choose_targets(r2[chunk], None if val_r2 is None else val_r2[chunk])
        sums = res.episode_sums
        if draws is not None and replicate_r2 is None:  # the target-side sums are the same for every chunk
            replicate_r2 = boot.ReplicateR2(sums, draws)
        valid = boot.valid_dims(sums)
        predictions = sur.chosen_predictions(probe, x_test[:, chunk].float(), y_test, chosen) if x_test is not None and y_test is not None else {}
        if perms is not None:
            null_sync.append(sur.chunk_nulls(predictions, chosen, perms, valid))
        if course is not None:
            by_time += [course.r2(*predictions[i], valid[int(chosen[i])]) if i in predictions else None for i in range(len(chunk))]
        for name, features in bands.items():  # the same chunk beside each baseline, then its unique share
            fit = functools.partial(fit_chunk, cfg, logger=logger, log_prefix=f"{prefix}partition/{name}/")
            shares[name].append(
                part.fit_chunk_shares(
                    cfg,
                    dm,
                    chunk,
                    [features.per_source[s] for s in chunk],
                    features.starts,
                    features.fixed,
                    res,
                    fit,
                    replicate_r2,
                    cfg.bootstrap,
                    val_r2 is not None,
                    fitted_baselines[name],
                    perms,
                    valid,
                    course,
                )
            )
        for i, s in enumerate(chunk):
            one = {"n": sums["n"], "s1": sums["s1"], "s2": sums["s2"], "sse": sums["sse"][:, i]}
            target = None if chosen[i] < 0 else int(chosen[i])
            if replicate_r2 is not None:
                # Chosen on validation: that target in every replicate; on the test side: re-picked in each.
                targets = boot.replicate_targets(target if val_r2 is not None else None, n_tgt)
                replicates.append(replicate_r2(one["sse"], targets) if target is not None else np.full((cfg.bootstrap, len(targets)), np.nan))
            per_episode.append(
                np.clip(boot.episode_r2(one, [target])[:, 0], 0, None) if target is not None else np.full(len(dm.test_episodes), np.nan)
            )
            if cfg.save_weights and hasattr(probe, "weights") and seed == cfg.data.split_seeds[0] and target is not None:
                w, b = probe.weights(i, target)
                name = f"{direction}/source_{dm.source_layers[s]}/target_{dm.target_layers[target]}"
                weights[name + "/weight"], weights[name + "/bias"] = w.float().contiguous(), b.float().contiguous()
        if bar is not None:
            bar.update(len(chunk))
        # Trainer and probe reference each other: free this chunk's sums and solution now instead of
        # whenever the cyclic GC gets to them (big tensors do not count towards its thresholds).
        del probe, res, sums, one, predictions  # one: views of this chunk's sums (GBs at the 7B shape)
        release_memory()
    cka = None
    if cfg.cka and dm.n("test") >= 4:
        test = torch.from_numpy(dm.index["test"])
        cka = debiased_cka(dm.x[test], dm.y[test]).numpy()
    counts = dm.pairs.iloc[dm.index["test"]].groupby("episode_id").size()
    with warnings.catch_warnings(action="ignore", category=RuntimeWarning):
        episode_sync = np.nanmean(np.stack(per_episode), axis=0)
    episodes = [
        {"split_seed": seed, "direction": direction, "episode_id": e, "n_pairs": int(counts[e]), "sync_r2": float(v)}
        for e, v in zip(dm.test_episodes, episode_sync, strict=True)
    ]
    # Only figures are kept, not the data module: its rows of every layer would add up over directions and seeds.
    layout = dict(
        source_model=dm.source_model,
        target_model=dm.target_model,
        target_condition=dm.target_condition,
        source_layers=dm.source_layers,
        target_layers=dm.target_layers,
        source_layer_names=dm.source_layer_names,
        target_layer_names=dm.target_layer_names,
        source_depth=relative_depth(dm.source_layers, dm.n_source_layers),
        target_depth=relative_depth(dm.target_layers, dm.n_target_layers),
    )
    return DirectionFit(
        seed,
        direction,
        layout,
        dm.n("train"),
        dm.n("test"),
        dm.split.ids(dm.pairs),
        r2,
        r2w,
        alpha if has_alpha else None,
        boot.replicate_sync_r2(replicates) if replicates else None,
        episodes,
        weights,
        cka,
        choose_targets(r2, val_r2),
        "test" if val_r2 is None else "validation",
        {name: part.join_chunks(parts, course) for name, parts in shares.items()},
        part.mean_over_sources(np.clip(np.concatenate(null_sync), 0, None)) if null_sync else None,
        tc.summarise_fit(by_time, course, clip=True) if course is not None else None,
        dm.n_excluded,
    )


def partition_bands(cfg: FitConfig, dm: SynchronyDataModule) -> dict[str, BaselineFeatures]:
    """Each baseline's features per source layer of ``dm`` (none without ``partition.baselines``)."""
    if not cfg.partition.baselines:
        return {}
    from nsync.cache import ActivationCache
    from nsync.data.bands import BandReader, check_baselines

    cache = ActivationCache.open(cfg.data.cache)
    check_baselines(cfg.partition.baselines, cache)
    layer = cfg.partition.layer if cfg.partition.layer == "same" else int(cfg.partition.layer)
    reader = BandReader(cache, dm.pairs, dm.source_model, dm.target_model, dm.target_condition, dm.index["fit"], layer)
    return {name: reader.read(Baseline.parse(name), dm.source_layers) for name in cfg.partition.baselines}


def relative_depth(layers: list[int], n_layers: int) -> list[float]:
    """Each layer's depth as a share of the model's: 0 the embedding output, 1 the last block.

    >>> relative_depth([0, 15, 30], 31)
    [0.0, 0.5, 1.0]
    """
    return [layer / max(n_layers - 1, 1) for layer in layers]


def aggregate(
    cfg: FitConfig, fits: list[DirectionFit], skipped: dict[str, str], seconds: float
) -> tuple[FitResult, np.ndarray | None, dict[str, np.ndarray]]:
    """The run's result, its SyncR² bootstrap replicates and the partition's (``baseline/quantity``)
    from every direction's fits."""
    from nsync.config import to_dict

    lay = fits[-1].layout  # every fit of a run has the same models and layers
    directions = {}
    splits: dict[str, dict] = {}
    for direction in cfg.data.directions:
        mine = [f for f in fits if f.direction == direction]
        if not mine:
            continue
        directions[direction] = summarise_direction(
            [f.r2 for f in mine],
            [f.r2_weighted for f in mine],
            None if mine[0].alpha is None else [f.alpha for f in mine if f.alpha is not None],
            [f.n_train for f in mine],
            [f.n_test for f in mine],
            lay["source_layers"],
            lay["target_layers"],
            None if any(f.cka is None for f in mine) else [f.cka for f in mine if f.cka is not None],
            [f.chosen for f in mine if f.chosen is not None],  # set by every fit_direction
            mine[0].target_choice,
        )
        directions[direction].n_excluded = mine[0].n_excluded
        directions[direction].partition = part.summarise_direction(mine, lay["target_layers"], cfg.partition.layer, cfg.partition.feature_ratios)
        if all(f.time_course is not None for f in mine):
            directions[direction].time_course = tc.combine_seeds([f.time_course for f in mine if f.time_course is not None])
        if all(f.replicates is not None for f in mine):  # this direction's split seeds, one joint draw as the run's
            reps = boot.combine([f.replicates for f in mine if f.replicates is not None])
            directions[direction].sync_r2_ci95 = boot.interval(reps, directions[direction].sync_r2)
            directions[direction].sync_r2_bias_corrected = boot.bias_corrected(directions[direction].sync_r2, reps)
        if all(f.null_sync is not None for f in mine):
            directions[direction].sync_r2_p_value = sur.p_value(
                directions[direction].sync_r2, boot.combine([f.null_sync for f in mine if f.null_sync is not None])
            )
    for f in fits:
        splits.setdefault(str(f.seed), {})[f.direction] = f.split_ids
    # Mean over directions, then over split seeds; the bootstrap replicates the same way.
    seeds_sync = np.mean([d.sync_r2_per_seed for d in directions.values()], axis=0)
    replicates = None
    if all(f.replicates is not None for f in fits):  # episode-keyed weights: one joint draw over seeds and directions
        per_seed = [
            boot.combine([f.replicates for f in fits if f.seed == s and f.replicates is not None])
            for s in cfg.data.split_seeds
            if any(f.seed == s for f in fits)
        ]
        replicates = boot.combine(per_seed)
    sync = float(np.mean(seeds_sync))
    p_sync, null_sync = None, None
    if all(f.null_sync is not None for f in fits):  # surrogate k of the run: the mean of every fit's k-th, as SyncR² is a mean
        null_sync = boot.combine(
            [
                boot.combine([f.null_sync for f in fits if f.seed == s and f.null_sync is not None])
                for s in cfg.data.split_seeds
                if any(f.seed == s for f in fits)
            ]
        )
        p_sync = sur.p_value(sync, null_sync)
    fewest = min(len(f.episodes) for f in fits)
    if replicates is not None and fewest < MIN_TEST_EPISODES:
        log.warning(
            "only %d test episodes: with fewer than %d the episode bootstrap's interval covers less than it says "
            "(planted problems: 83-90%% for a nominal 95%% at 10); simulate more episodes",
            fewest,
            MIN_TEST_EPISODES,
        )
    ckas = [d.sync_cka for d in directions.values() if d.sync_cka is not None]
    partition, partition_replicates = part.summarise(
        fits, cfg.data.split_seeds, {b: list(Baseline.parse(b).features) for b in cfg.partition.baselines}, cfg.partition.layer
    )
    result = FitResult(
        schema_version=SCHEMA_VERSION,
        sync_cka=float(np.mean(ckas)) if ckas and len(ckas) == len(directions) else None,
        probe=cfg.probe,
        split=cfg.data.split,
        lag=cfg.data.lag,
        condition=cfg.data.condition,
        target_condition=lay["target_condition"],
        pairing=cfg.data.pairing,
        models={"source": lay["source_model"], "target": lay["target_model"]},
        source_layers=lay["source_layers"],
        target_layers=lay["target_layers"],
        source_layer_names=lay["source_layer_names"],
        target_layer_names=lay["target_layer_names"],
        source_depth=lay["source_depth"],
        target_depth=lay["target_depth"],
        directions=directions,
        skipped_directions=skipped,
        sync_r2=sync,
        sync_r2_std=float(np.std(seeds_sync)),
        target_choice="validation" if all(f.target_choice == "validation" for f in fits) else "test",
        sync_r2_test_picked=float(np.mean([d.sync_r2_test_picked for d in directions.values()])),
        sync_r2_unclipped=nan_to_none(
            float(np.mean([d.sync_r2_unclipped for d in directions.values() if d.sync_r2_unclipped is not None] or [np.nan]))
        ),
        sync_r2_ci95=boot.interval(replicates, sync) if replicates is not None else None,
        sync_r2_bias_corrected=boot.bias_corrected(sync, replicates) if replicates is not None else None,
        bootstrap=BootstrapInfo(replicates=cfg.bootstrap, scheme=boot.SCHEME, test_episodes=min(len(f.episodes) for f in fits))
        if replicates is not None
        else None,
        splits=splits,
        config=to_dict(cfg),
        seconds=seconds,
        partition=partition,
        sync_r2_p_value=p_sync,
        sync_r2_null=sur.null_summary(null_sync),
        surrogates={"n": cfg.surrogates.n, "kind": cfg.surrogates.kind} if p_sync is not None else None,
    )
    return result, replicates, partition_replicates


def write(
    result: FitResult,
    fits: list[DirectionFit],
    replicates: np.ndarray | None,
    out: Path,
    cfg: FitConfig,
    partition_replicates: dict[str, np.ndarray] | None = None,
) -> list[Path]:
    """The run folder: weights, bootstrap replicates, per-episode SyncR², config, plots, and
    ``results.json`` last (its presence means the run is complete). Returns the plots."""
    import pandas as pd
    from safetensors.torch import save_file

    from nsync.config import to_yaml
    from nsync.fit.plots import plot_results

    weights = {k: v for f in fits for k, v in f.weights.items()}
    if weights:
        save_file(weights, str(out / "weights.safetensors"))
    if replicates is not None:
        np.save(out / "bootstrap.npy", replicates)
    if partition_replicates:
        np.savez(out / "partition_bootstrap.npz", **partition_replicates)  # type: ignore[arg-type]  # numpy's stub types **kwds against allow_pickle
    pd.DataFrame([row for f in fits for row in f.episodes]).to_csv(out / "episode_sync.csv", index=False)
    (out / "config.yaml").write_text(to_yaml(cfg))
    plots = plot_results(result, out)
    result.save(out)
    return plots


def with_agent_directions(cfg: FitConfig) -> FitConfig:
    """``cfg`` with ``data.directions=all`` replaced by every ordered pair of the cache's agents."""
    from nsync.cache import ActivationCache
    from nsync.data.pairs import ALL, resolve_directions

    if ALL not in cfg.data.directions:
        return cfg
    agents = ActivationCache.open(cfg.data.cache).agents
    return dataclasses.replace(cfg, data=dataclasses.replace(cfg.data, directions=resolve_directions(cfg.data.directions, agents)))


def _model_pair(cfg: FitConfig) -> str:
    from nsync.cache import ActivationCache

    models = ActivationCache.open(cfg.data.cache).simulated_models
    source = cfg.data.source_model or (models[0] if models else "?")
    return f"{source}__{cfg.data.target_model or source}"


def run_fit(cfg: FitConfig) -> FitResult:
    """Fit every (split seed, direction, source layer) and write the run folder; return the result."""
    from tqdm.auto import tqdm

    from nsync.fit.tracking import log_result, make_logger

    L.seed_everything(cfg.seed, workers=True, verbose=False)
    cfg = with_agent_directions(cfg)
    out = Path(resolve_out(cfg))
    if (out / "results.json").exists() and not cfg.overwrite:
        raise NsyncError(f"{out} already holds results.json; choose another out folder or set overwrite=true")
    start = time.perf_counter()
    out.mkdir(parents=True, exist_ok=True)
    logger = make_logger(cfg, out, _model_pair(cfg))
    fits, skipped = [], {}
    bar = tqdm(total=None, desc=f"{cfg.probe} probes", unit="layer", disable=not cfg.progress or rank_zero_only.rank != 0)  # type: ignore[attr-defined]  # rank: set on the function at runtime
    # Every chunk, seed and direction meets the same conditions: say each once. Lightning's noise is
    # silenced for the whole run (one catch_warnings: entered per chunk, it would reset Python's
    # show-once memory and repeat every other Lightning warning once per chunk).
    with warnings_once_per_run(), quiet_lightning():
        for seed, direction in plan(cfg):
            try:
                fits.append(fit_direction(cfg, seed, direction, logger, bar))
            except NoPairsError as err:  # e.g. B->A at lag 5 in 6-utterance runs: the other direction still counts
                skipped[direction] = str(err)
                log.warning("skipping %s: %s", direction, err)
    bar.close()
    if not fits:
        raise NsyncError(f"no pairs in any direction: {'; '.join(skipped.values())}")
    result, replicates, partition_replicates = aggregate(cfg, fits, skipped, time.perf_counter() - start)
    result.fingerprint = fingerprint(cfg)
    from nsync.cache import ActivationCache

    result.reply_flags = ActivationCache.open(cfg.data.cache).reply_flags()
    if rank_zero_only.rank == 0:  # type: ignore[attr-defined]  # under DDP only rank 0 writes; rank: set on the function at runtime
        plots = write(result, fits, replicates, out, cfg, partition_replicates)
        if logger is not None:
            log_result(logger, result, plots)
    return result


def reusable_result(cfg: FitConfig) -> FitResult | None:
    """The stored result in ``cfg``'s out folder when it measured this fit of this cache (same
    :func:`~nsync.fit.config.fingerprint`); None (with the reason logged) when there is none or it
    must be refitted. Stages that re-use finished fits (controls, the paper pipeline, the CPU
    study) ask this instead of checking that a ``results.json`` exists."""
    cfg = with_agent_directions(cfg)  # as run_fit fingerprints it
    folder = Path(resolve_out(cfg))
    if cfg.overwrite or not (folder / "results.json").is_file():
        return None
    try:
        stored = FitResult.load(folder)
    except NsyncError as err:
        log.warning("refitting %s: %s", folder, err)
        return None
    if stored.fingerprint != fingerprint(cfg):
        log.warning(
            "refitting %s: its results.json was fitted %s",
            folder,
            "before fits had fingerprints" if stored.fingerprint is None else "with another config or on other cache content",
        )
        return None
    return stored
