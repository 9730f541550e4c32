"""The plots of a fit run: R² at the chosen target by source layer, the layer profile by relative
depth, one heatmap per direction, and (with agent-pair directions) the agents' SyncR² matrix;
with a variance partition, a unique-share heatmap per baseline and direction and ``partition.png``."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd

from nsync.fit.results import FitResult, layer_profile, modal_target
from nsync.plotting import pyplot

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
    plt = pyplot()

    paths = []
    src_names = result.source_layer_names
    x = np.arange(len(src_names))
    fig, ax = plt.subplots(figsize=(7, 4.2))
    for direction, d in result.directions.items():
        y = d.r2_by_source_layer
        e = np.array(d.r2_std, dtype=float)[x, np.array([modal_target(d, int(i), result.target_layers) for i in x])]
        ax.plot(x, y, marker="o", ms=3, label=f"{direction} (SyncR² {d.sync_r2:.3f})")
        ax.fill_between(x, y - e, y + e, alpha=0.2)
    ax.axhline(0, color="grey", lw=0.5)
    _ticks(ax, "x", src_names)
    ax.set_xlabel("source layer")
    ax.set_ylabel(f"test R² at the target chosen on {result.target_choice}")
    ax.set_title(f"{result.models['source']} -> {result.models['target']}: {result.probe} probe, {result.split} split", fontsize=9)
    ax.legend(fontsize=8)
    paths.append(save_figure(fig, out / "r2_by_layer.png"))
    paths.append(plot_layer_profile({f"{result.models['source']} -> {result.models['target']}": result}, out / "layer_profile.png"))
    for direction, d in result.directions.items():
        name = direction.replace("->", "_to_")
        paths.append(
            _heatmap(d.r2_matrix, result, f"{direction}: test R², mean over split seeds (white: undefined)", "test R²", out / f"heatmap_{name}.png")
        )
        for baseline, p in d.partition.items():
            paths.append(
                _heatmap(
                    np.array(p.unique, dtype=float),
                    result,
                    f"{direction}: unique share beyond {baseline} (joint - baseline)",
                    "unique share",
                    out / f"heatmap_unique_{_safe(baseline)}_{name}.png",
                )
            )
    if result.partition:
        paths.append(plot_partition(result, out / "partition.png"))
    if any(d.time_course is not None for d in result.directions.values()):
        paths.append(plot_time_course(result, out / "time_course.png"))
    if result.subspace is not None:
        paths.append(plot_subspace(result, out / "subspace.png"))
    matrix = result.agent_matrix()
    if matrix.notna().sum().sum() >= 2:
        paths.append(plot_agent_matrix(result, out / "agent_pairs.png"))
    return paths


def save_figure(fig, path: Path) -> Path:
    """Lay out, write (120 dpi) and close a figure; returns its path."""
    plt = pyplot()

    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return Path(path)


def _safe(name: str) -> str:
    """A baseline's name as a file name part.

    >>> _safe("observer+text:all-minilm-l6-v2")
    'observer+text-all-minilm-l6-v2'
    """
    return "".join(c if c.isalnum() or c in "+-_." else "-" for c in name)


def _heatmap(matrix: np.ndarray, result: FitResult, title: str, label: str, path: Path) -> Path:
    """A source x target layer heatmap, values below :data:`HEATMAP_FLOOR` drawn at the floor."""
    plt = pyplot()

    finite = matrix[np.isfinite(matrix)]
    top = max(float(finite.max()) if finite.size else 0.0, 0.05)
    fig, ax = plt.subplots(figsize=(6, 5))
    im = ax.imshow(
        np.clip(matrix, HEATMAP_FLOOR, None), origin="lower", aspect="auto", cmap="viridis", vmin=HEATMAP_FLOOR, vmax=top, interpolation="nearest"
    )
    fig.colorbar(im, ax=ax, extend="min", label=f"{label} (below {HEATMAP_FLOOR} drawn as {HEATMAP_FLOOR})")
    _ticks(ax, "x", result.target_layer_names)
    _ticks(ax, "y", result.source_layer_names)
    ax.set_xlabel("target layer")
    ax.set_ylabel("source layer")
    ax.set_title(title, fontsize=9)
    return save_figure(fig, path)


def plot_partition(result: FitResult, path: Path) -> Path:
    """One panel per baseline: by the source layer's relative depth, the test R² of the source
    alone, the baseline alone and both, and the source's unique share, at each source layer's
    chosen target (mean over split seeds), per direction; the unique SyncR² and its interval in
    the panel's title."""
    plt = pyplot()

    names = list(result.partition)
    fig, axes = plt.subplots(1, len(names), figsize=(4.6 * len(names), 3.8), squeeze=False)
    styles = {"source": ":", "baseline": "--", "joint": "-.", "unique": "-"}
    for ax, name in zip(axes[0], names, strict=True):
        for direction, d in result.directions.items():
            p = d.partition[name]
            for q, style in styles.items():
                ax.plot(
                    result.source_depth,
                    np.array(p.by_source_layer[q], dtype=float),
                    ls=style,
                    marker="o" if q == "unique" else None,
                    ms=3,
                    lw=2 if q == "unique" else 1,
                    label=f"{direction} {q}",
                )
        s = result.partition[name]
        ci = None if result.few_test_episodes else s.ci95.get("unique")  # too few test episodes: no interval shown
        ax.axhline(0, color="grey", lw=0.5)
        unique = s.values.get("unique")
        ax.set_title(
            f"beyond {name}: unique SyncR² " + ("n/a" if unique is None else f"{unique:.3f}") + (f" [{ci[0]:.3f}, {ci[1]:.3f}]" if ci else ""),
            fontsize=8,
        )
        ax.set_xlabel("source layer, relative depth")
        ax.set_ylabel("test R² at the chosen target")
        ax.legend(fontsize=6)
    return save_figure(fig, path)


def plot_time_course(result: FitResult, path: Path) -> Path:
    """SyncR² (solid) and each baseline's unique share (dashed) by source utterance index, per
    direction, with 95% intervals over episodes: does synchrony grow as a conversation goes on?"""
    plt = pyplot()

    fig, ax = plt.subplots(figsize=(7, 4.2))

    def draw(course, label: str, style: str) -> None:
        u = np.array(course.utterance)
        y = np.array(course.value, dtype=float)
        line = ax.plot(u, y, ls=style, marker="o", ms=3, label=label)[0]
        if all(c is not None for c in course.ci95) and not result.few_test_episodes:
            lo, hi = np.array([c[0] for c in course.ci95]), np.array([c[1] for c in course.ci95])
            ax.fill_between(u, lo, hi, alpha=0.15, color=line.get_color())

    for direction, d in result.directions.items():
        if d.time_course is not None:
            draw(d.time_course, f"{direction} SyncR²", "-")
        for name, p in d.partition.items():
            if p.time_course is not None:
                draw(p.time_course, f"{direction} unique beyond {name}", "--")
    ax.axhline(0, color="grey", lw=0.5)
    ax.set_xlabel("source utterance index")
    ax.set_ylabel("test R² at the chosen targets (per index)")
    ax.set_title(f"{result.models['source']} -> {result.models['target']}: time course (95% intervals over episodes)", fontsize=9)
    ax.legend(fontsize=7)
    return save_figure(fig, path)


def plot_agent_matrix(result: FitResult, path: Path) -> Path:
    """SyncR² of every ordered agent pair (source agent -> target agent) as an N x N heatmap,
    each cell labelled; the average over pairs in the title."""
    plt = pyplot()

    matrix = result.agent_matrix().to_numpy()
    n = len(matrix)
    fig, ax = plt.subplots(figsize=(1.3 * n + 2.2, 1.1 * n + 1.6))
    top = max(float(np.nanmax(matrix)), 0.05)
    im = ax.imshow(matrix, cmap="viridis", vmin=0, vmax=top)
    for i in range(n):
        for j in range(n):
            text = "" if i == j else ("n/a" if not np.isfinite(matrix[i, j]) else f"{matrix[i, j]:.3f}")
            ax.text(
                j, i, text, ha="center", va="center", fontsize=9, color="white" if np.isfinite(matrix[i, j]) and matrix[i, j] < top / 2 else "black"
            )
    ax.set_xticks(range(n), [f"agent {j}" for j in range(n)])
    ax.set_yticks(range(n), [f"agent {i}" for i in range(n)])
    ax.set_xlabel("target (next utterance of)")
    ax.set_ylabel("source (utterance of)")
    fig.colorbar(im, ax=ax, label="SyncR²")
    ax.set_title(f"SyncR² per ordered pair (lag {result.lag}); mean over pairs {result.sync_r2:.3f}", fontsize=9)
    return save_figure(fig, path)


def plot_layer_profile(results: dict[str, FitResult | pd.DataFrame], path: Path) -> Path:
    """Best-target R² (and that target's depth) against the source layer's relative depth, one
    line per run and direction: models of different depths on one axis. A run is its
    ``FitResult`` or its ``layer_profile`` table (what a report kept of it)."""
    plt = pyplot()

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
    return save_figure(fig, path)


def plot_subspace(result: FitResult, path: Path) -> Path:
    """SyncR² of the reduced-rank maps against their rank, per direction and pooled (with its 95%
    interval where the fit has enough test episodes), the dimensionality marked."""
    plt = pyplot()
    fig, ax = plt.subplots(figsize=(6, 3.6))
    curves = {f"{d} (dimensionality {r.subspace.dimensionality})": r.subspace for d, r in result.directions.items() if r.subspace is not None}
    assert result.subspace is not None
    curves[f"mean over directions (dimensionality {result.subspace.dimensionality})"] = result.subspace
    for label, s in curves.items():
        x = np.arange(len(s.ranks))
        y = np.array(s.sync_r2_by_rank, dtype=float)
        ax.plot(x, y, marker="o", ms=3, label=label)
        bands = [c for c in s.sync_r2_by_rank_ci95 or [] if c is not None]
        if len(bands) == len(s.ranks) and not result.few_test_episodes:
            ax.fill_between(x, [c[0] for c in bands], [c[1] for c in bands], alpha=0.2)
        if s.dimensionality is not None:
            ax.axvline(s.ranks.index(s.dimensionality), color=ax.lines[-1].get_color(), lw=0.8, ls=":")
    ranks = result.subspace.ranks
    ax.set_xticks(np.arange(len(ranks)), [str(r) if r != ranks[-1] or len(ranks) == ranks[-1] else f"full ({r})" for r in ranks], fontsize=7)
    ax.set_xlabel("rank of the map (reduced-rank regression on the fitted probe)")
    ax.set_ylabel("SyncR²")
    ax.set_title(f"communication subspace: dimensionality = smallest rank with {result.subspace.share:.0%} of the full map's SyncR²", fontsize=8)
    ax.legend(fontsize=7)
    return save_figure(fig, path)
