"""What ``python -m nsync.fit`` does: plan the (split seed, direction) fits, fit each one's source
layers chunk by chunk and hand every chunk to the analyses' collectors
(:mod:`nsync.fit.analyses`), pool the fits once (:meth:`FitResult.from_fits`) and write the run
folder (:class:`~nsync.fit.run_folder.RunFolder`).

    for each (split seed, direction):           DirectionContext (data, draws, surrogates, bins)
        for each chunk of source layers:        ChunkFit (R², alphas, chosen targets, sums, probe)
            collector.add(chunk) for each analysis the config asks for
        collector.finish()                      -> DirectionFit.outputs
    FitResult.from_fits(...)                    -> results.json and the artefacts
"""

from __future__ import annotations

import contextlib
import ctypes
import dataclasses
import gc
import logging
import sys
import time

import lightning as L
import numpy as np
from lightning.pytorch.utilities import rank_zero_only

from nsync.cache import ActivationCache
from nsync.config import to_yaml
from nsync.data import SynchronyDataModule
from nsync.data.pairs import ALL, NoPairsError, resolve_directions
from nsync.errors import NsyncError, warnings_once_per_run
from nsync.fit.analyses import ANALYSES
from nsync.fit.config import FitConfig, resolve_out
from nsync.fit.direction import DirectionFit, context, fit_chunk
from nsync.fit.fingerprint import fingerprint
from nsync.fit.probe_types import check_probe, probe_type
from nsync.fit.results import FitResult
from nsync.fit.run_folder import RunFolder
from nsync.probes.quiet import quiet_lightning
from nsync.storage import disk_errors

log = logging.getLogger("nsync.fit")


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


def plan(cfg: FitConfig) -> list[tuple[int, str]]:
    """The (split seed, direction) fits of a run, in order."""
    return [(seed, direction) for seed in cfg.data.split_seeds for direction in cfg.data.directions]


def trainer(cfg: FitConfig, logger, max_epochs: int = 1, callbacks: list | None = None, strategy="auto") -> L.Trainer:
    """A Lightning Trainer with the run's accelerator, devices and logger, quiet."""
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


def fit_probe(cfg: FitConfig, logger, dm: SynchronyDataModule, log_prefix: str = ""):
    """Fit and test one probe of type ``cfg.probe`` from the source layers ``dm`` serves to every
    target layer; returns the tested probe."""
    return probe_type(cfg.probe).fit(cfg, dm, lambda **kwargs: trainer(cfg, logger, **kwargs), log_prefix)


def fit_direction(cfg: FitConfig, seed: int, direction: str, logger=None, bar=None) -> DirectionFit:
    """Every source layer of one (split seed, direction), chunk by chunk, through the collector of
    every registered analysis the config asks for; raises NoPairsError."""
    if bar is not None:
        bar.set_postfix_str(f"reading {direction}'s states (split seed {seed})", refresh=True)
    ctx = context(cfg, seed, direction, lambda dm, prefix: fit_probe(cfg, logger, dm, prefix))
    dm = ctx.dm
    cells = len(dm.target_layers)  # a chunk of source layers is fitted to every target layer
    if bar is not None:
        if bar.total is None:
            bar.total = len(plan(cfg)) * len(dm.source_layers) * cells
        bar.set_postfix_str(f"{direction}, split seed {seed}", refresh=True)
    collectors = [kind(ctx) for kind in ANALYSES.values() if kind.wanted(ctx)]
    r2, r2w, alpha, chosen, has_alpha = [], [], [], [], False  # per chunk
    for sources in probe_type(cfg.probe).source_chunks(cfg, dm):
        chunk = fit_chunk(ctx, sources)
        for collector in collectors:
            collector.add(chunk)
        has_alpha |= chunk.alpha is not None  # the probe type chooses a ridge alpha (reported per cell)
        r2.append(chunk.r2)
        r2w.append(chunk.r2_weighted)
        chosen.append(chunk.chosen)
        alpha.append(chunk.alpha if chunk.alpha is not None else np.full_like(chunk.r2, np.nan))
        if bar is not None:
            bar.update(len(sources) * cells)
        # Trainer and probe reference each other: free this chunk's sums and solution now instead of
        # whenever the cyclic GC gets to them (big tensors do not count towards its thresholds).
        del chunk
        release_memory()
    # Only figures are kept, not the data module: its rows of every layer would add up over directions and seeds.
    return DirectionFit(
        seed, direction, layout(dm), dm.n("train"), dm.n("test"), len(dm.test_episodes), dm.split.ids(dm.pairs),
        np.concatenate(r2), np.concatenate(r2w), np.concatenate(alpha) if has_alpha else None, np.concatenate(chosen),
        "validation" if ctx.on_validation else "test", dm.n_excluded, {c.name: c.finish() for c in collectors},
    )  # fmt: skip


def layout(dm: SynchronyDataModule) -> dict:
    """The models, target condition and layers of a fit (the same for every fit of a run), as
    :class:`~nsync.fit.results.FitResult` names them."""
    return dict(
        models={"source": dm.source_model, "target": dm.target_model},
        target_condition=dm.target_condition,
        source_layers=dm.source_layers,
        target_layers=dm.target_layers,
        source_layer_names=dm.source_layer_names,
        target_layer_names=dm.target_layer_names,
        source_depth=relative_depth(dm.source_layers, dm.n_source_layers),
        target_depth=relative_depth(dm.target_layers, dm.n_target_layers),
    )


def relative_depth(layers: list[int], n_layers: int) -> list[float]:
    """Each layer's depth as a share of the model's: 0 the embedding output, 1 the last block.

    >>> relative_depth([0, 15, 30], 31)
    [0.0, 0.5, 1.0]
    """
    return [layer / max(n_layers - 1, 1) for layer in layers]


def with_agent_directions(cfg: FitConfig) -> FitConfig:
    """``cfg`` with ``data.directions=all`` replaced by every ordered pair of the cache's agents."""
    if ALL not in cfg.data.directions:
        return cfg
    agents = ActivationCache.open(cfg.data.cache).agents
    return dataclasses.replace(cfg, data=dataclasses.replace(cfg.data, directions=resolve_directions(cfg.data.directions, agents)))


def model_pair(cfg: FitConfig) -> str:
    models = ActivationCache.open(cfg.data.cache).simulated_models
    source = cfg.data.source_model or (models[0] if models else "?")
    return f"{source}__{cfg.data.target_model or source}"


def run_fit(cfg: FitConfig) -> FitResult:
    """Fit every (split seed, direction, source layer) and write the run folder; return the result.
    The folder is locked while the fit runs, says ``running`` in its status until results.json is
    written, and ``failed`` when the fit stops on an error."""
    check_probe(cfg.probe)
    L.seed_everything(cfg.seed, workers=True, verbose=False)
    cfg = with_agent_directions(cfg)
    folder = RunFolder(resolve_out(cfg))
    cache = ActivationCache.open(cfg.data.cache)
    if why := cache.incomplete():
        log.warning("fitting an incomplete cache %s: %s", cache.root, why)
    if folder.is_complete() and not cfg.overwrite:  # every rank: under DDP all stop, none waits for the others
        raise NsyncError(f"{folder.path} already holds {RunFolder.RESULTS}; choose another out folder or set overwrite=true")
    if rank_zero_only.rank != 0:  # type: ignore[attr-defined]  # under DDP rank 0 holds the folder and writes it
        return _fit(cfg, folder)
    with folder.lock():
        if folder.is_complete() and not cfg.overwrite:  # again under the lock: a fit may have finished since
            raise NsyncError(f"{folder.path} already holds {RunFolder.RESULTS}; choose another out folder or set overwrite=true")
        folder.clear()  # overwrite=true, or the artefacts of a fit that never finished: never mixed with this one's
        folder.mark_running()
        try:
            result = _fit(cfg, folder)
        except BaseException as err:
            with contextlib.suppress(Exception):  # the fit's own error is the one to see (a full disk may refuse this too)
                folder.mark_failed(err)
            raise
        folder.mark_complete()
    return result


def _fit(cfg: FitConfig, folder: RunFolder) -> FitResult:
    from tqdm.auto import tqdm

    from nsync.fit.plots import plot_results
    from nsync.fit.tracking import log_result, make_logger

    start = time.perf_counter()
    logger = make_logger(cfg, folder.path, model_pair(cfg))
    fits, skipped = [], {}
    bar = tqdm(total=None, desc=f"{cfg.probe} probes", unit="cell", disable=not cfg.progress or rank_zero_only.rank != 0)  # type: ignore[attr-defined]  # rank: set on the function at runtime
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
    fits = without_undefined(fits, skipped)
    result, artefacts = FitResult.from_fits(cfg, fits, skipped, time.perf_counter() - start, list(ANALYSES.values()))
    if result.few_test_episodes:
        log.warning("%s: they are stored in results.json but not printed; simulate more episodes or raise data.test_size", result.few_test_episodes)
    result.fingerprint = fingerprint(cfg)
    result.reply_flags = ActivationCache.open(cfg.data.cache).reply_flags()
    if rank_zero_only.rank == 0:  # type: ignore[attr-defined]  # under DDP only rank 0 writes; rank: set on the function at runtime
        with disk_errors(folder.path):
            folder.write_artefacts(artefacts, to_yaml(cfg))
            plots = plot_results(result, folder.path)
            result.save(folder.path)  # last: its presence means the run is complete
        if logger is not None:
            log_result(logger, result, plots)
    return result


def without_undefined(fits: list[DirectionFit], skipped: dict[str, str]) -> list[DirectionFit]:
    """The fits of the directions that have a SyncR²: a direction where some split seed chose no
    target layer for any source layer (no test R², or no validation pairs to choose on) is skipped
    with the reason, as a direction without pairs is; an error that says why where none has one.

    >>> from types import SimpleNamespace as F
    >>> fits = [F(direction="A->B", seed=0, chosen=np.array([0, 1]), n_test=9, test_episodes=3),
    ...         F(direction="B->A", seed=0, chosen=np.array([-1, -1]), n_test=2, test_episodes=2)]
    >>> skipped = {}
    >>> [f.direction for f in without_undefined(fits, skipped)], list(skipped)
    (['A->B'], ['B->A'])
    """
    undefined = {}
    for f in fits:
        if (f.chosen < 0).all() and f.direction not in undefined:
            undefined[f.direction] = (
                f"no source layer has a SyncR² (split seed {f.seed}: no target layer has a test R² and a "
                f"validation R² to be chosen on; {f.n_test} test pairs in {f.test_episodes} test episodes)"
            )
    kept = [f for f in fits if f.direction not in undefined]
    if not kept:
        raise NsyncError(
            f"SyncR² is undefined in every direction: {'; '.join(f'{d}: {why}' for d, why in undefined.items())}. A test R² needs test "
            "pairs whose target states vary, and each source layer's target layer is chosen on validation episodes, which need such "
            "pairs too; simulate more or longer episodes, or raise data.test_size / data.val_size"
        )
    for direction, why in undefined.items():
        skipped[direction] = why
        log.warning("skipping %s: %s", direction, why)
    return kept


def reusable_result(cfg: FitConfig) -> FitResult | None:
    """The stored result in ``cfg``'s out folder when it measured this fit of this cache (same
    :func:`~nsync.fit.fingerprint.fingerprint`); None (with the reason logged) when there is none
    or it must be refitted. Stages that re-use finished fits (controls, the paper pipeline, the CPU
    study) ask this instead of checking that a ``results.json`` exists."""
    cfg = with_agent_directions(cfg)  # as run_fit fingerprints it
    folder = RunFolder(resolve_out(cfg))
    if cfg.overwrite or not folder.is_complete():
        return None
    try:
        stored = FitResult.load(folder.path)
    except NsyncError as err:
        log.warning("refitting %s: %s", folder.path, err)
        return None
    if stored.fingerprint != fingerprint(cfg):
        log.warning("refitting %s: its results.json was fitted with another config or on other cache content", folder.path)
        return None
    return stored
