"""What ``python -m nsync.fit`` does: fit probes for every direction, split seed and source layer
of a cache, and write ``results.json``, weights, plots and a W&B run."""

from __future__ import annotations

import gc
import json
import logging
import os
import time
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Optional, Sequence

import numpy as np
from lightning.pytorch.callbacks import Callback
from omegaconf import MISSING

from nsync.config import load_config, to_dict
from nsync.cache.layout import CONDITIONS
from nsync.data.pairs import CONTROLS, DIRECTIONS, NoPairsError
from nsync.data.splits import SPLITS
from nsync.errors import NsyncError

log = logging.getLogger("nsync.fit")
# One Trainer per source layer: keep Lightning's per-Trainer banners and the closed-form probe's
# "no optimizer" notice out of the output.
logging.getLogger("lightning.pytorch").setLevel(logging.WARNING)
warnings.filterwarnings("ignore", message=".*configure_optimizers. returned .None.")
warnings.filterwarnings("ignore", message=".*isinstance\\(treespec, LeafSpec\\).*")
PROBES = ("affine", "mlp")
#: Bootstrap replicates re-pick the best target layer among this many best on the full test side.
BOOTSTRAP_TARGETS = 3


@dataclass
class DataConfig:
    """Which pairs, which split."""

    cache: str = field(default=MISSING, metadata={"help": "activation cache folder (from nsync.simulate or import-reference)"})
    source_model: Optional[str] = field(default=None, metadata={"help": "model whose states are the source (default: the cache's only model)"})
    target_model: Optional[str] = field(default=None, metadata={"help": "model whose states are the target (default: the cache's only model)"})
    directions: list[str] = field(default_factory=lambda: list(DIRECTIONS), metadata={"help": "A->B (source = agent who spoke first), B->A"})
    lag: int = field(default=1, metadata={"help": "target utterance t + lag (1: the partner's next utterance)"})
    condition: str = field(default="interactive", metadata={"help": "source states: interactive, observer (the no-engagement control), teacher_forced (re-read by nsync.reread)"})
    target_condition: str = field(default="interactive", metadata={"help": "target states: interactive, or teacher_forced (untrained-model control)"})
    control: str = field(default="partner", metadata={"help": f"where targets come from: one of {CONTROLS} (see nsync.data.pairs)"})
    split: str = field(default="interaction", metadata={"help": f"grouping of the train/test split: one of {SPLITS}"})
    split_seeds: list[int] = field(default_factory=lambda: [0, 1, 2], metadata={"help": "one split per seed; results are mean and std over them"})
    test_size: float = field(default=0.2, metadata={"help": "share of groups held out for testing"})
    val_size: float = field(default=0.1, metadata={"help": "share of training groups used for validation (alpha choice, early stopping)"})
    max_pairs: Optional[int] = field(default=None, metadata={"help": "pair budget per direction, whole episodes kept (the paper: 6500)"})
    source_layers: list[int] = field(default_factory=list, metadata={"help": "source layers (empty: all, 0 = embeddings)"})
    source_layer_step: int = field(default=1, metadata={"help": "with source_layers empty: every k-th layer from 0 (quicker looks on a CPU)"})
    target_layers: list[int] = field(default_factory=list, metadata={"help": "target layers (empty: all)"})
    batch_size: int = field(default=2048, metadata={"help": "rows per batch"})


@dataclass
class AffineConfig:
    alphas: list[float] = field(default_factory=lambda: [0.1], metadata={"help": "ridge alpha (the paper: 0.1); several: chosen per source layer on validation data"})
    scale: bool = field(default=False, metadata={"help": "standardise inputs by their training std before the ridge"})
    matmul_dtype: str = field(default="float32", metadata={"help": "batch products of centred data in float32 (sums always float64) or float64"})


@dataclass
class MLPConfig:
    hidden: int = field(default=256, metadata={"help": "hidden width"})
    depth: int = field(default=1, metadata={"help": "hidden layers"})
    dropout: float = field(default=0.1, metadata={"help": "dropout after each hidden layer"})
    weight_decay: float = field(default=1e-4, metadata={"help": "Adam weight decay"})
    lr: float = field(default=1e-3, metadata={"help": "Adam learning rate"})
    max_epochs: int = field(default=200, metadata={"help": "most training epochs"})
    patience: int = field(default=10, metadata={"help": "early stopping patience on val/r2 (epochs)"})
    batch_size: int = field(default=256, metadata={"help": "rows per training batch"})


@dataclass
class LoggerConfig:
    kind: str = field(default="wandb", metadata={"help": "wandb or none"})
    project: str = field(default="nsync", metadata={"help": "W&B project"})
    mode: str = field(default="auto", metadata={"help": "auto (online only with WANDB_API_KEY set), offline or online"})


@dataclass
class FitConfig:
    """Fit synchrony probes on an activation cache."""

    out: str = field(default=MISSING, metadata={"help": "run folder for results.json, plots, weights and the W&B run"})
    probe: str = field(default="affine", metadata={"help": f"one of {PROBES}"})
    data: DataConfig = field(default_factory=DataConfig)
    affine: AffineConfig = field(default_factory=AffineConfig)
    mlp: MLPConfig = field(default_factory=MLPConfig)
    logger: LoggerConfig = field(default_factory=LoggerConfig)
    seed: int = field(default=0, metadata={"help": "seed for weight init and shuffling (seed_everything)"})
    bootstrap: int = field(default=1000, metadata={"help": "bootstrap replicates over episodes for SyncR²'s 95% interval (0: none)"})
    accelerator: str = field(default="cpu", metadata={"help": "Lightning accelerator: cpu, gpu or auto"})
    devices: int = field(default=1, metadata={"help": "devices (DDP when more than one)"})
    overwrite: bool = field(default=False, metadata={"help": "replace the results of an earlier run in the same out folder"})
    save_weights: bool = field(default=True, metadata={"help": "save each source layer's best-target weights of the first split seed"})
    progress: bool = field(default=True, metadata={"help": "show a progress bar"})

    def __post_init__(self) -> None:
        if self.probe not in PROBES:
            raise NsyncError(f"probe must be one of {PROBES}, got '{self.probe}'")
        if self.data.split not in SPLITS:
            raise NsyncError(f"data.split must be one of {SPLITS}, got '{self.data.split}'")
        bad = [d for d in self.data.directions if d not in DIRECTIONS]
        if bad or not self.data.directions:
            raise NsyncError(f"data.directions must list some of {DIRECTIONS}, got {self.data.directions}")
        for key in ("condition", "target_condition"):
            if getattr(self.data, key) not in CONDITIONS:
                raise NsyncError(f"data.{key} must be one of {CONDITIONS}, got '{getattr(self.data, key)}'")
        if self.data.control not in CONTROLS:
            raise NsyncError(f"data.control must be one of {CONTROLS}, got '{self.data.control}'")
        if self.data.source_layer_step < 1:
            raise NsyncError(f"data.source_layer_step must be at least 1, got {self.data.source_layer_step}")
        if not self.data.split_seeds:
            raise NsyncError("data.split_seeds must list at least one seed")
        if self.logger.kind not in ("wandb", "none") or self.logger.mode not in ("auto", "offline", "online"):
            raise NsyncError("logger.kind must be wandb or none, logger.mode auto, offline or online")


def _trainer(cfg: FitConfig, max_epochs: int, callbacks: list | None = None):
    import lightning as L

    return L.Trainer(
        max_epochs=max_epochs,
        accelerator=cfg.accelerator,
        devices=cfg.devices,
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        num_sanity_val_steps=0,
        callbacks=callbacks or [],
    )


def _fit_source_layer(cfg: FitConfig, dm, layer: int):
    """Fit and test one probe from ``layer`` to every target layer; return the probe."""
    from lightning.pytorch.callbacks import EarlyStopping

    from nsync.probes import AffineProbe, MLPProbe

    dm.source_layer = layer
    n_targets = len(dm.target_layers)
    if cfg.probe == "affine":
        probe = AffineProbe(
            dm.d_in, dm.d_out, n_targets, alphas=cfg.affine.alphas, scale=cfg.affine.scale, matmul_dtype=cfg.affine.matmul_dtype,
            x_shift=dm.stats["x_mean"][layer], y_shift=dm.stats["y_mean"],
        )
        trainer = _trainer(cfg, max_epochs=1)
    else:
        m = cfg.mlp
        probe = MLPProbe(
            dm.d_in, dm.d_out, n_targets, hidden=m.hidden, depth=m.depth, dropout=m.dropout, lr=m.lr,
            weight_decay=m.weight_decay, x_mean=dm.stats["x_mean"][layer], x_std=dm.stats["x_std"][layer],
            y_mean=dm.stats["y_mean"], y_std=dm.stats["y_std"],
        )
        dm.hparams.batch_size = m.batch_size
        stop = EarlyStopping(monitor="val/r2", mode="max", patience=m.patience)
        best = BestWeights()
        trainer = _trainer(cfg, max_epochs=m.max_epochs, callbacks=[stop, best])
    trainer.fit(probe, datamodule=dm)
    if cfg.probe == "mlp":
        best.restore(probe)
    trainer.test(probe, datamodule=dm, verbose=False)
    return probe


class BestWeights(Callback):
    """Keeps the weights of the epoch with the best ``val/r2`` in memory (no checkpoint files)."""

    def __init__(self) -> None:
        self.best, self.state = -float("inf"), None

    def on_validation_end(self, trainer, module) -> None:
        score = trainer.callback_metrics.get("val/r2")
        if score is not None and float(score) > self.best:
            self.best = float(score)
            self.state = {k: v.detach().clone() for k, v in module.state_dict().items()}

    def restore(self, module) -> None:
        if self.state is not None:
            module.load_state_dict(self.state)


def _logger(cfg: FitConfig, out: Path, group: str):
    if cfg.logger.kind == "none":
        return None
    from lightning.pytorch.loggers import WandbLogger

    offline = cfg.logger.mode == "offline" or (cfg.logger.mode == "auto" and not os.environ.get("WANDB_API_KEY"))
    os.environ.setdefault("WANDB_SILENT", "true")
    return WandbLogger(project=cfg.logger.project, group=group, name=out.name, save_dir=str(out), offline=offline, job_type=cfg.probe)


def resolve_out(cfg: FitConfig) -> str:
    """``out`` with ``{hash}`` replaced by a short hash of the rest of the config (sweeps use it
    to give every grid point its own folder)."""
    if "{hash}" not in cfg.out:
        return cfg.out
    import hashlib

    d = to_dict(cfg)
    d.pop("out")
    return cfg.out.replace("{hash}", hashlib.sha256(json.dumps(d, sort_keys=True).encode()).hexdigest()[:10])


def run_fit(cfg: FitConfig) -> dict:
    """Fit every (split seed, direction, source layer) and write the run folder; return results."""
    import lightning as L
    import torch
    from safetensors.torch import save_file
    from tqdm.auto import tqdm

    import pandas as pd

    from nsync.analysis.bootstrap import (
        EpisodeBootstrap,
        episode_r2,
        interval,
        replicate_r2,
        replicate_sync_r2,
        restrict_targets,
    )
    from nsync.data import SynchronyDataModule

    L.seed_everything(cfg.seed, workers=True, verbose=False)
    out = Path(resolve_out(cfg))
    if (out / "results.json").exists() and not cfg.overwrite:
        raise NsyncError(f"{out} already holds results.json; choose another out folder or set overwrite=true")
    out.mkdir(parents=True, exist_ok=True)
    d = cfg.data
    start = time.perf_counter()
    per_direction: dict[str, list[np.ndarray]] = {}
    per_direction_w: dict[str, list[np.ndarray]] = {}
    meta: dict = {"n_train": {}, "n_test": {}, "splits": {}}
    weights: dict[str, torch.Tensor] = {}
    bar = None
    skipped: dict[str, str] = {}
    episode_rows: list[dict] = []  # per test episode: SyncR² from its own pairs (best targets fixed)
    boot, boot_sync = None, {}  # bootstrap: split seed -> [directions][n_boot] SyncR² replicates
    for seed in d.split_seeds:
        for direction in d.directions:
            dm = SynchronyDataModule(
                d.cache, d.source_model, d.target_model, direction, d.lag, d.condition, d.split, seed,
                d.test_size, d.val_size, d.max_pairs, d.source_layers or None, d.target_layers or None, d.batch_size,
                target_condition=d.target_condition, control=d.control, source_layer_step=d.source_layer_step,
            )
            try:
                dm.setup()
            except NoPairsError as err:  # e.g. B->A at lag 5 in 6-utterance runs: the other direction still counts
                skipped[direction] = str(err)
                log.warning("skipping %s: %s", direction, err)
                continue
            fitted = dm
            if boot is None and cfg.bootstrap:
                boot = EpisodeBootstrap(cfg.bootstrap)
            if bar is None:
                total = len(d.split_seeds) * len(d.directions) * len(dm.source_layers)
                bar = tqdm(total=total, desc=f"{cfg.probe} probes", unit="layer", disable=not cfg.progress)
            r2 = np.zeros((len(dm.source_layers), len(dm.target_layers)))
            r2w = np.zeros_like(r2)
            replicates, per_episode = [], []
            for i, layer in enumerate(dm.source_layers):
                probe = _fit_source_layer(cfg, dm, layer)
                r2[i] = probe.results["test_r2"].numpy()
                r2w[i] = probe.results["test_r2_weighted"].numpy()
                sums = {k: v.numpy() for k, v in probe.results["episode_sums"].items()}
                ranked = np.argsort(-np.where(np.isfinite(r2[i]), r2[i], -np.inf), kind="stable")
                if boot is not None:
                    top = sorted(ranked[:BOOTSTRAP_TARGETS])
                    sub = restrict_targets(sums, len(dm.target_layers), top)
                    replicates.append(replicate_r2(sub, boot.weights(dm.test_episodes), len(top)))
                best = int(ranked[0])
                per_episode.append(np.clip(episode_r2(sums, len(dm.target_layers))[:, best], 0, None))
                if cfg.save_weights and cfg.probe == "affine" and seed == d.split_seeds[0]:
                    j = int(r2[i].argmax())
                    w = probe.weight.view(dm.d_in, len(dm.target_layers), dm.d_out)[:, j]
                    b = probe.bias.view(len(dm.target_layers), dm.d_out)[j]
                    key = f"{direction}/source_{layer}/target_{dm.target_layers[j]}"
                    weights[key + "/weight"] = w.float().contiguous()
                    weights[key + "/bias"] = b.float().contiguous()
                bar.update(1)
                # Trainer and probe reference each other; free this layer's ~300 MB of float64
                # statistics now instead of whenever the cyclic GC gets to it (big tensors do not
                # count towards its thresholds, so fits of many layers used to run out of memory).
                del probe
                gc.collect()
            if boot is not None:
                boot_sync.setdefault(seed, []).append(replicate_sync_r2(replicates))
            counts = dm.pairs.iloc[dm.index["test"]].groupby("episode_id").size()
            with warnings.catch_warnings(action="ignore", category=RuntimeWarning):
                episode_sync = np.nanmean(np.stack(per_episode), axis=0)
            episode_rows += [{"split_seed": seed, "direction": direction, "episode_id": e, "n_pairs": int(counts[e]), "sync_r2": float(v)}
                             for e, v in zip(dm.test_episodes, episode_sync)]
            per_direction.setdefault(direction, []).append(r2)
            per_direction_w.setdefault(direction, []).append(r2w)
            meta["n_train"].setdefault(direction, []).append(dm.n("train"))
            meta["n_test"].setdefault(direction, []).append(dm.n("test"))
            meta["splits"].setdefault(str(seed), {})[direction] = dm.split.ids(dm.pairs)
    if bar is None:
        raise NsyncError(f"no pairs in any direction: {'; '.join(skipped.values())}")
    bar.close()
    dm = fitted  # the last data module that had pairs (its models and layers describe the run)
    from nsync.results import _nan_to_none, plot_results, summarise_direction

    results: dict = {
        "probe": cfg.probe,
        "split": d.split,
        "lag": d.lag,
        "condition": d.condition,
        "target_condition": dm.target_condition,
        "control": d.control,
        "models": {"source": dm.source_model, "target": dm.target_model},
        "source_layers": dm.source_layers,
        "target_layers": dm.target_layers,
        "directions": {},
        "skipped_directions": skipped,
    }
    for direction, mats in per_direction.items():
        summary = summarise_direction(mats, dm.source_layers, dm.target_layers)
        summary["r2_variance_weighted"] = _nan_to_none(np.mean(per_direction_w[direction], 0).tolist())
        summary["n_train"] = meta["n_train"][direction]
        summary["n_test"] = meta["n_test"][direction]
        results["directions"][direction] = summary
    seeds_sync = np.mean([results["directions"][x]["sync_r2_per_seed"] for x in per_direction], axis=0)
    results["sync_r2"] = float(np.mean(seeds_sync))
    results["sync_r2_std"] = float(np.std(seeds_sync))
    results["sync_r2_unclipped"] = float(np.mean([results["directions"][x]["sync_r2_unclipped"] for x in per_direction]))
    if boot is not None:
        # Same aggregation as sync_r2: mean over directions, then over split seeds.
        run_replicates = np.mean([np.mean(v, axis=0) for v in boot_sync.values()], axis=0)
        np.save(out / "bootstrap.npy", run_replicates)
        results["sync_r2_ci95"] = interval(run_replicates)
        results["bootstrap"] = {"replicates": cfg.bootstrap, "unit": "episode", "file": "bootstrap.npy"}
    results["splits"] = meta["splits"]
    results["config"] = to_dict(cfg)
    results["seconds"] = time.perf_counter() - start
    if weights:
        save_file(weights, str(out / "weights.safetensors"))
    pd.DataFrame(episode_rows).to_csv(out / "episode_sync.csv", index=False)
    plots = plot_results(results, out)
    (out / "config.yaml").write_text(_yaml(cfg))
    tmp = out / ".results.json.tmp"
    tmp.write_text(json.dumps(results, indent=1))
    os.replace(tmp, out / "results.json")  # written last: its presence means the run is complete
    logger = _logger(cfg, out, group=f"{dm.source_model}__{dm.target_model}")
    if logger is not None:
        _log_wandb(logger, cfg, results, plots)
    return results


def _yaml(cfg: FitConfig) -> str:
    from nsync.config import to_yaml

    return to_yaml(cfg)


def _log_wandb(logger, cfg: FitConfig, results: dict, plots: list[Path]) -> None:
    import wandb

    logger.log_hyperparams(to_dict(cfg))
    run = logger.experiment
    for direction, d in results["directions"].items():
        key = direction.replace("->", "_to_")
        for layer, best in zip(results["source_layers"], d["best_r2_by_source_layer"]):
            if best is not None:
                run.log({f"r2_by_source_layer/{key}": best, "source_layer": layer})
        run.summary[f"sync_r2/{key}"] = d["sync_r2"]
    run.log({p.stem: wandb.Image(str(p)) for p in plots})
    run.summary["sync_r2"] = results["sync_r2"]
    run.summary["sync_r2_std"] = results["sync_r2_std"]
    run.summary["model_pair"] = f"{results['models']['source']}__{results['models']['target']}"
    logger.experiment.finish()


def main(argv: Sequence[str]) -> None:
    logging.basicConfig(level=logging.WARNING, format="%(message)s")
    cfg = load_config(FitConfig, argv, prog="nsync.fit")
    results = run_fit(cfg)
    ci = results.get("sync_r2_ci95")
    ci_text = f", 95% CI over episodes [{ci[0]:.4f}, {ci[1]:.4f}]" if ci else ""
    print(f"SyncR² {results['sync_r2']:.4f} ± {results['sync_r2_std']:.4f}{ci_text} ({cfg.probe} probe, {cfg.data.split} split, control {cfg.data.control}, "
          f"{len(cfg.data.split_seeds)} split seeds, {results['seconds']:.1f} s)")
    for direction, d in results["directions"].items():
        best = int(np.nanargmax(np.array(d["best_r2_by_source_layer"], dtype=float)))
        print(f"  {direction}: SyncR² {d['sync_r2']:.4f} ± {d['sync_r2_std']:.4f}, unclipped {d['sync_r2_unclipped']:.4f}, "
              f"best source layer {results['source_layers'][best]} -> {d['best_target_layer'][best]} "
              f"(R² {d['best_r2_by_source_layer'][best]:.4f}), n_train {d['n_train'][0]}, n_test {d['n_test'][0]}")
    print(f"wrote {resolve_out(cfg)}/results.json, plots and weights")
