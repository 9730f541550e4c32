"""Synchrony probes: LightningModules mapping one agent's state to its partner's next state."""

# Names load on first use (SPEC 1 lazy loading), so a command's --help and a fit's start-up import
# only the modules they need (tests/test_imports.py).
import lazy_loader

__getattr__, __dir__, __all__ = lazy_loader.attach(
    __name__,
    # submodules too: nsync.probes.<module> works after `import nsync.probes`, as it did with eager imports
    submodules=["affine", "cka", "metrics", "mlp", "quiet", "ridge", "saved"],
    submod_attrs={
        "affine": ["AffineProbe"],
        "metrics": ["LayerR2", "ProbeResults", "TestR2Mixin"],
        "mlp": ["MLP", "MLPProbe"],
        "ridge": ["RidgeSolution", "RidgeStatistics", "choose_alpha", "choose_on_validation", "fit_ridge"],
        "quiet": ["quiet_lightning"],
        "saved": ["SavedProbe", "load_probes", "score_cache"],
    },
)
