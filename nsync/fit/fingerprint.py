"""A fit's fingerprint: what it measures (its config, less where and how it runs; the results
schema; the content of its cache), so a stored ``results.json`` is re-used only for the same fit
of the same data (:func:`nsync.fit.loop.reusable_result`)."""

from __future__ import annotations

import hashlib
import json

from nsync.cache import ActivationCache
from nsync.config import to_dict
from nsync.data.bands import Baseline
from nsync.fit.config import FitConfig
from nsync.fit.results import SCHEMA_VERSION

#: Keys that change where and how a fit runs, not what it measures: left out of its fingerprint.
RUN_ONLY_KEYS = ("out", "overwrite", "progress", "logger", "memory_gb", "save_weights")

#: The method of the unique share's surrogate null, part of the fingerprint of fits that compute it,
#: so a change of method refits those (and only those). 3: the source split on the baseline and the
#: permutation strata, on at most half the rows' worth of the principal components of the
#: baseline's standardised columns.
UNIQUE_NULL_METHOD = 3

#: How a baseline that joins features (``a+b``) weighs them, part of the fingerprint of fits with
#: one. 3: each feature a ridge band with its own penalty (``partition.feature_ratios``), chosen per
#: cell on validation; 2: each brought to the total variance of the largest, one penalty for all;
#: 1: as read, where a small-scale feature beside a large one was shrunk to nothing.
JOINED_BASELINE_METHOD = 3

#: How the own-past baseline holds its indicator of rows whose partner has not spoken before, part
#: of the fingerprint of fits with own_past. 2: a band of its own at a fixed penalty ratio; 1: in
#: the state's band, where the penalties of a residual stream shrank it away.
OWN_PAST_METHOD = 2


def fingerprint(cfg: FitConfig) -> str:
    """A hash of what a fit measures: its config (less :data:`RUN_ONLY_KEYS`), the results schema
    and the content of its cache (manifest and shards), so a stored ``results.json`` is reused
    only for the same fit of the same data."""
    d = {k: v for k, v in to_dict(cfg).items() if k not in RUN_ONLY_KEYS}
    d["data"] = {k: v for k, v in d["data"].items() if k != "cache"}  # the cache counts by content, not by path
    # The solver changes how the same numbers are computed (equal to 1e-6: tests/test_partition.py), not what a fit measures.
    d["affine"] = {k: v for k, v in d["affine"].items() if k != "solver"}
    joined = any("+" in name for name in cfg.partition.baselines)
    if not joined:  # feature_ratios serve joined baselines only: other fits keep their fingerprint
        d["partition"] = {k: v for k, v in d["partition"].items() if k != "feature_ratios"}
    measured = {"config": d, "schema": SCHEMA_VERSION, "cache": ActivationCache.open(cfg.data.cache).content_id()}
    if cfg.partition.baselines and cfg.surrogates.n:
        measured["unique_null"] = UNIQUE_NULL_METHOD
    if joined:
        measured["joined_baseline"] = JOINED_BASELINE_METHOD
    if any("own_past" in Baseline.parse(name).features for name in cfg.partition.baselines):
        measured["own_past"] = OWN_PAST_METHOD
    return hashlib.sha256(json.dumps(measured, sort_keys=True).encode()).hexdigest()[:16]
