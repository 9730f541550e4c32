"""Synchrony probes: LightningModules mapping one agent's state to its partner's next state."""

# Names load on first use (SPEC 1 lazy loading), so a command's --help and a fit's start-up import
# only the modules they need (tests/test_imports.py).
import lazy_loader

__getattr__, __dir__, __all__ = lazy_loader.attach(
    __name__,
    submod_attrs={
        "affine": ["AffineProbe", "choose_alpha"],
        "metrics": ["LayerR2", "TestR2Mixin", "r2_from_sums"],
        "mlp": ["MLP", "MLPProbe"],
        "ridge": ["RidgeSolution", "RidgeStatistics", "fit_ridge"],
    },
)
