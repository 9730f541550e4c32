"""Planted data and harnesses for tests, benchmarks and runnable examples: caches with a known
answer, planted fits for interval coverage, surrogate false-positive rates, and small ready-made
caches and fits for doctests. Nothing under :mod:`nsync.stats` or :mod:`nsync.fit` imports it.

>>> from nsync.testing import example_cache
>>> from nsync.cache import ActivationCache
>>> ActivationCache.open(example_cache()).layer_names("synthetic")[:2]
['embed', 'blocks.0.resid_post']
"""

from __future__ import annotations

import functools
import tempfile
from pathlib import Path

from nsync.testing.synthetic import PLANTED_TEXT, planted_fits, planted_r2, write_partition_cache, write_synthetic_cache

__all__ = [
    "PLANTED_TEXT",
    "example_cache",
    "golden_fit",
    "planted_fits",
    "planted_r2",
    "write_partition_cache",
    "write_synthetic_cache",
]


@functools.cache
def _workdir() -> Path:
    return Path(tempfile.mkdtemp(prefix="nsync-examples-"))


@functools.cache
def example_cache() -> Path:
    """A small two-agent cache (40 episodes of 6 utterances, 2 blocks of 4 dimensions) with a
    planted linear A->B relation of population R² 0.5, written once per process."""
    return write_synthetic_cache(_workdir() / "cache", "linear", n_episodes=40, turns=6, n_layers=2, hidden=4)


@functools.cache
def golden_fit() -> Path:
    """A fit of :func:`example_cache` (affine probe, alpha grid, one split seed, 50 bootstrap
    replicates), run once per process; returns its run folder."""
    from nsync.config import load_config
    from nsync.fit import FitConfig, run_fit

    out = _workdir() / "fit"
    args = [f"out={out}", f"data.cache={example_cache()}", "logger.kind=none", "progress=false", "data.split_seeds=[0]", "bootstrap=50"]
    run_fit(load_config(FitConfig, [*args, "surrogates.n=0", "affine.alphas=[1,10,100]", "save_weights=false"], prog="example"))
    return out
