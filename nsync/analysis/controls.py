"""Run every control on one cache and summarise it next to the main condition.

Each control is the main fit with a few config switches (:data:`CONTROLS`); its run folder
holds the same ``results.json``, plots and W&B run as any fit. The summary puts each control's
SyncR² beside the main condition's, with the difference and its 95% paired bootstrap interval
over episodes (both runs share the cache's replicate weights, see :mod:`nsync.stats.bootstrap`).
"""

from __future__ import annotations

import dataclasses
import logging
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Optional

import numpy as np
import pandas as pd
from omegaconf import MISSING

from nsync.data.pairs import DIRECTIONS
from nsync.errors import NsyncError, configure_logging
from nsync.fit.config import FitConfig
from nsync.fit.results import FitResult
from nsync.fit.run_folder import RunFolder
from nsync.plotting import pyplot

log = logging.getLogger("nsync.controls")

#: name -> (what it tests, the fit config switches). ``{model}`` is the main source model,
#: ``{embedder}`` the text embedder; lags come from ``ControlsConfig.lags``.
CONTROLS: dict[str, tuple[str, list[str]]] = {
    "main": ("the partner's next state (t -> t+1), interactive", []),
    "observer": ("no engagement: a passive re-reader's states as sources (the paper's)", ["data.condition=observer"]),
    "cross_interaction": ("targets from another run (seed) of the same episode", ["data.pairing=cross_interaction"]),
    "shuffled_partner": ("targets from another episode, same utterance index", ["data.pairing=shuffled_partner"]),
    "context": (
        "what the conversation's shape explains (utterance index, prompt length, last replies' lengths) removed from both sides",
        ["data.remove_context=true"],
    ),
    "self": (
        "the source agent's own next state (t -> t+2 in a dyad): a reference, not a bound (the partner's next prompt ends with "
        "the source's utterance; the source's own has the partner's reply in between)",
        ["data.lag=2", "data.target_model={model}"],
    ),
    "same_time": ("the partner reading the same history (t -> t)", ["data.pairing=same_time"]),
    "untrained": (
        "an untrained copy of the model re-reading the same prompts",
        [
            "data.source_model={model}@untrained",
            "data.target_model={model}@untrained",
            "data.condition=teacher_forced",
            "data.target_condition=teacher_forced",
        ],
    ),
    "text_only": (
        "a sentence embedding of the source utterance and history as the source",
        ["data.source_model=text:{embedder}", "data.condition=teacher_forced"],
    ),
}


@dataclass
class ControlsConfig:
    """Run the main fit and every control on one activation cache."""

    cache: str = field(default=MISSING, metadata={"help": "activation cache folder"})
    out: str = field(default=MISSING, metadata={"help": "folder for one run folder per control and the summary"})
    fit_config: Optional[str] = field(default=None, metadata={"help": "fit YAML for the probe settings of every run (default: nsync.fit's defaults)"})
    fit_overrides: list[str] = field(default_factory=list, metadata={"help": "key=value overrides of every fit, e.g. [data.split_seeds=[0]]"})
    controls: list[str] = field(default_factory=lambda: list(CONTROLS), metadata={"help": f"controls to run, of {list(CONTROLS)}"})
    lags: list[int] = field(default_factory=lambda: [1, 3, 5], metadata={"help": "lags of the temporal-proximity curve (1 is the main condition)"})
    reread: bool = field(default=True, metadata={"help": "add the untrained and text states with nsync.reread when the cache lacks them"})
    text_embedder: str = field(default="all-minilm-l6-v2", metadata={"help": "text embedder of the text-only baseline"})
    untrained_seed: int = field(default=0, metadata={"help": "seed of the untrained copy's weights"})
    device: str = field(default="cpu", metadata={"help": "device for re-reading"})
    overwrite: bool = field(
        default=False, metadata={"help": "refit every control (default: re-use a results.json fitted with the same config on the same cache content)"}
    )

    def __post_init__(self) -> None:
        unknown = [c for c in self.controls if c not in CONTROLS]
        if unknown:
            raise NsyncError(f"unknown controls {unknown}; choose from {list(CONTROLS)}")
        if any(k < 1 for k in self.lags):
            raise NsyncError(f"lags must be at least 1, got {self.lags}")


def plan(cfg: ControlsConfig, model: str) -> dict[str, list[str]]:
    """Run name -> fit overrides, main first, then lags, then the other controls."""
    runs: dict[str, list[str]] = {"main": []}
    for k in cfg.lags:
        if k != 1:
            runs[f"lag_{k}"] = [f"data.lag={k}"]
    for name in cfg.controls:
        if name != "main":
            runs[name] = [o.format(model=model, embedder=cfg.text_embedder) for o in CONTROLS[name][1]]
    return runs


def _prepare_rereads(cfg: ControlsConfig, model: str) -> dict[str, str]:
    """Add the untrained/text states the planned controls need; return control -> why skipped."""
    from nsync.cache import ActivationCache
    from nsync.simulation.reread import RereadConfig, reread

    skipped = {}
    turns = ActivationCache.open(cfg.cache).turns
    runs = set(turns.loc[turns["condition"] == "interactive", "run_id"])

    def complete(name: str) -> bool:
        """Every run re-read: a re-read killed half-way is continued (``reread`` skips finished runs)."""
        return runs <= set(turns.loc[(turns["model"] == name) & (turns["condition"] == "teacher_forced"), "run_id"])

    wanted: dict[str, tuple[str, dict[str, Any]]] = {
        "untrained": (f"{model}@untrained", dict(kind="untrained", model=model, init_seed=cfg.untrained_seed)),
        "text_only": (f"text:{cfg.text_embedder}", dict(kind="text", model=cfg.text_embedder)),
    }
    for control, (name, kwargs) in wanted.items():
        if control not in cfg.controls or complete(name):
            continue
        if not cfg.reread:
            skipped[control] = f"the cache has no '{name}' states (reread=false)"
            continue
        try:
            reread(RereadConfig(cache=cfg.cache, device=cfg.device, **kwargs))
        except NsyncError as err:
            skipped[control] = str(err)
    return skipped


def run_controls(cfg: ControlsConfig) -> pd.DataFrame:
    """Fit every planned run (re-using finished ones) and write the summary; return its table."""
    from nsync.cache import ActivationCache
    from nsync.config import load_config
    from nsync.fit.loop import reusable_result, run_fit  # here: --help imports no torch

    out = Path(cfg.out)
    out.mkdir(parents=True, exist_ok=True)
    base = (["--config", cfg.fit_config] if cfg.fit_config else []) + list(cfg.fit_overrides)
    probe_cfg = load_config(FitConfig, [*base, f"out={out / 'main'}", f"data.cache={cfg.cache}"], prog="nsync fit")
    cache = ActivationCache.open(cfg.cache)
    model = probe_cfg.data.source_model or cache.simulated_models[0]
    skipped = _prepare_rereads(cfg, model)
    runs = plan(cfg, model)
    results: dict[str, FitResult] = {}
    for i, (name, overrides) in enumerate(runs.items()):
        if name in skipped:
            continue
        run_dir = out / name
        fit_cfg = load_config(
            FitConfig, [*base, *overrides, f"out={run_dir}", f"data.cache={cfg.cache}", f"overwrite={cfg.overwrite}"], prog="nsync fit"
        )
        stored = reusable_result(fit_cfg)
        if stored is not None:
            results[name] = stored
            print(f"[{i + 1}/{len(runs)}] {name}: re-using {run_dir}/results.json (same config and cache)")
            continue
        print(f"[{i + 1}/{len(runs)}] {name}: {' '.join(overrides) or '(main condition)'}")
        fit_cfg = dataclasses.replace(fit_cfg, overwrite=True)
        try:
            results[name] = run_fit(fit_cfg)
        except NsyncError as err:
            if name == "main":
                raise
            skipped[name] = str(err)
            print(f"  skipped: {err}")
    if "main" not in results:
        raise NsyncError("the main condition did not run")
    table = summarise(results, out, skipped)
    write_summary(table, results, out)
    return table


def main_beside_shuffled(cache: str | Path, out: str | Path, fit_config: str, overwrite: bool = False) -> pd.DataFrame:
    """The first look of the quickstart and the groups demo: the main condition and the
    shuffled-partner control at lag 1, no re-reads; the summary table indexed by control."""
    cfg = ControlsConfig(
        cache=str(cache), out=str(out), fit_config=fit_config, controls=["main", "shuffled_partner"], lags=[1], reread=False, overwrite=overwrite
    )
    return run_controls(cfg).set_index("control")


def _replicates(name: str, result: FitResult, out: Path) -> np.ndarray | None:
    if result.bootstrap is None:
        return None
    return RunFolder(out / name).read_bootstrap()


def check_same_draws(first: FitResult, second: FitResult, names: tuple[str, str]) -> None:
    """Raise a clear error unless both runs drew the same episode-keyed replicates (the scheme
    that pairs by episode, the same count and seed)."""
    from nsync.stats import bootstrap as boot

    if first.bootstrap is None or second.bootstrap is None:
        raise NsyncError(f"{names[0] if first.bootstrap is None else names[1]} has no bootstrap replicates (fit with bootstrap > 0)")
    a, b = first.bootstrap, second.bootstrap
    if (a.scheme, a.replicates, a.seed) != (b.scheme, b.replicates, b.seed) or a.scheme != boot.SCHEME:
        raise NsyncError(
            f"{names[1]}'s replicates ({b.scheme}, {b.replicates}, seed {b.seed}) do not pair with {names[0]}'s ({a.scheme}, "
            f"{a.replicates}, seed {a.seed}); refit both with this nsync and the same bootstrap setting"
        )


def check_paired(main: FitResult, other: FitResult, name: str = "the control") -> None:
    """Raise a clear error unless ``other``'s bootstrap replicates pair with ``main``'s episode by
    episode: the same replicate scheme, count and seed, and for every (split seed, direction) both
    fitted, the same test episodes (a control that lost episodes, or another split, cannot pair)."""
    check_same_draws(main, other, ("main", name))
    if not any(d in other.splits.get(seed, {}) for seed, directions in main.splits.items() for d in directions):
        raise NsyncError(f"{name} shares no (split seed, direction) with main: nothing to pair")
    for seed, directions in main.splits.items():
        for direction, ids in directions.items():
            theirs = other.splits.get(seed, {}).get(direction)
            if theirs is None:
                continue
            mine, their = set(ids["test"]["episodes"]), set(theirs["test"]["episodes"])
            if mine != their:
                lost, extra = sorted(mine - their), sorted(their - mine)
                raise NsyncError(
                    f"{name}'s test episodes differ from main's (split seed {seed}, {direction}: {len(lost)} of main's missing"
                    f"{' e.g. ' + ', '.join(lost[:3]) if lost else ''}, {len(extra)} others); a paired difference needs the "
                    "same test episodes"
                )


def summarise(results: dict[str, FitResult], out: Path, skipped: dict[str, str] | None = None) -> pd.DataFrame:
    """One row per run: SyncR² (± std over split seeds, 95% CI over episodes), per direction, and
    the difference from the main condition with its 95% bootstrap interval paired by test episode
    (``unpaired`` says why a run has none: see :func:`check_paired`)."""
    from nsync.stats.bootstrap import DIFFERENCE_RANGE, bias_corrected, interval

    main = results["main"]
    main_reps = _replicates("main", main, out)
    rows = []
    for name, r in results.items():
        reps = _replicates(name, r, out)
        unpaired = None
        try:
            check_paired(main, r, name)
            if reps is None or main_reps is None:
                raise NsyncError(f"bootstrap replicates of {name} or main are missing from {out}")
        except NsyncError as err:
            unpaired = str(err)
        paired = unpaired is None
        diff = reps - main_reps if paired and reps is not None and main_reps is not None else None  # paired: both present
        diff_ci = interval(diff, r.sync_r2 - main.sync_r2, bounds=DIFFERENCE_RANGE) if diff is not None else None
        ci = r.sync_r2_ci95 or (None, None)
        few = r.few_test_episodes or main.few_test_episodes
        if few:  # intervals that would not hold their 95%: the table says why instead
            ci, diff_ci = (None, None), None
        row = {
            "control": name,
            "sync_r2": r.sync_r2,
            "sync_r2_std": r.sync_r2_std,
            "sync_r2_unclipped": r.sync_r2_unclipped,
            "sync_r2_bias_corrected": None if few else r.sync_r2_bias_corrected,  # the bootstrap's, as its interval
            "diff_bias_corrected": bias_corrected(r.sync_r2 - main.sync_r2, diff, bounds=DIFFERENCE_RANGE) if diff is not None and not few else None,
            "ci95_low": ci[0],
            "ci95_high": ci[1],
            "diff_vs_main": r.sync_r2 - main.sync_r2,
            "diff_ci95_low": diff_ci[0] if diff_ci else None,
            "diff_ci95_high": diff_ci[1] if diff_ci else None,
            "lag": r.lag,
            "source": f"{r.models['source']}/{r.condition}",
            "target": f"{r.models['target']}/{r.target_condition}",
            "pairing": r.pairing,
            "unpaired": None if name == "main" else unpaired,
            "few_test_episodes": few,
        }
        for direction, d in r.directions.items():
            row[f"sync_r2_{direction}"] = d.sync_r2
            row[f"n_test_{direction}"] = int(np.mean(d.n_test))
        rows.append(row)
    for name, why in (skipped or {}).items():
        rows.append({"control": name, "skipped": why})
    return pd.DataFrame(rows)


def write_summary(table: pd.DataFrame, results: dict[str, FitResult], out: Path) -> list[Path]:
    """controls.csv, controls.md, controls.png (grouped bars) and lag_curve.png."""
    table.to_csv(out / "controls.csv", index=False)
    (out / "controls.md").write_text(markdown_table(table) + "\n" + read_controls(table) + "\n")
    paths = [out / "controls.csv", out / "controls.md", plot_controls(table, out / "controls.png")]
    lag_runs = {r.lag: (n, r) for n, r in results.items() if n == "main" or n.startswith("lag_")}
    if len(lag_runs) > 1:
        paths.append(plot_lag_curve(table, lag_runs, out / "lag_curve.png"))
    return paths


def _fmt(x, digits: int = 3) -> str:
    return "" if x is None or (isinstance(x, float) and not np.isfinite(x)) else f"{x:.{digits}f}"


def markdown_table(table: pd.DataFrame) -> str:
    """The summary as a Markdown table (skipped controls listed below it)."""
    done = table[table["sync_r2"].notna()] if "sync_r2" in table else table.iloc[0:0]
    # Each interval stands beside the bias-corrected value it is centred on; the raw SyncR² follows.
    lines = [
        "| control | SyncR², bias-corrected | 95% CI (episodes) | Δ vs main, bias-corrected | 95% CI of Δ | SyncR² (raw) "
        "| ± std (split seeds) | A->B | B->A | unclipped |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in done.to_dict("records"):
        main = r["control"] == "main"
        ci = f"[{_fmt(r['ci95_low'])}, {_fmt(r['ci95_high'])}]" if r.get("ci95_low") is not None else ""
        dci = f"[{_fmt(r['diff_ci95_low'])}, {_fmt(r['diff_ci95_high'])}]" if r.get("diff_ci95_low") is not None and not main else ""
        lines.append(
            f"| {r['control']} | {_fmt(r.get('sync_r2_bias_corrected'))} | {ci} | "
            f"{'' if main else _fmt(r.get('diff_bias_corrected'))} | {dci} | {_fmt(r['sync_r2'])} | {_fmt(r['sync_r2_std'])} | "
            f"{_fmt(r.get('sync_r2_A->B'))} | {_fmt(r.get('sync_r2_B->A'))} | {_fmt(r.get('sync_r2_unclipped'))} |"
        )
    if "unpaired" in table:
        for r in table[table["unpaired"].notna()].to_dict("records"):
            lines.append(f"\nunpaired {r['control']}: {r['unpaired']}")
    if "skipped" in table:
        for r in table[table["skipped"].notna()].to_dict("records"):
            lines.append(f"\nskipped {r['control']}: {r['skipped']}")
    if "few_test_episodes" in table:
        for r in table[table["few_test_episodes"].notna()].to_dict("records"):
            lines.append(f"\nno interval for {r['control']}: {r['few_test_episodes']}")
    return "\n".join(lines) + "\n"


def read_controls(table: pd.DataFrame) -> str:
    """The summary in words: which controls the main condition stands above (the paired 95%
    interval of control minus main lies wholly below 0), which it cannot be told from (the
    interval holds 0) and which give more than it (wholly above 0).

    >>> table = pd.DataFrame([{"control": "main", "sync_r2": 0.3},
    ...     {"control": "observer", "sync_r2": 0.2, "diff_bias_corrected": -0.1, "diff_ci95_low": -0.15, "diff_ci95_high": -0.05}])
    >>> read_controls(table)
    'The main condition stands above observer (Δ -0.100 [-0.150, -0.050]).'
    """
    groups: dict[str, list[str]] = {"main_above": [], "same": [], "control_above": [], "unpaired": [], "few": []}
    few_note = ""
    done = table[table["sync_r2"].notna()] if "sync_r2" in table else table.iloc[0:0]
    for r in done.to_dict("records"):
        if r["control"] == "main":
            continue
        lo, hi = r.get("diff_ci95_low"), r.get("diff_ci95_high")
        if isinstance(r.get("few_test_episodes"), str):
            groups["few"].append(r["control"])
            few_note = r["few_test_episodes"]
            continue
        if lo is None or hi is None or pd.isna(lo) or pd.isna(hi):
            groups["unpaired"].append(r["control"])
            continue
        delta = r.get("diff_bias_corrected")
        delta = r.get("diff_vs_main") if delta is None or pd.isna(delta) else delta
        text = f"{r['control']} (Δ {_fmt(delta)} [{_fmt(lo)}, {_fmt(hi)}])"
        groups["main_above" if hi < 0 else "control_above" if lo > 0 else "same"].append(text)
    parts = []
    if groups["main_above"]:
        parts.append("The main condition stands above " + ", ".join(groups["main_above"]) + ".")
    if groups["same"]:
        parts.append("It cannot be told apart from " + ", ".join(groups["same"]) + " (the interval of the difference holds 0).")
    if groups["control_above"]:
        parts.append("These give more than the main condition: " + ", ".join(groups["control_above"]) + ".")
    if groups["unpaired"]:
        parts.append(
            "No paired interval for " + ", ".join(groups["unpaired"]) + " (test episodes or bootstrap replicates not shared "
            "with the main run; the reasons are below the table)."
        )
    if groups["few"]:
        parts.append(f"Not read for {', '.join(groups['few'])}: {few_note}.")
    return " ".join(parts)


def plot_controls(table: pd.DataFrame, path: Path) -> Path:
    """Grouped bars: per run, SyncR² of each dyad direction and of both (with its 95% CI); with agent-pair
    directions, the mean over pairs only."""
    plt = pyplot()

    done = table[table["sync_r2"].notna()].reset_index(drop=True)
    directions = [d for d in DIRECTIONS if f"sync_r2_{d}" in done.columns]
    mean_label = "both" if directions else "mean over pairs"
    series = [(mean_label, "sync_r2")] + [(d, f"sync_r2_{d}") for d in directions]
    width = 0.8 / len(series)
    x = np.arange(len(done))
    fig, ax = plt.subplots(figsize=(max(6, 1.1 * len(done)), 4))
    for j, (label, col) in enumerate(series):
        y = done[col].astype(float).to_numpy()
        err = None
        if label == mean_label and done["ci95_low"].notna().any():
            y = done["sync_r2_bias_corrected"].astype(float).to_numpy()  # the intervals' centre
            lo = done["ci95_low"].astype(float).to_numpy()
            hi = done["ci95_high"].astype(float).to_numpy()
            err = np.nan_to_num(np.stack([y - lo, hi - y]).clip(min=0))
        ax.bar(x + (j - (len(series) - 1) / 2) * width, y, width, yerr=err, capsize=3, label=label)
    ax.set_xticks(x, done["control"], rotation=30, ha="right")
    ax.set_ylabel("SyncR²")
    ax.axhline(0, color="grey", lw=0.5)
    ax.set_title("SyncR² by control (both: bias-corrected, 95% bootstrap interval over episodes)")
    ax.legend(title="direction")
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path


def plot_lag_curve(table: pd.DataFrame, lag_runs: dict[int, tuple[str, FitResult]], path: Path) -> Path:
    """SyncR² against the lag k (partner's utterance t+k), with 95% intervals over episodes."""
    plt = pyplot()

    by_name = table.set_index("control")
    ks = sorted(lag_runs)
    names = [lag_runs[k][0] for k in ks]
    y = by_name.loc[names, "sync_r2"].astype(float).to_numpy()
    lo = by_name.loc[names, "ci95_low"].astype(float).to_numpy()
    hi = by_name.loc[names, "ci95_high"].astype(float).to_numpy()
    fig, ax = plt.subplots(figsize=(5, 3.5))
    ax.errorbar(ks, y, yerr=np.nan_to_num(np.stack([y - lo, hi - y]).clip(min=0)), marker="o", capsize=3)
    ax.set_xticks(ks)
    ax.set_xlabel("lag k (target: utterance t + k)")
    ax.set_ylabel("SyncR²")
    ax.set_title("Temporal proximity")
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path


def main(argv: Sequence[str]) -> None:
    from nsync.config import load_config

    configure_logging(info=None)
    cfg = load_config(ControlsConfig, argv, prog="nsync controls")
    start = time.perf_counter()
    table = run_controls(cfg)
    print(markdown_table(table))
    print(read_controls(table))
    print(
        f"{len(table)} runs in {time.perf_counter() - start:.1f} s; wrote {cfg.out}/controls.md, controls.csv, controls.png "
        f"and one run folder per control"
    )
