"""The fit stage: synchrony probes for every (source, target) layer pair of a cache.

``python -m nsync.fit --config configs/fit/paper.yaml`` runs :func:`run_fit`; its result is a
:class:`FitResult` (``results.json`` in a :class:`RunFolder`). Later stages (controls, analysis,
report) import :class:`FitResult`, :class:`RunFolder` and, to fit, :class:`FitConfig`,
:func:`run_fit` and :func:`reusable_result`, nothing else. The map of the stage:
``docs/development.md``.
"""

# Names load on first use (SPEC 1 lazy loading), so ``nsync fit --help`` imports no torch
# (tests/test_imports.py).
import lazy_loader

__getattr__, __dir__, __all__ = lazy_loader.attach(
    __name__,
    submod_attrs={
        "config": ["FitConfig", "resolve_out"],
        "loop": ["reusable_result", "run_fit"],
        "results": ["FitResult"],
        "run_folder": ["RunFolder"],
    },
)
