"""The fit stage: synchrony probes for every (source, target) layer pair of a cache.

``python -m nsync.fit --config configs/fit/paper.yaml`` runs :func:`run_fit`; its result is a
:class:`FitResult` (``results.json``). Later stages (controls, analysis, report) import
:class:`FitResult` and, to fit, :class:`FitConfig`, :func:`run_fit` and :func:`reusable_result`, nothing else.
"""

from nsync.fit.config import FitConfig, resolve_out
from nsync.fit.loop import reusable_result, run_fit
from nsync.fit.results import FitResult, sync_r2

__all__ = ["FitConfig", "FitResult", "resolve_out", "reusable_result", "run_fit", "sync_r2"]
