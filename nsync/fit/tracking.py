"""W&B for a fit run: one ``WandbLogger`` made before fitting and handed to every Trainer (so the
MLP's curves reach it), and the run's summary, R² table and plots logged at the end."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np

from nsync.config import to_dict
from nsync.fit.config import FitConfig
from nsync.fit.results import FitResult


def make_logger(cfg: FitConfig, out: Path, model_pair: str):
    """A ``WandbLogger`` grouped by model pair, offline unless a key is set; None with ``logger.kind=none``."""
    if cfg.logger.kind == "none":
        return None
    from lightning.pytorch.loggers import WandbLogger

    offline, settings = _wandb_mode(cfg)
    logger = WandbLogger(
        project=cfg.logger.project, group=model_pair, name=out.name, save_dir=str(out), offline=offline, job_type=cfg.probe, settings=settings
    )
    logger.log_hyperparams(to_dict(cfg))
    return logger


def _wandb_mode(cfg: FitConfig):
    """Offline unless asked or a key is set; quiet by default, through this run's settings (not the
    process environment): a WANDB_SILENT the user set is theirs to keep."""
    import wandb

    offline = cfg.logger.mode == "offline" or (cfg.logger.mode == "auto" and not os.environ.get("WANDB_API_KEY"))
    return offline, wandb.Settings() if "WANDB_SILENT" in os.environ else wandb.Settings(silent=True)


def log_sweep_summary(cfg: FitConfig, name: str, folder: Path, table, plot: Path | None) -> str | None:
    """A finished sweep's summary (one row per grid point) as a W&B run of its own in the points'
    project (job type ``sweep_summary``), with its plot; None with ``logger.kind=none``, else
    the run's folder."""
    if cfg.logger.kind == "none":
        return None
    import wandb

    offline, settings = _wandb_mode(cfg)
    run = wandb.init(
        project=cfg.logger.project, name=name, job_type="sweep_summary", dir=str(folder), mode="offline" if offline else "online", settings=settings
    )
    try:
        run.log({"sweep_summary": wandb.Table(dataframe=table.astype(str))} | ({"sweep_summary_plot": wandb.Image(str(plot))} if plot else {}))
        return str(run.dir)
    finally:
        run.finish()


def log_result(logger, result: FitResult, plots: list[Path]) -> None:
    """Per-layer R² against the source layer as step, the R² matrix as a table, plots and summary."""
    import wandb

    run = logger.experiment
    run.define_metric("source_layer")
    run.define_metric("r2_by_source_layer/*", step_metric="source_layer")
    for direction, d in result.directions.items():
        key = direction.replace("->", "_to_")
        for layer, best in zip(result.source_layers, d.r2_by_source_layer.tolist(), strict=True):
            if np.isfinite(best):
                run.log({f"r2_by_source_layer/{key}": best, "source_layer": layer})
        run.summary[f"sync_r2/{key}"] = d.sync_r2
        if d.sync_r2_ci95:
            run.summary[f"sync_r2_ci95_low/{key}"], run.summary[f"sync_r2_ci95_high/{key}"] = d.sync_r2_ci95
        if d.time_course is not None:
            run.log(
                {
                    f"time_course/{key}": wandb.Table(
                        columns=["utterance", "n_pairs", "sync_r2"],
                        data=[[u, n, v] for u, n, v in zip(d.time_course.utterance, d.time_course.n_pairs, d.time_course.value, strict=True)],
                    )
                }
            )
        if d.sync_r2_p_value is not None:
            run.summary[f"sync_r2_p_value/{key}"] = d.sync_r2_p_value
    columns: list[str | int] = [
        "direction",
        "source_layer",
        "source_name",
        "target_layer",
        "target_name",
        "r2",
        "r2_std",
        "alpha",
    ]  # wandb.Table's type
    rows = []
    for direction, d in result.directions.items():
        for i, (sl, sn) in enumerate(zip(result.source_layers, result.source_layer_names, strict=True)):
            for j, (tl, tn) in enumerate(zip(result.target_layers, result.target_layer_names, strict=True)):
                alpha = d.alpha[0][i][j] if d.alpha else None
                rows.append([direction, sl, sn, tl, tn, d.r2[i][j], d.r2_std[i][j], alpha])
    run.log({"r2_matrix": wandb.Table(columns=columns, data=rows), **{p.stem: wandb.Image(str(p)) for p in plots}})
    run.summary["sync_r2_headline"] = result.headline()  # as the console, the report and README write it
    if result.few_test_episodes:  # the intervals and p-values below are logged, but do not hold their nominal rates
        run.summary["few_test_episodes"] = result.few_test_episodes
    run.summary["sync_r2"] = result.sync_r2
    run.summary["sync_r2_std"] = result.sync_r2_std
    if result.sync_r2_bias_corrected is not None:
        run.summary["sync_r2_bias_corrected"] = result.sync_r2_bias_corrected
    if result.sync_r2_ci95:
        run.summary["sync_r2_ci95_low"], run.summary["sync_r2_ci95_high"] = result.sync_r2_ci95
    run.summary["model_pair"] = f"{result.models['source']}__{result.models['target']}"
    if result.sync_r2_p_value is not None:
        run.summary["sync_r2_p_value"] = result.sync_r2_p_value
    if result.partition:
        log_partition(run, result)
    log_what_is_synchronised(run, result)
    run.finish()


def log_what_is_synchronised(run, result: FitResult) -> None:
    """The communication subspace (SyncR² by rank as a table, the dimensionality, its interval and
    the alignment in the summary, per direction too) and who leads (each pair of opposite
    directions' difference with its interval)."""
    import wandb

    views = {"": result.subspace} | {f"/{d.replace('->', '_to_')}": r.subspace for d, r in result.directions.items()}
    for suffix, s in views.items():
        if s is None:
            continue
        run.summary[f"subspace/dimensionality{suffix}"] = s.dimensionality
        if s.dimensionality_ci95:
            run.summary[f"subspace/dimensionality_ci95_low{suffix}"], run.summary[f"subspace/dimensionality_ci95_high{suffix}"] = (
                s.dimensionality_ci95
            )
        if s.alignment is not None:
            run.summary[f"subspace/alignment{suffix}"], run.summary[f"subspace/random_alignment{suffix}"] = s.alignment, s.random_alignment
        for name, value in s.tracks.items():
            run.summary[f"subspace/tracks/{name}{suffix}"] = value
        run.log(
            {
                f"subspace/sync_r2_by_rank{suffix}": wandb.Table(
                    columns=["rank", "sync_r2"], data=[list(r) for r in zip(s.ranks, s.sync_r2_by_rank, strict=True)]
                )
            }
        )
    pairs = [("asymmetry", a) for a in result.asymmetry]
    pairs += [(f"partition/{name}/unique_asymmetry", a) for name, p in result.partition.items() for a in p.unique_asymmetry]
    for prefix, a in pairs:
        key = f"{prefix}/{a.first.replace('->', '_to_')}_minus_{a.second.replace('->', '_to_')}"
        run.summary[key] = a.difference
        if a.ci95:
            run.summary[f"{key}_ci95_low"], run.summary[f"{key}_ci95_high"] = a.ci95
        run.summary[f"{key}_leader"] = a.leader or "none"


def log_partition(run, result: FitResult) -> None:
    """The variance partition: each baseline's shares (and intervals) in the summary, the unique
    share per source layer as a series, and every cell's five R² figures as a table."""
    import wandb

    run.define_metric("unique_by_source_layer/*", step_metric="source_layer")
    rows = []
    for name, summary in result.partition.items():
        if summary.unique_p_value is not None:
            run.summary[f"partition/{name}/unique_p_value"] = summary.unique_p_value
        for quantity, value in summary.values.items():
            run.summary[f"partition/{name}/{quantity}"] = value
            ci = summary.ci95.get(quantity)
            if ci:
                run.summary[f"partition/{name}/{quantity}_ci95_low"], run.summary[f"partition/{name}/{quantity}_ci95_high"] = ci
        for direction, d in result.directions.items():
            p = d.partition[name]
            dkey = direction.replace("->", "_to_")
            key = f"partition/{name}/{dkey}"
            run.summary[f"{key}/unique"] = p.values["unique"]
            if (ci := p.ci95.get("unique")) is not None:
                run.summary[f"{key}/unique_ci95_low"], run.summary[f"{key}/unique_ci95_high"] = ci
            if p.unique_p_value is not None:
                run.summary[f"{key}/unique_p_value"] = p.unique_p_value
            for layer, value in zip(result.source_layers, p.by_source_layer["unique"], strict=True):
                if value is not None:
                    run.log({f"unique_by_source_layer/{name}/{dkey}": value, "source_layer": layer})
            for i, sl in enumerate(result.source_layers):
                for j, tl in enumerate(result.target_layers):
                    rows.append([direction, name, sl, tl, d.r2[i][j], p.r2_baseline[i][j], p.r2_joint[i][j], p.unique[i][j], p.shared[i][j]])
    columns: list[str | int] = ["direction", "baseline", "source_layer", "target_layer", "r2_source", "r2_baseline", "r2_joint", "unique", "shared"]
    run.log({"partition_matrix": wandb.Table(columns=columns, data=rows)})
