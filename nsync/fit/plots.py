"""The plots of a fit run: best-target R² by source layer, the layer profile by relative depth,
one heatmap per direction, and (with agent-pair directions) the agents' SyncR² matrix."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd

from nsync.fit.results import FitResult, layer_profile

#: Heatmaps clip R² below this floor (stated on the colour bar): one cell at -7 would otherwise
#: set the scale and hide everything between 0 and 0.5.
HEATMAP_FLOOR = -0.1


def _ticks(ax, axis: str, names: list[str], max_ticks: int = 16) -> None:
    """Label an axis with layer names, at most ``max_ticks`` of them."""
    step = max(1, int(np.ceil(len(names) / max_ticks)))
    positions = list(range(0, len(names), step))
    labels = [names[i] for i in positions]
    if axis == "x":
        ax.set_xticks(positions, labels, rotation=60, ha="right", fontsize=7)
    else:
        ax.set_yticks(positions, labels, fontsize=7)


def plot_results(result: FitResult, out: Path) -> list[Path]:
    """``r2_by_layer.png`` and ``heatmap_<direction>.png``; returns their paths."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    paths = []
    src_names, tgt_names = result.source_layer_names, result.target_layer_names
    x = np.arange(len(src_names))
    fig, ax = plt.subplots(figsize=(7, 4.2))
    for direction, d in result.directions.items():
        mean = d.r2_matrix
        std = np.array(d.r2_std, dtype=float)
        best = np.where(np.isfinite(mean), mean, -np.inf).argmax(1)
        y = mean[x, best]
        e = std[x, best]
        ax.plot(x, y, marker="o", ms=3, label=f"{direction} (SyncR² {d.sync_r2:.3f})")
        ax.fill_between(x, y - e, y + e, alpha=0.2)
    ax.axhline(0, color="grey", lw=0.5)
    _ticks(ax, "x", src_names)
    ax.set_xlabel("source layer")
    ax.set_ylabel("best-target test R²")
    ax.set_title(f"{result.models['source']} -> {result.models['target']}: {result.probe} probe, {result.split} split", fontsize=9)
    ax.legend(fontsize=8)
    fig.tight_layout()
    paths.append(out / "r2_by_layer.png")
    fig.savefig(paths[-1], dpi=120)
    plt.close(fig)
    paths.append(plot_layer_profile({f"{result.models['source']} -> {result.models['target']}": result}, out / "layer_profile.png"))
    for direction, d in result.directions.items():
        r2 = d.r2_matrix
        finite = r2[np.isfinite(r2)]
        top = max(float(finite.max()) if finite.size else 0.0, 0.05)
        fig, ax = plt.subplots(figsize=(6, 5))
        im = ax.imshow(np.clip(r2, HEATMAP_FLOOR, None), origin="lower", aspect="auto", cmap="viridis", vmin=HEATMAP_FLOOR, vmax=top,
                       interpolation="nearest")
        fig.colorbar(im, ax=ax, extend="min", label=f"test R² (below {HEATMAP_FLOOR} drawn as {HEATMAP_FLOOR})")
        _ticks(ax, "x", tgt_names)
        _ticks(ax, "y", src_names)
        ax.set_xlabel("target layer")
        ax.set_ylabel("source layer")
        ax.set_title(f"{direction}: test R², mean over split seeds (white: undefined)", fontsize=9)
        fig.tight_layout()
        paths.append(out / ("heatmap_" + direction.replace("->", "_to_") + ".png"))
        fig.savefig(paths[-1], dpi=120)
        plt.close(fig)
    matrix = result.agent_matrix()
    if matrix.notna().sum().sum() >= 2:
        paths.append(plot_agent_matrix(result, out / "agent_pairs.png"))
    return paths


def plot_agent_matrix(result: FitResult, path: Path) -> Path:
    """SyncR² of every ordered agent pair (source agent -> target agent) as an N x N heatmap,
    each cell labelled; the average over pairs in the title."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    matrix = result.agent_matrix().to_numpy()
    n = len(matrix)
    fig, ax = plt.subplots(figsize=(1.3 * n + 2.2, 1.1 * n + 1.6))
    top = max(float(np.nanmax(matrix)), 0.05)
    im = ax.imshow(matrix, cmap="viridis", vmin=0, vmax=top)
    for i in range(n):
        for j in range(n):
            text = "" if i == j else ("n/a" if not np.isfinite(matrix[i, j]) else f"{matrix[i, j]:.3f}")
            ax.text(j, i, text, ha="center", va="center", fontsize=9, color="white" if np.isfinite(matrix[i, j]) and matrix[i, j] < top / 2 else "black")
    ax.set_xticks(range(n), [f"agent {j}" for j in range(n)])
    ax.set_yticks(range(n), [f"agent {i}" for i in range(n)])
    ax.set_xlabel("target (next utterance of)")
    ax.set_ylabel("source (utterance of)")
    fig.colorbar(im, ax=ax, label="SyncR²")
    ax.set_title(f"SyncR² per ordered pair (lag {result.lag}); mean over pairs {result.sync_r2:.3f}", fontsize=9)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return Path(path)


def plot_layer_profile(results: dict[str, "FitResult | pd.DataFrame"], path: Path) -> Path:
    """Best-target R² (and that target's depth) against the source layer's relative depth, one
    line per run and direction: models of different depths on one axis. A run is its
    ``FitResult`` or its ``layer_profile`` table (what a report kept of it)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (ax_r2, ax_depth) = plt.subplots(1, 2, figsize=(10, 3.8))
    for label, result in results.items():
        profile = result if isinstance(result, pd.DataFrame) else layer_profile(result)
        for direction, rows in profile.groupby("direction", sort=False):
            name = f"{label} {direction}"
            ax_r2.plot(rows["source_depth"], rows["best_r2"], marker="o", ms=3, label=name)
            ax_depth.plot(rows["source_depth"], rows["best_target_depth"], marker="o", ms=3, label=name)
    ax_r2.axhline(0, color="grey", lw=0.5)
    ax_r2.set_xlabel("source layer, relative depth (0 embedding, 1 last block)")
    ax_r2.set_ylabel("best-target test R²")
    ax_depth.plot([0, 1], [0, 1], color="grey", lw=0.5, ls="--")
    ax_depth.set_xlabel("source layer, relative depth")
    ax_depth.set_ylabel("best target layer, relative depth")
    ax_r2.legend(fontsize=7)
    fig.suptitle("Layer profile (mean over split seeds)", fontsize=9)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return Path(path)
