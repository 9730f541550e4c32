"""The activation cache: layer-major ``.npy`` arrays, a turns table and a manifest."""

# Names load on first use (SPEC 1 lazy loading), so a command's --help and a fit's start-up import
# only the modules they need (tests/test_imports.py).
import lazy_loader

__getattr__, __dir__, __all__ = lazy_loader.attach(
    __name__,
    # submodules too: nsync.cache.<module> works after `import nsync.cache`, as it did with eager imports
    submodules=["hf", "importer", "layout", "reader", "verify", "writer"],
    submod_attrs={
        "reader": ["ActivationCache", "describe_reply_flags"],
        "writer": ["CacheWriter", "ModelInfo"],
    },
)
