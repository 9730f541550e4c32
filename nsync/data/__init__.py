"""Pairs, grouped splits and the Lightning DataModule over an activation cache."""

# Names load on first use (SPEC 1 lazy loading), so a command's --help and a fit's start-up import
# only the modules they need (tests/test_imports.py).
import lazy_loader

__getattr__, __dir__, __all__ = lazy_loader.attach(
    __name__,
    # submodules too: nsync.data.<module> works after `import nsync.data`, as it did with eager imports
    submodules=["bands", "config", "context", "datamodule", "pairs", "splits"],
    submod_attrs={
        "config": ["DataConfig"],
        "datamodule": ["SynchronyDataModule"],
        "pairs": ["DIRECTIONS", "PAIRINGS", "build_pairs"],
        "splits": ["SPLITS", "Split", "make_split"],
    },
)
