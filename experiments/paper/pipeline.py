"""The paper's pipeline end to end: simulate every model pair, judge, fit, analyse, report.

    python experiments/paper/pipeline.py --config experiments/paper/small.yaml   # ~1 h on a 2-core CPU
    python experiments/paper/pipeline.py --config experiments/paper/full.yaml    # the paper's scale, on a GPU

Every step re-uses finished work (the simulation resumes its cache, the judge its stored
judgements, a fit with a results.json is kept), so an interrupted run continues where it stopped.
Outputs: ``OUT/<pair>/cache`` (with ``judge/<name>/scores.csv``), ``OUT/<pair>/fit_<source>``,
``OUT/analysis``, ``OUT/report.html``.
"""

from __future__ import annotations

import dataclasses
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Optional

from omegaconf import MISSING

from nsync.config import load_config
from nsync.errors import NsyncError, run_cli


@dataclass
class PipelineConfig:
    """Which pairs, and the settings of every step (each a list of key=value overrides)."""

    out: str = field(default=MISSING, metadata={"help": "output folder"})
    pairs: list[list[str]] = field(default=MISSING, metadata={"help": "model pairs, e.g. [[smollm2-135m, gemma3-270m]]; a two-model pair runs both speaking orders"})
    simulate: list[str] = field(default_factory=list, metadata={"help": "nsync.simulate overrides for every pair"})
    simulate_config: Optional[str] = field(default=None, metadata={"help": "nsync.simulate YAML under the overrides"})
    judge: list[str] = field(default_factory=list, metadata={"help": "nsync.judge overrides"})
    judge_config: Optional[str] = field(default="configs/judge/local.yaml", metadata={"help": "nsync.judge YAML"})
    fit: list[str] = field(default_factory=list, metadata={"help": "nsync.fit overrides for every fit"})
    fit_config: Optional[str] = field(default="configs/fit/paper.yaml", metadata={"help": "nsync.fit YAML"})
    controls: list[str] = field(default_factory=list, metadata={"help": "extra folders for the report (e.g. a controls run)"})
    covariates: Optional[str] = field(default=None, metadata={"help": "CSV of per-model covariates for the partial correlation"})
    covariate: Optional[str] = field(default=None, metadata={"help": "covariate column"})


def _name(model: str) -> str:
    return model.replace("/", "__").replace("@", "_")


def main(argv) -> None:
    from nsync.analysis.performance import AnalysisConfig, analyse
    from nsync.analysis.report import main as report
    from nsync.fit import FitConfig, reusable_result, run_fit
    from nsync.judge.run import JudgeConfig, judge_cache
    from nsync.simulation.config import SimulateConfig
    from nsync.simulation.run import simulate

    cfg = load_config(PipelineConfig, argv, prog="experiments/paper/pipeline.py")
    out = Path(cfg.out)
    start = time.perf_counter()
    judge_cfg0 = load_config(JudgeConfig, (["--config", cfg.judge_config] if cfg.judge_config else []) + ["cache=unused", *cfg.judge], prog="nsync judge")
    judge_name = judge_cfg0.name or judge_cfg0.model.replace("/", "__")
    fits, judge_dirs = [], []
    for i, pair in enumerate(cfg.pairs):
        if not 1 <= len(pair) <= 2:
            raise NsyncError(f"each pair lists one or two models, got {pair}")
        a, b = (pair + pair)[:2]
        folder = out / ("__".join(_name(m) for m in (a, b)))
        step = f"[pair {i + 1}/{len(cfg.pairs)}: {a} x {b}]"
        print(f"{step} simulate -> {folder / 'cache'}")
        sim_args = (["--config", cfg.simulate_config] if cfg.simulate_config else []) + [
            f"out={folder / 'cache'}", f"models=[{a},{b}]" if a != b else f"models=[{a}]", f"both_orders={a != b}", *cfg.simulate]
        cache, stats = simulate(load_config(SimulateConfig, sim_args, prog="nsync simulate"))
        print(f"{step} {stats.line()}")
        print(f"{step} judge ({judge_name})")
        judge_args = (["--config", cfg.judge_config] if cfg.judge_config else []) + [f"cache={cache}", *cfg.judge]
        judge_dir, _ = judge_cache(load_config(JudgeConfig, judge_args, prog="nsync judge"))
        judge_dirs.append(str(judge_dir))
        for source, target in ([(a, b), (b, a)] if a != b else [(a, a)]):
            fit_dir = folder / f"fit_{_name(source)}"
            fits.append(str(fit_dir))
            fit_args = (["--config", cfg.fit_config] if cfg.fit_config else []) + [
                f"out={fit_dir}", f"data.cache={cache}", f"data.source_model={source}", f"data.target_model={target}", *cfg.fit]
            fit_cfg = load_config(FitConfig, fit_args, prog="nsync fit")
            if reusable_result(fit_cfg) is not None:
                print(f"{step} fit {source} -> {target}: re-using {fit_dir} (same config and cache)")
                continue
            print(f"{step} fit {source} -> {target}")
            result = run_fit(dataclasses.replace(fit_cfg, overwrite=True))
            print(f"{step} SyncR² {result.sync_r2:.4f} ± {result.sync_r2_std:.4f}")
    analysis_args = [f"fits=[{','.join(fits)}]", f"judge={judge_name}", f"out={out / 'analysis'}"]
    if cfg.covariates:
        analysis_args += [f"covariates={cfg.covariates}", f"covariate={cfg.covariate}"]
    result = analyse(load_config(AnalysisConfig, analysis_args, prog="nsync analysis"))
    c = result["across_pairs"]
    print("pairs:", ", ".join(f"{p['pair']}: SyncR² {p['sync_r2']:.4f}, social {p['social']:.2f}" for p in result["pairs"]))
    print(f"across pairs: n {c['n']}, Pearson {c.get('pearson')}, Spearman {c.get('spearman')}")
    extra = [str(Path(p)) for p in cfg.controls if Path(p).exists()]
    report([str(out / "analysis"), *extra, *fits, *judge_dirs,
            "--out", str(out / "report.html"), "--title", f"nsync: {out.name}"])
    print(f"done in {(time.perf_counter() - start) / 60:.1f} min; wrote {out}/report.html, {out}/analysis")


if __name__ == "__main__":
    run_cli(main)
