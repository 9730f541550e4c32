"""Synchrony against social performance, across model pairs and across episodes.

Each fit run is one model pair: its SyncR² (``results.json``) meets the judge's scores of the
same cache (``CACHE/judge/JUDGE/scores.csv``). Across pairs: Pearson and Spearman correlations
with p-values and bootstrap intervals over pairs, and the partial correlation given a covariate
the user supplies per model (the paper used IFEval and MuSR scores). Across episodes: each test
episode's SyncR² (``episode_sync.csv``) against its social score, pooled over pairs.
"""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Optional

import numpy as np
import pandas as pd
from omegaconf import MISSING

from nsync.errors import NsyncError, configure_logging
from nsync.fit.results import FitResult
from nsync.fit.run_folder import RunFolder
from nsync.plotting import pyplot

log = logging.getLogger("nsync.analysis")


@dataclass
class AnalysisConfig:
    """Correlate synchrony with social performance over model pairs and episodes."""

    fits: list[str] = field(default=MISSING, metadata={"help": "fit run folders, one per model pair (each holds results.json)"})
    judge: str = field(default="smollm2-135m", metadata={"help": "judge name: scores are read from CACHE/judge/JUDGE/scores.csv of each fit's cache"})
    out: str = field(default=MISSING, metadata={"help": "folder for analysis.json, pairs.csv, episodes.csv and the scatter plots"})
    covariates: Optional[str] = field(default=None, metadata={"help": "CSV with a 'model' column and one column per covariate (e.g. ifeval, musr)"})
    covariate: Optional[str] = field(
        default=None, metadata={"help": "the covariate column for the partial correlation (a pair gets the mean of its two models)"}
    )
    bootstrap: int = field(default=2000, metadata={"help": "bootstrap replicates for the correlation intervals"})
    seed: int = field(default=0, metadata={"help": "bootstrap seed"})


def pair_table(fits: list[str], judge: str) -> tuple[pd.DataFrame, pd.DataFrame]:
    """(one row per model pair, one row per test episode and pair).

    A model pair is a cache: fits on the same cache (e.g. A's states -> B's and B's -> A's in a
    two-model cache) are averaged into the pair's SyncR², as the paper averages directions and
    orders; their bootstrap replicates are averaged too (one cache: the same replicate weights).
    """
    from nsync.stats.bootstrap import SYNC_R2_RANGE, interval  # here: --help imports no torch

    by_cache: dict[Path, list[tuple[RunFolder, FitResult]]] = {}
    for fit in map(RunFolder, fits):
        r = FitResult.load(fit.path)
        by_cache.setdefault(Path(r.fit_config().data.cache), []).append((fit, r))
    pairs, episodes = [], []
    for cache, runs in by_cache.items():
        scores_path = cache / "judge" / judge / "scores.csv"
        if not scores_path.is_file():
            raise NsyncError(f"no judge scores at {scores_path}; run python -m nsync.judge cache={cache} name={judge}")
        scores = pd.read_csv(scores_path)
        ok = scores[scores["status"] == "ok"]
        # The paper's per-episode score: the mean of the agents' overall scores (two in a dyad).
        per_run = ok.groupby(["run_id", "episode_id"])["overall"].mean().reset_index()
        per_episode = per_run.groupby("episode_id")["overall"].mean()
        models = sorted({m for _, r in runs for m in (r.models["source"], r.models["target"])})
        label = " x ".join(models) if len(models) > 1 else f"{models[0]} x {models[0]}"
        reps = [x for fit, _ in runs if (x := fit.read_bootstrap()) is not None]
        syncs = [r.sync_r2 for _, r in runs]
        ci = (
            interval(np.mean(reps, axis=0), float(np.mean(syncs)), bounds=SYNC_R2_RANGE)
            if len(reps) == len(runs) and len({len(x) for x in reps}) == 1
            else None
        )
        pairs.append(
            {
                "pair": label,
                "models": ",".join(models),
                "cache": str(cache),
                "fits": ",".join(str(f.path) for f, _ in runs),
                "sync_r2": float(np.mean(syncs)),
                "sync_r2_std": float(np.mean([r.sync_r2_std for _, r in runs])),
                "sync_r2_ci_low": ci[0] if ci else None,
                "sync_r2_ci_high": ci[1] if ci else None,
                "social": float(per_run["overall"].mean()) if len(per_run) else np.nan,
                "social_sem": float(per_run["overall"].std(ddof=1) / np.sqrt(len(per_run))) if len(per_run) > 1 else np.nan,
                "runs_judged": int(scores["run_id"].nunique()),
                "runs_failed": int(scores.loc[scores["status"] == "failed", "run_id"].nunique()),
            }
        )
        frames = [f for fit, _ in runs if (f := fit.read_episodes()) is not None and len(f)]
        if frames:
            ep = pd.concat(frames).groupby("episode_id")["sync_r2"].mean().reset_index()
            ep["social"] = ep["episode_id"].map(per_episode)
            ep["pair"] = label
            episodes.append(ep.dropna(subset=["social", "sync_r2"]))
    return pd.DataFrame(pairs), (pd.concat(episodes, ignore_index=True) if episodes else pd.DataFrame())


def correlations(x: np.ndarray, y: np.ndarray, n_boot: int = 2000, seed: int = 0) -> dict:
    """Pearson and Spearman with p-values and basic bootstrap intervals over the points.

    >>> c = correlations(np.arange(5.0), np.arange(5.0) ** 2, n_boot=200)
    >>> round(c["pearson"], 3), round(c["spearman"], 3)
    (0.959, 1.0)
    """
    from scipy import stats

    from nsync.stats.bootstrap import interval

    x, y = np.asarray(x, float), np.asarray(y, float)
    keep = np.isfinite(x) & np.isfinite(y)
    x, y = x[keep], y[keep]
    out: dict = {"n": int(len(x))}
    if len(x) < 3 or np.ptp(x) == 0 or np.ptp(y) == 0:
        return out | {"pearson": None, "spearman": None, "note": "needs at least 3 points that vary"}
    pr, sr = stats.pearsonr(x, y), stats.spearmanr(x, y)
    out |= {"pearson": float(pr.statistic), "pearson_p": float(pr.pvalue), "spearman": float(sr.statistic), "spearman_p": float(sr.pvalue)}
    rng = np.random.default_rng(seed)
    boots: dict[str, list[float]] = {"pearson": [], "spearman": []}
    for _ in range(n_boot):
        i = rng.integers(0, len(x), len(x))
        if np.ptp(x[i]) == 0 or np.ptp(y[i]) == 0:
            continue
        boots["pearson"].append(np.corrcoef(x[i], y[i])[0, 1])
        boots["spearman"].append(stats.spearmanr(x[i], y[i]).statistic)
    for k, v in boots.items():
        ci = interval(np.array(v), out[k], bounds=(-1.0, 1.0)) if v else None  # a correlation's range
        if ci is not None:
            out[f"{k}_ci95"] = list(ci)
    return out


def partial_correlation(x: np.ndarray, y: np.ndarray, z: np.ndarray) -> dict:
    """Pearson correlation of x and y after regressing both on z (with an intercept); the
    p-value uses n - 3 degrees of freedom.

    >>> z = np.arange(6.0); x = z + np.array([0, 1, 0, 1, 0, 1.]); y = 2 * z + np.array([0, 1, 0, 1, 0, 1.])
    >>> round(partial_correlation(x, y, z)["r"], 6)
    1.0
    """
    from scipy import stats

    x, y, z = (np.asarray(a, float) for a in (x, y, z))
    keep = np.isfinite(x) & np.isfinite(y) & np.isfinite(z)
    x, y, z = x[keep], y[keep], z[keep]
    if len(x) < 4:
        return {"n": int(len(x)), "r": None, "note": "needs at least 4 points"}
    design = np.column_stack([np.ones_like(z), z])
    rx = x - design @ np.linalg.lstsq(design, x, rcond=None)[0]
    ry = y - design @ np.linalg.lstsq(design, y, rcond=None)[0]
    if np.allclose(rx, 0) or np.allclose(ry, 0):
        return {"n": int(len(x)), "r": None, "note": "the covariate explains one variable entirely"}
    r = float(np.corrcoef(rx, ry)[0, 1])
    df = len(x) - 3
    t = r * np.sqrt(df / max(1 - r * r, 1e-300))
    return {"n": int(len(x)), "r": r, "p": float(2 * stats.t.sf(abs(t), df))}


def scatter(df: pd.DataFrame, x: str, y: str, label: str | None, path: Path, title: str) -> Path:
    """Scatter with the least-squares line."""
    plt = pyplot()

    fig, ax = plt.subplots(figsize=(5.5, 4.2))
    d = df.dropna(subset=[x, y])
    if label and label in d:
        for name, g in d.groupby(label):
            ax.scatter(g[x], g[y], s=30 if len(d) < 30 else 10, label=name, alpha=0.8)
        if d[label].nunique() <= 8:
            ax.legend(fontsize=7)
    else:
        ax.scatter(d[x], d[y], s=20)
    if len(d) >= 2 and np.ptp(d[x]) > 0:
        slope, intercept = np.polyfit(d[x], d[y], 1)
        xs = np.linspace(d[x].min(), d[x].max(), 50)
        ax.plot(xs, slope * xs + intercept, color="black", lw=1)
    ax.set_xlabel(x)
    ax.set_ylabel(y)
    ax.set_title(title, fontsize=9)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path


def plot_layers_by_pair(pairs: pd.DataFrame, path: Path) -> Path:
    """Best-target test R² by source layer for every model pair (mean over its fits and
    directions), against relative depth so models with different layer counts line up."""
    plt = pyplot()

    fig, ax = plt.subplots(figsize=(6.5, 4))
    for row in pairs.itertuples():
        curves = []
        for fit in row.fits.split(","):
            r = FitResult.load(fit)
            layers = np.array(r.source_layers, dtype=float)
            best = [d.r2_by_source_layer for d in r.directions.values()]
            curves.append((layers / max(layers.max(), 1), np.nanmean(best, axis=0)))
        depth = curves[0][0]
        same = all(len(c[0]) == len(depth) for c in curves)
        y = np.nanmean([c[1] for c in curves], axis=0) if same else curves[0][1]
        ax.plot(depth, y, marker="o", ms=3, label=f"{row.pair} (SyncR² {row.sync_r2:.3f})")
    ax.axhline(0, color="grey", lw=0.5)
    if min((min(np.asarray(line.get_ydata()), default=0) for line in ax.get_lines()), default=0) < -1:
        ax.set_yscale("symlog", linthresh=0.1)  # tiny test sets give huge negative R²; keep the top readable
    ax.set_xlabel("relative source layer depth (0 = embeddings)")
    ax.set_ylabel("test R² at the chosen target layer")
    ax.set_title("R² by layer per model pair")
    ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path


def analyse(cfg: AnalysisConfig) -> dict:
    out = Path(cfg.out)
    out.mkdir(parents=True, exist_ok=True)
    pairs, episodes = pair_table(cfg.fits, cfg.judge)
    result: dict = {"judge": cfg.judge, "pairs": pairs.to_dict("records")}
    result["across_pairs"] = correlations(pairs["sync_r2"], pairs["social"], cfg.bootstrap, cfg.seed)
    if cfg.covariates:
        cov = pd.read_csv(cfg.covariates)
        if cfg.covariate not in cov.columns or "model" not in cov.columns:
            raise NsyncError(f"{cfg.covariates} needs a 'model' column and the covariate column '{cfg.covariate}'")
        value = dict(zip(cov["model"], cov[cfg.covariate], strict=True))
        members = [m.split(",") * (2 // len(m.split(","))) for m in pairs["models"]]  # a self-pair counts its model twice
        missing = sorted({m for ms in members for m in ms if m not in value})
        if missing:
            raise NsyncError(f"{cfg.covariates} has no '{cfg.covariate}' for models {missing}")
        pairs[cfg.covariate] = [float(np.mean([value[m] for m in ms])) for ms in members]
        result["partial"] = {"covariate": cfg.covariate} | partial_correlation(pairs["sync_r2"], pairs["social"], pairs[cfg.covariate])
    if len(episodes):
        result["across_episodes"] = correlations(episodes["sync_r2"], episodes["social"], cfg.bootstrap, cfg.seed)
        episodes.to_csv(out / "episodes.csv", index=False)
        scatter(episodes, "sync_r2", "social", "pair", out / "episodes_sync_vs_social.png", "per test episode (pooled over pairs)")
    pairs.to_csv(out / "pairs.csv", index=False)
    c = result["across_pairs"]
    title = f"model pairs: Pearson r = {c['pearson']:.2f}" if c.get("pearson") is not None else "model pairs"
    scatter(pairs, "sync_r2", "social", "pair", out / "sync_vs_social.png", title)
    plot_layers_by_pair(pairs, out / "r2_by_layer_pairs.png")
    (out / "analysis.json").write_text(json.dumps(result, indent=1, default=float))
    return result


def main(argv: Sequence[str]) -> None:
    from nsync.config import load_config

    configure_logging(info=None)
    cfg = load_config(AnalysisConfig, argv, prog="nsync analysis")
    start = time.perf_counter()
    result = analyse(cfg)
    for p in result["pairs"]:
        print(f"  {p['pair']}: SyncR² {p['sync_r2']:.4f}, social {p['social']:.2f} ({p['runs_judged']} runs, {p['runs_failed']} failed)")
    for key in ("across_pairs", "across_episodes"):
        c = result.get(key)
        if c and c.get("pearson") is not None:
            print(f"{key}: n {c['n']}, Pearson {c['pearson']:.3f} (p {c['pearson_p']:.3g}), Spearman {c['spearman']:.3f} (p {c['spearman_p']:.3g})")
        elif c:
            print(f"{key}: n {c['n']}: {c.get('note')}")
    if "partial" in result and result["partial"].get("r") is not None:
        print(f"partial (given {result['partial']['covariate']}): r {result['partial']['r']:.3f} (p {result['partial']['p']:.3g})")
    print(f"done in {time.perf_counter() - start:.1f} s; wrote {cfg.out}/analysis.json, pairs.csv, sync_vs_social.png")
