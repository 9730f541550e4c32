"""Who leads where the two directions are separate fits.

A fit of both directions reports who leads itself (``FitResult.asymmetry``). A pair of two
different models is fitted one direction at a time (each direction has its own source and target
model: ``data.source_model``/``data.target_model``), so its asymmetry pairs two run folders: the
same test episodes under the same split seeds and the same bootstrap draws, which weight each test
episode alike in both runs, so the difference of their replicates is paired by episode.

    from nsync.analysis.leader import leader_between
    print(leader_between("runs/pair/smollm2/main", "runs/pair/gemma/main").line())
    # A->B minus B->A 0.031 [0.012, 0.050] (bias-corrected; raw 0.029): A leads; A->B higher in 64% of test episodes
"""

from __future__ import annotations

from pathlib import Path

import pandas as pd

from nsync.analysis.controls import check_same_draws
from nsync.errors import NsyncError
from nsync.fit.analyses import asymmetries
from nsync.fit.results import Asymmetry, FitResult
from nsync.fit.run_folder import RunFolder


def _one_direction(result: FitResult, path: Path) -> str:
    if len(result.directions) != 1:
        raise NsyncError(
            f"{path} fitted {sorted(result.directions)}; leader_between pairs two runs of one direction each "
            "(a run of both directions has its own `asymmetry` in results.json)"
        )
    return next(iter(result.directions))


def check_same_test_episodes(first: FitResult, second: FitResult, names: tuple[str, str]) -> None:
    """Raise unless the two runs' replicates pair: the same episode-keyed draws and, per split seed,
    the same test episodes (whatever direction each run fitted)."""
    check_same_draws(first, second, names)
    if set(first.splits) != set(second.splits):
        raise NsyncError(f"{names[0]} and {names[1]} were fitted on different split seeds ({sorted(first.splits)} vs {sorted(second.splits)})")
    for seed in first.splits:
        (mine,), (theirs,) = first.splits[seed].values(), second.splits[seed].values()
        if set(mine["test"]["episodes"]) != set(theirs["test"]["episodes"]):
            raise NsyncError(
                f"{names[0]} and {names[1]} hold out different test episodes under split seed {seed}; a paired difference needs "
                "the same cache, split and split seeds in both fits"
            )


def leader_between(first: str | Path, second: str | Path) -> Asymmetry:
    """The paired difference of two runs' SyncR² (``first`` minus ``second``), each of one direction,
    the two directions each other's reverse (``A->B`` and ``B->A``), with its interval, who leads and
    the share of test episodes higher in ``first``'s direction."""
    paths = Path(first), Path(second)
    results = [FitResult.load(p) for p in paths]
    directions = [_one_direction(r, p) for r, p in zip(results, paths, strict=True)]
    source, target = directions[0].split("->")
    if directions[1] != f"{target}->{source}":
        raise NsyncError(f"{paths[0]} fitted {directions[0]} and {paths[1]} {directions[1]}: not each other's reverse")
    check_same_test_episodes(results[0], results[1], names=(str(paths[0]), str(paths[1])))
    replicates = {d: RunFolder(p).read_bootstrap() for d, p in zip(directions, paths, strict=True)}
    if any(r is None for r in replicates.values()):
        raise NsyncError(f"bootstrap.npy is missing from {paths[0]} or {paths[1]}; fit both with bootstrap > 0")
    tables = [RunFolder(p).read_episodes() for p in paths]
    episodes = pd.concat(tables).to_dict("records") if any(t is not None for t in tables) else None
    estimates = {d: r.directions[d].sync_r2 for d, r in zip(directions, results, strict=True)}
    return asymmetries(estimates, replicates, episodes)[0]  # type: ignore[arg-type]
