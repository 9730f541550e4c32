"""The CPU study: synchrony of the bundled models with every control, on a 2-core CPU.

    python experiments/cpu_study/study.py                      # everything in study.yaml (make study)
    python experiments/cpu_study/study.py only=[smollm2-135m]  # one pair
    python experiments/cpu_study/study.py report_only=true     # rewrite the report from what is done

For each model pair of ``study.yaml``:

1. simulate SOTOPIA episodes (two sampling seeds each; observer states) into ``OUT/<pair>/cache``;
2. for each view (source model -> target model; a two-model pair has both, each its one direction): every control
   (``nsync.controls``) with the paper's fixed alpha and with the alpha chosen on validation data,
   each with its basic bootstrap interval, the paired difference from the main condition and CKA;
3. the main condition under the persona and scenario splits (the leakage question);
4. affine vs MLP probe on every k-th source layer (the "why linear" question);

then ``docs/cpu_study/`` gets ``results.md`` (a page of the documentation site), ``controls.png``,
``layer_profile.png``, ``heatmap.png`` and the partition's plots.

Every stage is resumable: caches continue where they stopped, finished fits (a run folder with
``results.json``) are re-used, so an interrupted study picks up where it was. The caches and fit
folders stay on the machine that made them (``runs/`` is not committed); ``docs/cpu_study/record.json``
(committed) keeps each finished pair's section, the numbers its plots need and its stage times, so
a pair run on another machine, or whose ``runs/`` folder is gone, stays in the report.
"""

from __future__ import annotations

import dataclasses
import json
import shutil
import signal
import sys
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd

from nsync.cache.layout import write_json_atomic
from nsync.config import load_config
from nsync.errors import NsyncError, run_cli

HERE = Path(__file__).parent
TIMING_FLUSH_S = 60.0  # how often a running stage writes its time so far
RECORD = "record.json"  # under docs: each finished pair's report, kept when runs/ is not


@dataclass
class PairConfig:
    name: str = field(default="", metadata={"help": "folder name of the pair"})
    models: list[str] = field(default_factory=list, metadata={"help": "one model (self-pair) or two (agent A's, agent B's)"})
    episodes: int = field(default=60, metadata={"help": "episodes (each run once per sampling seed)"})
    min_train_pairs: int = field(default=500, metadata={"help": "training pairs per direction the pair needs (warned about when short)"})
    simulate: list[str] = field(default_factory=list, metadata={"help": "nsync.simulate overrides for this pair only (e.g. capture.dtype=float32)"})
    fit: list[str] = field(default_factory=list, metadata={"help": "nsync.fit overrides for this pair's fits only (e.g. data.test_size=0.34)"})
    alpha_grid: list[float] = field(default_factory=list, metadata={"help": "this pair's alpha grid (empty: the study's); ridge alpha scales with the states' variance"})


@dataclass
class StudyConfig:
    """The CPU study's settings (see study.yaml)."""

    out: str = field(default="runs/cpu_study", metadata={"help": "folder for caches and fit runs"})
    docs: str = field(default="docs/cpu_study", metadata={"help": "folder for results.md and the PNGs"})
    sotopia: str = field(default="../shared/data/sotopia", metadata={"help": "SOTOPIA export; the built-in pack when absent"})
    simulate_config: str = field(default=str(HERE / "simulate.yaml"), metadata={"help": "simulation settings shared by every pair"})
    pairs: list[PairConfig] = field(default_factory=list, metadata={"help": "model pairs: name, models, episodes, min_train_pairs"})
    only: list[str] = field(default_factory=list, metadata={"help": "run only these pairs (empty: all)"})
    report_only: bool = field(default=False, metadata={"help": "write the report from finished stages, run nothing"})
    split_seeds: list[int] = field(default_factory=lambda: [0, 1, 2], metadata={"help": "split seeds of every fit"})
    bootstrap: int = field(default=1000, metadata={"help": "bootstrap replicates over test episodes"})
    paper_alpha: float = field(default=0.1, metadata={"help": "the paper's fixed ridge alpha"})
    alpha_grid: list[float] = field(default_factory=lambda: [0.1, 1.0, 10.0, 100.0, 1000.0, 10000.0, 100000.0], metadata={"help": "alphas chosen from on validation data"})
    controls: list[str] = field(default_factory=list, metadata={"help": "nsync.controls to run"})
    lags: list[int] = field(default_factory=lambda: [1, 3], metadata={"help": "lags of the temporal curve"})
    splits: list[str] = field(default_factory=lambda: ["persona", "scenario"], metadata={"help": "splits besides interaction"})
    mlp_source_layer_step: int = field(default=5, metadata={"help": "every k-th source layer for the affine vs MLP comparison"})
    partition: list[str] = field(default_factory=list, metadata={"help": "baselines of the variance partition fitted for every view with the alpha grid (nsync.fit partition.baselines; empty: none)"})
    partition_layer_step: int = field(default=1, metadata={"help": "the partition on every k-th source layer (data.source_layer_step): its joint fits cost several times the source's alone"})
    exclude_flags: list[str] = field(default_factory=list, metadata={"help": "also fit the main condition without pairs whose replies carry these flags (data.exclude_flags; empty: no such fit)"})


def _name(model: str) -> str:
    return model.replace("/", "__").replace("@", "_")


def views(models: list[str]) -> list[tuple[str, str, list[str]]]:
    """(source model, target model, directions) of a pair's fits: a self-pair's both directions in
    one fit; a two-model pair both ways, each way its one direction (the study simulates a pair in
    one order, agent 0 playing ``models[0]``).

    >>> views(["a", "b"])
    [('a', 'b', ['A->B']), ('b', 'a', ['B->A'])]
    """
    a, b = (models + models)[:2]
    return [(a, a, ["A->B", "B->A"])] if a == b else [(a, b, ["A->B"]), (b, a, ["B->A"])]


def _train_pairs(result) -> float:
    """Training pairs per direction of a fit, mean over directions and split seeds."""
    return float(np.mean([np.mean(d.n_train) for d in result.directions.values()]))


def _pair_budget(result) -> int:
    """``data.max_pairs`` that gives an interaction split as many training pairs as ``result`` had."""
    return int(round(_train_pairs(result) / (1 - result.config["data"]["test_size"])))  # n_train counts validation pairs too


class Study:
    def __init__(self, cfg: StudyConfig):
        self.cfg = cfg
        self.out = Path(cfg.out)
        self.timing_file = self.out / "timings.json"
        self.timings: dict[str, float] = self._read_timings()

    def _timed(self, key: str, fn, *args):
        """``fn(*args)``, its wall time added to ``timings.json`` even when it is interrupted: at the
        end (also on Ctrl-C or SIGTERM) and every ``TIMING_FLUSH_S`` seconds while it runs, so a
        SIGKILL (a session's end) loses at most that much and the study's total counts the work
        that resumed runs re-use."""
        start = time.perf_counter()
        base = self._read_timings().get(key, 0.0)
        stop = threading.Event()

        def flush_while_running() -> None:
            while not stop.wait(TIMING_FLUSH_S):
                self._record(key, base + time.perf_counter() - start)

        flusher = threading.Thread(target=flush_while_running, daemon=True)
        flusher.start()
        try:
            return fn(*args)
        finally:
            stop.set()
            flusher.join()
            self._record(key, base + time.perf_counter() - start)

    def _read_timings(self) -> dict[str, float]:
        # re-read each time: another study process (only=[...]) may have added its stages meanwhile
        return json.loads(self.timing_file.read_text()) if self.timing_file.is_file() else {}

    def _record(self, key: str, seconds: float) -> None:
        self.timings = {**self._read_timings(), key: seconds}
        self.out.mkdir(parents=True, exist_ok=True)
        write_json_atomic(self.timing_file, self.timings)

    # -- stages ------------------------------------------------------------------------------

    def simulate(self, name: str, pair: PairConfig) -> Path:
        from nsync.cache import ActivationCache, describe_reply_flags
        from nsync.simulation.config import SimulateConfig
        from nsync.simulation.run import simulate

        source = self.cfg.sotopia if Path(self.cfg.sotopia).is_dir() else "builtin"
        if source == "builtin":
            print(f"  {self.cfg.sotopia} not found: simulating the built-in episodes instead")
        args = ["--config", self.cfg.simulate_config, f"models=[{','.join(pair.models)}]", f"scenarios.source={source}",
                f"scenarios.limit={pair.episodes}", f"out={self.out / name / 'cache'}", *pair.simulate]
        out, stats = simulate(load_config(SimulateConfig, args, prog="nsync.simulate"))
        print(f"  {stats.line()}")
        quality = ActivationCache.open(out).quality()
        print(f"  pairs at lag 1 per direction: {quality['pairs_lag1']}")
        print(f"  replies: {describe_reply_flags(quality)}")
        return out

    def fits(self, name: str, pair: PairConfig, cache: Path, stage: str) -> None:
        """The fits of one pair: ``stage="answer"`` the controls at the chosen alpha, the variance
        partition and the fit without flagged replies; ``stage="rest"`` the paper's alpha, the
        held-out splits and the probe comparison."""
        from nsync.analysis.controls import ControlsConfig, run_controls
        from nsync.fit import FitConfig, FitResult, reusable_result, run_fit

        seeds = ",".join(str(s) for s in self.cfg.split_seeds)
        grid = ",".join(str(a) for a in pair.alpha_grid or self.cfg.alpha_grid)
        for source, target, directions in views(pair.models):
            folder = self.out / name / _name(source)
            common = [f"data.source_model={source}", f"data.target_model={target}", f"data.directions=[{','.join(directions)}]",
                      f"data.split_seeds=[{seeds}]",
                      f"bootstrap={self.cfg.bootstrap}", "logger.kind=none", "save_weights=false", *pair.fit]
            def controls(alpha_name: str, alphas: str) -> None:
                print(f"  {source} -> {target}: controls, {alpha_name} ({alphas})")
                cfg = ControlsConfig(cache=str(cache), out=str(folder / f"controls_{alpha_name}"),
                                     fit_overrides=[*common, f"affine.alphas=[{alphas}]"],
                                     controls=list(self.cfg.controls), lags=list(self.cfg.lags))
                self._timed(f"{name}/fit", run_controls, cfg)

            # The study's answer first for every pair (controls, the partition, the fit without flagged
            # replies), so a study stopped early still has it; the paper's alpha, splits and probes after.
            first, later = {}, {}
            if self.cfg.partition:  # after the controls, which add the text states a baseline may read
                first["partition"] = [f"affine.alphas=[{grid}]", f"partition.baselines=[{','.join(self.cfg.partition)}]",
                                      f"data.source_layer_step={self.cfg.partition_layer_step}"]
            if self.cfg.exclude_flags:
                first["without_flagged"] = [f"affine.alphas=[{grid}]", f"data.exclude_flags=[{','.join(self.cfg.exclude_flags)}]"]
            later.update({f"split_{s}": [f"data.split={s}", f"affine.alphas=[{grid}]"] for s in self.cfg.splits})
            step = self.cfg.mlp_source_layer_step
            later["probe_affine"] = [f"data.source_layer_step={step}", f"affine.alphas=[{grid}]"]
            later["probe_mlp"] = [f"data.source_layer_step={step}", "probe=mlp"]

            def fit(run: str, overrides: list[str]) -> FitResult:
                run_dir = folder / run
                fit_cfg = load_config(FitConfig, [*common, *overrides, f"out={run_dir}", f"data.cache={cache}"], prog="nsync.fit")
                stored = reusable_result(fit_cfg)
                if stored is not None:
                    print(f"  {source} -> {target}: {run} re-used")
                    return stored
                print(f"  {source} -> {target}: {run}")
                fit_cfg = dataclasses.replace(fit_cfg, overwrite=True)
                result = self._timed(f"{name}/fit", run_fit, fit_cfg)
                print(f"    SyncR² {result.sync_r2:.4f}, bias-corrected {_f(result.sync_r2_bias_corrected, 4)} "
                      f"{_ci(*(result.sync_r2_ci95 or (None, None)))}")
                return result

            if stage == "answer":
                controls("chosen_alpha", grid)
                for run, overrides in first.items():
                    fit(run, overrides)
                continue
            controls("paper_alpha", str(self.cfg.paper_alpha))
            results = {run: fit(run, overrides) for run, overrides in later.items()}
            # A split that holds out personas keeps fewer training pairs (episodes that mix held-out and
            # kept characters are dropped); the interaction split at the same size tells leakage from size.
            main_train = _train_pairs(FitResult.load(folder / "controls_chosen_alpha" / "main"))
            for s in self.cfg.splits:
                held_out = results[f"split_{s}"]
                if _train_pairs(held_out) < 0.9 * main_train:
                    fit(f"split_interaction_at_{s}_size", [f"data.max_pairs={_pair_budget(held_out)}", f"affine.alphas=[{grid}]"])

    def run(self) -> None:
        pairs = {p.name: p for p in self.cfg.pairs}
        names = self.cfg.only or list(pairs)
        unknown = [n for n in names if n not in pairs]
        if unknown:
            raise NsyncError(f"only= names pairs {unknown} that study.yaml does not define; choose from {list(pairs)}")
        if not self.cfg.report_only:
            caches = {}
            for stage in ("answer", "rest"):
                for i, name in enumerate(names):
                    pair = pairs[name]
                    if name not in caches:
                        print(f"[{i + 1}/{len(names)}] {name}: simulate -> {self.out / name / 'cache'}")
                        caches[name] = self._timed(f"{name}/simulate", self.simulate, name, pair)
                    print(f"[{i + 1}/{len(names)}] {name}: fits ({stage})")
                    self.fits(name, pair, caches[name], stage)
                    self.report()  # after every pair, so a study stopped in a later pair still shows this one
        else:
            self.report()

    def report(self) -> None:
        written = Report(self.cfg, self.timings).write()
        print("wrote " + ", ".join(str(p) for p in written))


# -- report ------------------------------------------------------------------------------------


def _f(x, digits: int = 3) -> str:
    return "" if x is None or (isinstance(x, float) and not np.isfinite(x)) else f"{x:.{digits}f}"


def _cell(row) -> str:
    """``bias-corrected [interval] (raw)`` of one row of a controls table."""
    return f"{_f(row.get('sync_r2_bias_corrected'))} {_ci(row['ci95_low'], row['ci95_high'])} ({_f(row['sync_r2'])})"


def _ci(lo, hi) -> str:
    return "" if lo is None or hi is None or pd.isna(lo) or pd.isna(hi) else f"[{lo:.3f}, {hi:.3f}]"


class Report:
    """results.md, the PNGs under docs, and README's block, from whatever stages are finished."""

    def __init__(self, cfg: StudyConfig, timings: dict[str, float]):
        self.cfg, self.timings = cfg, timings
        self.out, self.docs = Path(cfg.out), Path(cfg.docs)
        path = self.docs / RECORD
        self.record: dict = json.loads(path.read_text()) if path.is_file() else {"pairs": {}}

    def _controls(self, folder: Path) -> pd.DataFrame | None:
        path = folder / "controls.csv"
        return pd.read_csv(path) if path.is_file() else None

    def _result(self, folder: Path):
        from nsync.fit import FitResult

        return FitResult.load(folder) if (folder / "results.json").is_file() else None

    def pair_section(self, name: str, pair: PairConfig) -> tuple[list[str], dict, dict | None]:
        """The pair's markdown (cache, then one block per view), per view with fits the numbers its
        plots need, and the pair's record entry (None unless its cache is complete and every view
        fitted). A pair with no cache here comes from the record when it has one."""
        if not (self.out / name / "cache" / "manifest.json").is_file() and name in self.record["pairs"]:
            kept = self.record["pairs"][name]
            note = (f"From `{RECORD}` (written {kept['written']}): this machine holds neither the pair's cache nor its fits; "
                    f"`only=[{name}]` runs it again.")
            return [f"### {name}", "", note, "", *kept["section"]], kept["views"], kept
        lines = [f"### {name}", ""]
        found: dict = {}
        simulated, has_data, simulation_done = self._simulation_line(name, pair)
        lines.append(simulated)
        if not has_data:
            return lines + [""], found, None
        unfitted = False
        for source, target, _ in views(pair.models):
            view_lines, view = self.view_section(name, pair, source, target)
            lines += view_lines
            if view is None:
                unfitted = True
            else:
                found[f"{source} -> {target}"] = view
        lines.append("")
        entry = None
        if simulation_done and not unfitted:
            entry = {"written": time.strftime("%Y-%m-%d"), "section": lines[2:],
                     "views": {label: {k: v for k, v in view.items() if k != "heatmap"} for label, view in found.items()},
                     "timings": {k: v for k, v in self.timings.items() if k.startswith(f"{name}/")}}
        return lines, found, entry

    def _simulation_line(self, name: str, pair: PairConfig) -> tuple[str, bool, bool]:
        """What the pair's cache holds, whether it holds anything to fit and whether it is complete."""
        from nsync.cache import ActivationCache, describe_reply_flags

        cache_dir = self.out / name / "cache"
        planned = pair.episodes * 2
        if not (cache_dir / "manifest.json").is_file():
            return "Not simulated yet.", False, False
        cache = ActivationCache.open(cache_dir)
        if not cache.shards:
            return f"Simulation in progress ({planned} runs planned), no shard written yet.", False, False
        quality = cache.quality()
        pairs = quality["pairs_lag1"]
        done = bool(cache.manifest.get("complete"))
        state = "complete" if done else f"simulation in progress, {planned} planned"
        return (f"{cache.turns['run_id'].nunique()} runs ({state}), "
                f"{int((cache.turns['condition'] == 'interactive').sum())} utterances; pairs at lag 1 per direction: "
                + ", ".join(f"{d} {n}" for d, n in pairs.items()) + f"; replies {describe_reply_flags(quality)}."), True, done

    def view_section(self, name: str, pair: PairConfig, source: str, target: str) -> tuple[list[str], dict | None]:
        """One view (source -> target): the controls table, splits and probes, the reading, the
        coverage check and the smallest detectable difference."""
        from nsync.fit.loop import MIN_TEST_EPISODES
        from nsync.fit.results import layer_profile

        folder = self.out / name / _name(source)
        paper, chosen = (self._controls(folder / f"controls_{a}") for a in ("paper_alpha", "chosen_alpha"))
        if chosen is None:
            return ["", f"{source} -> {target}: fits not run yet.", ""], None
        main = self._result(folder / "controls_chosen_alpha" / "main")
        # what the plots need, in a form the record can keep (JSON)
        profile = layer_profile(main) if main is not None else pd.DataFrame()
        heatmap = folder / "controls_chosen_alpha" / "main" / "heatmap_A_to_B.png"
        view = {"controls": chosen.loc[chosen["sync_r2"].notna(), ["control", "sync_r2_bias_corrected", "ci95_low", "ci95_high"]]
                .astype({"sync_r2_bias_corrected": float, "ci95_low": float, "ci95_high": float}).to_dict("records"),
                "layer_profile": profile[["direction", "source_layer", "source_depth", "best_r2", "best_target_depth"]]
                .to_dict("records") if len(profile) else None,
                "heatmap": heatmap if heatmap.is_file() else None}
        n_train = {d: int(np.mean(r.n_train)) for d, r in main.directions.items()}
        short = any(n < pair.min_train_pairs for n in n_train.values())
        lines = ["", f"**{source} -> {target}** (training pairs per direction: "
                 + ", ".join(f"{d} {n}" for d, n in n_train.items())
                 + (f"; fewer than the {pair.min_train_pairs} planned" if short else "") + ")", ""]
        lines += self._controls_table(folder, chosen, paper)
        if "skipped" in chosen:
            lines += [f"\nskipped {r['control']}: {r['skipped']}" for r in chosen[chosen["skipped"].notna()].to_dict("records")]
        checked = [(f"{r['control']} ({alpha})", r["sync_r2"], r["ci95_low"], r["ci95_high"])
                   for alpha, table in (("chosen alpha", chosen), ("paper alpha", paper)) if table is not None
                   for r in table[table["sync_r2"].notna()].to_dict("records")]
        rows, few = [], []
        for run, label, result in self._other_fits(folder):
            if run.startswith(("split_", "probe_")):  # main's own interval is already in the controls table
                checked.append((label, result.sync_r2, *(result.sync_r2_ci95 or (None, None))))
            episodes = result.bootstrap.test_episodes if result.bootstrap else None
            if episodes is not None and episodes < MIN_TEST_EPISODES:
                few.append(f"{label} ({episodes})")
            rows.append(f"| {label} | {_f(result.sync_r2_bias_corrected)} {_ci(*(result.sync_r2_ci95 or (None, None)))} "
                        f"({_f(result.sync_r2)}) | {_train_pairs(result):.0f} | {'' if episodes is None else episodes} |")
        if rows:
            lines += ["", f"Splits (chosen alpha) and probes (every k-th source layer, k = {self.cfg.mlp_source_layer_step}):", "",
                      "| fit | SyncR², bias-corrected [95% CI] (raw) | training pairs per direction | test episodes |",
                      "|---|---|---|---|", *rows]
        lines += self._partition_table(folder)
        view.update(self._partition_numbers(folder))
        lines += ["", self.reading(folder, chosen, paper, main), "", self.coverage_check(checked)]
        if few:
            lines.append(f"\nFewer than {MIN_TEST_EPISODES} test episodes: {', '.join(few)}; there the episode bootstrap's "
                         "95% interval covers less than it says (83-90% on planted problems with 10 episodes).")
        detectable = self.detectable_difference(chosen)
        if detectable is not None:
            view["detectable"] = detectable
            lines.append(f"\nSmallest difference from the main condition this {source} -> {target} fit detects "
                         f"(80% power, 5% level, median over controls): {detectable:.3f}.")
        return lines, view

    def _controls_table(self, folder: Path, chosen: pd.DataFrame, paper: pd.DataFrame | None) -> list[str]:
        # Each interval stands beside the bias-corrected value it is centred on (raw SyncR² in brackets).
        lines = ["| condition | SyncR², paper alpha 0.1 [95% CI] (raw) | SyncR², chosen alpha [95% CI] (raw) | "
                 "Δ vs main, chosen alpha [95% CI] | CKA |", "|---|---|---|---|---|"]
        by_paper = paper.set_index("control") if paper is not None else None
        for r in chosen[chosen["sync_r2"].notna()].to_dict("records"):
            c = r["control"]
            p = by_paper.loc[c] if by_paper is not None and c in by_paper.index else None
            result = self._result(folder / "controls_chosen_alpha" / c)
            cka = result.sync_cka if result is not None else None
            diff = "" if c == "main" else f"{_f(r.get('diff_bias_corrected'))} {_ci(r['diff_ci95_low'], r['diff_ci95_high'])}"
            lines.append(f"| {c} | {_cell(p) if p is not None else ''} | {_cell(r)} | {diff} | {_f(cka)} |")
        return lines

    def _partition_table(self, folder: Path) -> list[str]:
        """The variance partition of a view: per baseline the source's unique SyncR² with its
        interval and surrogate p-value, and the shares it is made of (at each source layer's target
        chosen on validation, mean over layers, directions and split seeds)."""
        result = self._result(folder / "partition")
        if result is None or not result.partition:
            return []
        step = result.config["data"]["source_layer_step"]
        layers = "every source layer" if step == 1 else f"every {step}th source layer from the embeddings"
        lines = ["", f"Variance partition (chosen alpha, {layers}; p: surrogate pseudo-dyads; SyncR² of this fit "
                 f"{_f(result.sync_r2)}, p {_f(result.sync_r2_p_value)}):", "",
                 "| beyond | unique SyncR² [95% CI] | p | shared | baseline alone | source and baseline |", "|---|---|---|---|---|---|"]
        for name, p in result.partition.items():
            v = p.values
            lines.append(f"| {name} | {_f(v['unique'])} {_ci(*(p.ci95.get('unique') or (None, None)))} | {_f(p.unique_p_value)} | "
                         f"{_f(v['shared'])} | {_f(v['baseline'])} | {_f(v['joint'])} |")
        return lines

    def _partition_numbers(self, folder: Path) -> dict:
        """What the partition's plots need, in a form the record keeps: the unique share by source
        layer depth per baseline and direction, and SyncR² and the unique shares by utterance index."""
        result = self._result(folder / "partition")
        if result is None or not result.partition:
            return {}
        profile, course = [], []
        for direction, d in result.directions.items():
            series = [("SyncR²", d.time_course)] + [(f"unique beyond {b}", p.time_course) for b, p in d.partition.items()]
            for b, p in d.partition.items():
                profile += [{"direction": direction, "baseline": b, "source_depth": x, "unique": u}
                            for x, u in zip(result.source_depth, p.by_source_layer["unique"])]
            for name, tc in series:
                if tc is not None:
                    course += [{"direction": direction, "series": name, "utterance": u, "value": v, "low": ci[0] if ci else None,
                                "high": ci[1] if ci else None} for u, v, ci in zip(tc.utterance, tc.value, tc.ci95)]
        return {"unique_profile": profile, "time_course": course}

    def _other_fits(self, folder: Path) -> list[tuple[str, str, object]]:
        """(run folder, label, result) of the finished fits besides the controls: main, the splits
        with their size-matched interaction fits, and the two probes."""
        runs = [("controls_chosen_alpha/main", "interaction (main)")]
        for s in self.cfg.splits:
            runs += [(f"split_{s}", s), (f"split_interaction_at_{s}_size", f"interaction, {s} split's size")]
        runs += [("probe_affine", "affine"), ("probe_mlp", "MLP")]
        if self.cfg.exclude_flags:
            runs.append(("without_flagged", f"interaction, without pairs with {' or '.join(self.cfg.exclude_flags)} replies"))
        found = [(run, label, self._result(folder / run)) for run, label in runs]
        return [f for f in found if f[2] is not None]

    @staticmethod
    def detectable_difference(chosen: pd.DataFrame) -> float | None:
        """Smallest true control-minus-main difference detected with 80% power at the 5% level,
        (1.96 + 0.84) standard errors, the standard error read off the paired intervals' median width."""
        widths = chosen.loc[chosen["control"] != "main", ["diff_ci95_low", "diff_ci95_high"]].dropna()
        if not len(widths):
            return None
        return 2.8 * float(np.median((widths["diff_ci95_high"] - widths["diff_ci95_low"]) / (2 * 1.96)))

    @staticmethod
    def coverage_check(rows: list[tuple[str, float, float | None, float | None]]) -> str:
        """Whether each raw SyncR² (label, raw, low, high) lies inside the interval printed beside it.
        The interval is centred on the bias-corrected value, so the raw one falls outside when the
        bootstrap's bias estimate exceeds the half-width (few test episodes); the text says so."""
        rows = [r for r in rows if r[2] is not None and r[3] is not None and not pd.isna(r[2]) and not pd.isna(r[3])]
        outside = [f"{label} ({raw:.3f} outside {_ci(lo, hi)})" for label, raw, lo, hi in rows if not lo <= raw <= hi]
        if not outside:
            return f"Each of the {len(rows)} raw SyncR² values lies inside its 95% interval."
        return (f"Raw SyncR² outside its interval ({len(outside)} of {len(rows)}): " + ", ".join(outside)
                + ". In these fits the bootstrap estimates the raw value's downward bias (R² is measured around the test "
                  "episodes' own mean, which shrinks the total variance most when they are few) as larger than the interval's "
                  "half-width; the interval is for the bias-corrected value printed beside it.")

    def reading(self, folder: Path, chosen: pd.DataFrame, paper: pd.DataFrame | None, main) -> str:
        """The view's numbers in words: controls (``read_controls``), alpha, layer profile, splits, probes."""
        from nsync.analysis.controls import read_controls
        from nsync.fit.results import layer_profile

        words = [read_controls(chosen)]
        if paper is not None and "main" in set(paper["control"]):
            fixed = float(paper.set_index("control").loc["main", "sync_r2"])
            words.append(f"The paper's fixed alpha 0.1 gives {fixed:.3f} for the main condition, the chosen alpha {main.sync_r2:.3f} (raw).")
        profile = layer_profile(main).groupby("source_layer").agg(depth=("source_depth", "first"), r2=("best_r2", "mean"),
                                                                   target_depth=("best_target_depth", "mean"))
        if len(profile):
            peak = profile.loc[profile["r2"].idxmax()]
            first, last = profile.iloc[0], profile.iloc[-1]
            words.append(f"By depth (mean over directions): best-target R² is {first.r2:.3f} from the first source layer, peaks at "
                         f"{peak.r2:.3f} from relative depth {peak.depth:.2f} (layer {int(peak.name)}) and is {last.r2:.3f} from the "
                         f"last; the best targets lie at relative depth {profile['target_depth'].mean():.2f} on average.")
        splits = {s: self._result(folder / f"split_{s}") for s in self.cfg.splits}
        splits = {s: r for s, r in splits.items() if r is not None}
        if splits:
            words.append("Holding out " + ", ".join(f"{s}s gives {r.sync_r2:.3f}" for s, r in splits.items())
                         + f" against {main.sync_r2:.3f} for held-out interactions (raw; separate test sets, so compare the intervals above).")
        for s in splits:
            matched = self._result(folder / f"split_interaction_at_{s}_size")
            if matched is not None:
                held_out = splits[s].sync_r2
                words.append(f"With as few training pairs as the {s} split ({_train_pairs(matched):.0f} per direction), held-out "
                             f"interactions give {matched.sync_r2:.3f}: of the change from {main.sync_r2:.3f} to {held_out:.3f}, "
                             f"{matched.sync_r2 - main.sync_r2:+.3f} comes with the smaller training set and "
                             f"{held_out - matched.sync_r2:+.3f} with holding out the {s}s.")
        affine, mlp = self._result(folder / "probe_affine"), self._result(folder / "probe_mlp")
        if affine is not None and mlp is not None:
            words.append(f"On the same source layers the MLP probe gives {mlp.sync_r2:.3f}, the affine {affine.sync_r2:.3f} "
                         f"({'more' if mlp.sync_r2 > affine.sync_r2 else 'no more'} than linear).")
        return " ".join(w for w in words if w)

    def plots(self, found: dict) -> tuple[list[Path], list[str]]:
        """The PNGs from each view's plot numbers (live or recorded), and lines that say what they show."""
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt

        from nsync.fit.plots import plot_layer_profile

        self.docs.mkdir(parents=True, exist_ok=True)
        paths, captions = [], []
        profiles = {label: pd.DataFrame(v["layer_profile"]) for label, v in found.items() if v.get("layer_profile")}
        if profiles:
            paths.append(plot_layer_profile(profiles, self.docs / "layer_profile.png"))
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
            paths.append(self.docs / "controls.png")
            fig.savefig(paths[-1], dpi=110)
            plt.close(fig)
            # the first view's main-condition heatmap; a recorded view's copy is the one already under docs
            first = next(iter(found))
            heatmap, live = self.docs / "heatmap.png", found[first].get("heatmap")
            if live is not None:
                shutil.copy(live, heatmap)
                self.record["heatmap_view"] = first
            if live is not None or (self.record.get("heatmap_view") == first and heatmap.is_file()):
                paths.append(heatmap)
                captions.append(f"heatmap.png: test R² by source and target layer, {first}, main condition, chosen alpha.")
        paths += self._partition_plots(found)
        return paths, captions

    def _partition_plots(self, found: dict) -> list[Path]:
        """unique_profile.png (one panel per baseline: the unique share by source layer depth, a line
        per view and direction) and time_course.png (one panel per view), from the views' numbers."""
        import matplotlib.pyplot as plt

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
            paths.append(save_figure(fig, self.docs / "unique_profile.png"))
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
            paths.append(save_figure(fig, self.docs / "time_course.png"))
        return paths

    def write(self) -> list[Path]:
        sections, found, timings = [], {}, {}
        pairs = {}
        for pair in self.cfg.pairs:
            lines, pair_found, entry = self.pair_section(pair.name, pair)
            sections += lines
            found.update(pair_found)
            recorded = entry is not None and entry is self.record["pairs"].get(pair.name)
            timings.update(entry["timings"] if recorded else {k: v for k, v in self.timings.items() if k.startswith(f"{pair.name}/")})
            if entry is not None:
                pairs[pair.name] = entry
            elif pair.name in self.record["pairs"]:  # a pair running again keeps its last complete record until it is done
                pairs[pair.name] = self.record["pairs"][pair.name]
        wall = sum(timings.values())
        stages = ", ".join(f"{k} {v / 60:.0f} min" for k, v in timings.items())
        head = ["<!-- written by experiments/cpu_study/study.py; do not edit by hand -->", "",
                f"Wall time of the study so far (2-core CPU): {wall / 60:.0f} min ({stages})." if timings else "", ""]
        self.docs.mkdir(parents=True, exist_ok=True)
        pngs, captions = self.plots(found)
        self.record["pairs"] = pairs
        write_json_atomic(self.docs / RECORD, self.record)

        def page(links: list[str]) -> str:
            return "\n".join(head + links + [line for caption in captions for line in ("", caption)] + [""] + sections)

        written = [self.docs / "results.md", *pngs, self.docs / RECORD]
        written[0].write_text(page([f"![{p.stem}]({p.name})" for p in pngs]) + "\n")  # next to the PNGs
        return written


def main(argv) -> None:
    args = list(argv)
    if not any(a == "--config" for a in args):
        args = ["--config", str(HERE / "study.yaml"), *args]
    cfg = load_config(StudyConfig, args, prog="experiments/cpu_study/study.py")
    start = time.perf_counter()
    Study(cfg).run()
    print(f"done in {(time.perf_counter() - start) / 60:.1f} min")


if __name__ == "__main__":
    # A kill by SIGTERM unwinds like Ctrl-C: the stage's time is recorded, committed shards stay.
    signal.signal(signal.SIGTERM, lambda signum, frame: sys.exit(128 + signum))
    run_cli(main, sys.argv[1:])
