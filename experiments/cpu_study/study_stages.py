"""The CPU study's stages: simulate each pair, then fit every view (the answer for every pair first,
then the rest), with each stage's wall time kept in ``timings.json``."""

from __future__ import annotations

import dataclasses
import json
import threading
import time
from pathlib import Path

from study_config import STAGES, TIMING_FLUSH_S, PairConfig, StudyConfig, _name, _pair_budget, _train_pairs, views
from study_report import Report, _ci, _f

from nsync.storage import write_json_atomic
from nsync.config import load_config
from nsync.errors import NsyncError


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
        out, stats = simulate(load_config(SimulateConfig, args, prog="nsync simulate"))
        print(f"  {stats.line()}")
        quality = ActivationCache.open(out).quality()
        print(f"  pairs at lag 1 per direction: {quality['pairs_lag1']}")
        print(f"  replies: {describe_reply_flags(quality)}")
        return out

    def fits(self, name: str, pair: PairConfig, cache: Path, stage: str) -> None:
        """The fits of one pair's ``stage`` (:data:`study_config.STAGES`)."""
        from nsync.analysis.controls import ControlsConfig, run_controls
        from nsync.fit import FitConfig, FitResult, reusable_result, run_fit

        seeds = ",".join(str(s) for s in self.cfg.split_seeds)
        grid = ",".join(str(a) for a in pair.alpha_grid or self.cfg.alpha_grid)
        for source, target, directions in views(pair.models):
            folder = self.out / name / _name(source)
            common = [f"data.source_model={source}", f"data.target_model={target}", f"data.directions=[{','.join(directions)}]",
                      f"data.split_seeds=[{seeds}]",
                      f"bootstrap={self.cfg.bootstrap}", "logger.kind=none", "save_weights=false", *pair.fit]
            def controls(alpha_name: str, alphas: str, names: list[str] | None = None, lags: list[int] | None = None) -> None:
                print(f"  {source} -> {target}: controls, {alpha_name} ({alphas})")
                cfg = ControlsConfig(cache=str(cache), out=str(folder / f"controls_{alpha_name}"),
                                     fit_overrides=[*common, f"affine.alphas=[{alphas}]"],
                                     controls=names or list(self.cfg.controls), lags=lags or list(self.cfg.lags))
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
                fit_cfg = load_config(FitConfig, [*common, *overrides, f"out={run_dir}", f"data.cache={cache}"], prog="nsync fit")
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

            if stage == "main":
                controls("chosen_alpha", grid, ["main", *(["text_only"] if "text_only" in self.cfg.controls else [])], [1])
                continue
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
        if not self.cfg.stages or (bad := [s for s in self.cfg.stages if s not in STAGES]):
            raise NsyncError(f"stages= names {self.cfg.stages or 'no stage'}; choose from " + "; ".join(f"{k}: {v}" for k, v in STAGES.items()))
        if not self.cfg.report_only:
            caches = {}
            for stage in self.cfg.stages:
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
