"""The CPU study's configuration (``study.yaml``) and the small rules shared by its stages and report."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

HERE = Path(__file__).parent
TIMING_FLUSH_S = 60.0  # how often a running stage writes its time so far
RECORD = "record.json"  # under docs: each finished pair's report, kept when runs/ is not
#: The fit stages. ``main`` is the main condition at the chosen alpha with the text-only control where
#: the study runs it (its re-read gives the communication subspace its topic): what is synchronised,
#: without the other controls; ``answer`` re-uses both. (After a full run, ``main`` rewrites the
#: chosen alpha's controls.csv with its two runs: the page shows the pair's record until ``answer`` runs.)
STAGES = {
    "answer": "every control at the chosen alpha, the variance partition, the fit without flagged replies",
    "rest": "the paper's alpha, the held-out splits, affine vs MLP",
    "main": "the main condition and the text-only control at the chosen alpha (what is synchronised)",
}


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
    stages: list[str] = field(default_factory=lambda: ["answer", "rest"], metadata={"help": f"fit stages to run, in order, from {list(STAGES)}"})
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
    return int(round(_train_pairs(result) / (1 - result.fit_config().data.test_size)))  # n_train counts validation pairs too
