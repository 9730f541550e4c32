"""What ``python -m nsync.fit`` prints when a fit is done: the headline, each direction, the
p-values and the partition, and where the run folder is."""

from __future__ import annotations

import numpy as np

from nsync.cache import describe_reply_flags
from nsync.fit.config import FitConfig, resolve_out
from nsync.fit.loop import with_agent_directions
from nsync.fit.results import FitResult, modal_target


def print_summary(result: FitResult, cfg: FitConfig) -> None:
    """The fit's figures on the console, ending with what it wrote where."""
    print(result.headline())
    print(
        f"  raw ± std over split seeds {result.sync_r2:.4f} ± {result.sync_r2_std:.4f} ({cfg.probe} probe, {cfg.data.split} split, "
        f"pairing {cfg.data.pairing}, {len(cfg.data.split_seeds)} split seeds, target layers chosen on {result.target_choice}, {result.seconds:.1f} s)"
    )
    flags = result.reply_flags
    if flags and flags.get("replies"):
        excluded = ", ".join(f"{name} {d.n_excluded}" for name, d in result.directions.items())
        left_out = f"; data.exclude_flags={list(cfg.data.exclude_flags)} left out pairs: {excluded}" if cfg.data.exclude_flags else ""
        print(f"  replies in the cache: {describe_reply_flags(flags)}{left_out}")
    for direction, d in result.directions.items():
        r2 = d.r2_by_source_layer
        unclipped = "n/a" if d.sync_r2_unclipped is None else f"{d.sync_r2_unclipped:.4f}"
        best_text = "no source layer has an R²"
        if np.isfinite(r2).any():
            best = int(np.nanargmax(r2))
            target = modal_target(d, best, result.target_layers)
            best_text = f"best {result.source_layer_names[best]} -> {result.target_layer_names[target]} (R² {r2[best]:.4f})"
        print(f"  {direction}: {d.headline()}")
        print(
            f"    raw ± std {d.sync_r2:.4f} ± {d.sync_r2_std:.4f}, unclipped {unclipped}, {best_text}, n_train {d.n_train[0]}, n_test {d.n_test[0]}"
        )
    few = result.few_test_episodes
    if result.sync_r2_p_value is not None and result.surrogates is not None and not few:
        print(f"  permutation p-value of SyncR² ({result.surrogates['n']} {result.surrogates['kind']} surrogates): {result.sync_r2_p_value:.4f}")
    for name, p in result.partition.items():
        print(f"  beyond {name}: {p.line(few)}")
        for a in p.unique_asymmetry:
            print(f"    who leads in it: {a.line(few)}")
    if result.subspace is not None:
        print(f"  communication subspace: {result.subspace.line(few)}")
        if result.subspace.tracks:
            print(f"  what it follows: {result.subspace.tracks_line()}")
    for a in result.asymmetry:
        print(f"  who leads: {a.line(few)}")
    matrix = result.agent_matrix()
    if matrix.notna().sum().sum() >= 2:
        print("SyncR² by ordered agent pair (rows: source agent, columns: target agent):")
        print(matrix.to_string(float_format=lambda v: f"{v:.4f}", na_rep="-"))
    print(f"wrote {resolve_out(with_agent_directions(cfg))}/results.json, plots and weights")
