"""The CPU study's figures (layer profile, controls, heatmap, the partition's unique shares and
time course), drawn from each view's plot numbers, live or from the record."""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import pandas as pd


def draw(docs: Path, record: dict, found: dict) -> tuple[list[Path], list[str]]:
    """The PNGs from each view's plot numbers (live or recorded), and lines that say what they show."""
    from nsync.plotting import pyplot

    plt = pyplot()

    from nsync.fit.plots import plot_layer_profile

    docs.mkdir(parents=True, exist_ok=True)
    paths, captions = [], []
    profiles = {label: pd.DataFrame(v["layer_profile"]) for label, v in found.items() if v.get("layer_profile")}
    if profiles:
        paths.append(plot_layer_profile(profiles, docs / "layer_profile.png"))
    missing = [label for label in found if label not in profiles]
    if missing:
        captions.append(f"No layer profile for {', '.join(missing)}: their record kept the tables and readings, "
                        "not the per-layer numbers; running the pair again adds them.")
    if found:
        fig, ax = plt.subplots(figsize=(11, 3.8))
        width = 0.8 / len(found)
        for j, (label, v) in enumerate(found.items()):
            table = pd.DataFrame(v["controls"])
            x = np.arange(len(table))
            y = table["sync_r2_bias_corrected"].astype(float).to_numpy()  # the intervals' centre
            lo, hi = table["ci95_low"].astype(float).to_numpy(), table["ci95_high"].astype(float).to_numpy()
            err = np.nan_to_num(np.stack([y - lo, hi - y]).clip(min=0))
            ax.bar(x + (j - (len(found) - 1) / 2) * width, y, width, yerr=err, capsize=3, label=label)
            ax.set_xticks(x, table["control"], rotation=30, ha="right")
        ax.axhline(0, color="grey", lw=0.5)
        ax.set_ylabel("SyncR², bias-corrected (chosen alpha)")
        ax.set_title("Main condition and controls, 95% basic bootstrap intervals over test episodes", fontsize=9)
        ax.legend(fontsize=8, loc="upper left", bbox_to_anchor=(1.0, 1.0))  # beside the bars, not over them
        fig.tight_layout()
        paths.append(docs / "controls.png")
        fig.savefig(paths[-1], dpi=110)
        plt.close(fig)
        # the first view's main-condition heatmap; a recorded view's copy is the one already under docs
        first = next(iter(found))
        heatmap, live = docs / "heatmap.png", found[first].get("heatmap")
        if live is not None:
            shutil.copy(live, heatmap)
            record["heatmap_view"] = first
        if live is not None or (record.get("heatmap_view") == first and heatmap.is_file()):
            paths.append(heatmap)
            captions.append(f"heatmap.png: test R² by source and target layer, {first}, main condition, chosen alpha.")
    paths += _partition_plots(docs, found)
    return paths, captions


def _partition_plots(docs: Path, found: dict) -> list[Path]:
    """unique_profile.png (one panel per baseline: the unique share by source layer depth, a line
    per view and direction) and time_course.png (one panel per view), from the views' numbers."""
    from nsync.plotting import pyplot

    plt = pyplot()

    from nsync.fit.plots import save_figure

    paths = []
    profiles = {label: pd.DataFrame(v["unique_profile"]) for label, v in found.items() if v.get("unique_profile")}
    if profiles:
        baselines = list(dict.fromkeys(b for table in profiles.values() for b in table["baseline"]))
        fig, axes = plt.subplots(1, len(baselines), figsize=(4.2 * len(baselines), 3.6), squeeze=False)
        for ax, baseline in zip(axes[0], baselines):
            for label, table in profiles.items():
                for direction, rows in table[table["baseline"] == baseline].groupby("direction", sort=False):
                    ax.plot(rows["source_depth"], rows["unique"].astype(float), marker="o", ms=3, label=f"{label} {direction}")
            ax.axhline(0, color="grey", lw=0.5)
            ax.set_title(f"unique share beyond {baseline}", fontsize=8)
            ax.set_xlabel("source layer, relative depth")
            ax.legend(fontsize=6)
        axes[0][0].set_ylabel("test R², joint - baseline, chosen target")
        paths.append(save_figure(fig, docs / "unique_profile.png"))
    courses = {label: pd.DataFrame(v["time_course"]) for label, v in found.items() if v.get("time_course")}
    if courses:
        fig, axes = plt.subplots(1, len(courses), figsize=(4.6 * len(courses), 3.6), squeeze=False)
        for ax, (label, table) in zip(axes[0], courses.items()):
            for (direction, series), rows in table.groupby(["direction", "series"], sort=False):
                line = ax.plot(rows["utterance"], rows["value"].astype(float), marker="o", ms=3, ls="-" if series == "SyncR²" else "--",
                               label=f"{direction} {series}")[0]
                if rows["low"].notna().all():
                    ax.fill_between(rows["utterance"], rows["low"].astype(float), rows["high"].astype(float), alpha=0.12, color=line.get_color())
            ax.axhline(0, color="grey", lw=0.5)
            ax.set_title(label, fontsize=8)
            ax.set_xlabel("source utterance index")
            ax.legend(fontsize=6)
        axes[0][0].set_ylabel("test R² at the chosen targets")
        paths.append(save_figure(fig, docs / "time_course.png"))
    return paths
