"""SyncR² and the result files of a fit run (``results.json`` and plots)."""

from __future__ import annotations

from pathlib import Path

import numpy as np


def sync_r2(r2: np.ndarray, clip: bool = True) -> float:
    """The paper's SyncR² of one direction: per source layer the best target layer's test R²,
    negatives clipped to 0 (unless ``clip=False``), averaged over source layers.

    >>> sync_r2(np.array([[0.2, 0.5], [-0.3, -0.1]]))
    0.25
    >>> sync_r2(np.array([[0.2, 0.5], [-0.3, -0.1]]), clip=False)
    0.2
    """
    best = _row_max(r2)
    if clip:
        best = np.clip(best, 0.0, None)
    return float(np.nanmean(best))


def _row_max(r2: np.ndarray) -> np.ndarray:
    """Best value per row, ignoring NaN (targets with no variance); NaN for an all-NaN row."""
    out = np.full(r2.shape[0], np.nan)
    for i, row in enumerate(r2):
        if np.isfinite(row).any():
            out[i] = np.nanmax(row)
    return out


def _nan_to_none(x):
    if isinstance(x, list):
        return [_nan_to_none(v) for v in x]
    return None if isinstance(x, float) and not np.isfinite(x) else x


def same_layer_r2(r2: np.ndarray, source_layers: list[int], target_layers: list[int]) -> float | None:
    """Mean R² of the pairs whose source and target layer have the same index (the diagonal)."""
    common = [(source_layers.index(l), target_layers.index(l)) for l in source_layers if l in target_layers]
    if not common:
        return None
    values = np.array([r2[i, j] for i, j in common], dtype=float)
    return float(np.nanmean(values)) if np.isfinite(values).any() else None


def summarise_direction(per_seed: list[np.ndarray], source_layers: list[int], target_layers: list[int]) -> dict:
    """Mean and std over split seeds of the R² matrix and the derived figures of one direction."""
    stack = np.stack(per_seed)  # [seeds, source, target]
    mean = stack.mean(0)
    syncs = [sync_r2(m) for m in stack]
    unclipped = [sync_r2(m, clip=False) for m in stack]
    same = [same_layer_r2(m, source_layers, target_layers) for m in stack]
    filled = np.where(np.isfinite(mean), mean, -np.inf)
    return {
        "r2": _nan_to_none(mean.tolist()),
        "r2_std": _nan_to_none(stack.std(0).tolist()),
        "sync_r2": float(np.mean(syncs)),
        "sync_r2_std": float(np.std(syncs)),
        "sync_r2_per_seed": syncs,
        "sync_r2_unclipped": float(np.mean(unclipped)),
        "same_layer_r2": None if any(x is None for x in same) else float(np.mean(same)),
        "best_target_layer": [target_layers[j] for j in filled.argmax(1)],
        "best_r2_by_source_layer": _nan_to_none(_row_max(mean).tolist()),
    }


def plot_results(results: dict, out: Path) -> list[Path]:
    """R² by source layer (all directions) and one source x target heatmap per direction."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    paths = []
    src, tgt = results["source_layers"], results["target_layers"]
    fig, ax = plt.subplots(figsize=(7, 4))
    for direction, d in results["directions"].items():
        mean = np.array(d["r2"], dtype=float)
        std = np.array(d["r2_std"], dtype=float)
        best = np.where(np.isfinite(mean), mean, -np.inf).argmax(1)
        y = mean[np.arange(len(src)), best]
        e = std[np.arange(len(src)), best]
        ax.plot(src, y, marker="o", ms=3, label=f"{direction} (SyncR² {d['sync_r2']:.3f})")
        ax.fill_between(src, y - e, y + e, alpha=0.2)
    ax.axhline(0, color="grey", lw=0.5)
    ax.set_xlabel("source layer (0 = embeddings)")
    ax.set_ylabel("best-target test R²")
    ax.set_title(f"{results['models']['source']} -> {results['models']['target']}: {results['probe']} probe, {results['split']} split")
    ax.legend()
    fig.tight_layout()
    paths.append(out / "r2_by_layer.png")
    fig.savefig(paths[-1], dpi=120)
    plt.close(fig)
    for direction, d in results["directions"].items():
        fig, ax = plt.subplots(figsize=(5.5, 4.5))
        im = ax.imshow(np.array(d["r2"], dtype=float), origin="lower", aspect="auto", cmap="viridis",
                       extent=(tgt[0] - 0.5, tgt[-1] + 0.5, src[0] - 0.5, src[-1] + 0.5))
        fig.colorbar(im, ax=ax, label="test R²")
        ax.set_xlabel("target layer")
        ax.set_ylabel("source layer")
        ax.set_title(f"{direction}: test R² (mean over split seeds)")
        fig.tight_layout()
        name = "heatmap_" + direction.replace("->", "_to_") + ".png"
        paths.append(out / name)
        fig.savefig(paths[-1], dpi=120)
        plt.close(fig)
    return paths
