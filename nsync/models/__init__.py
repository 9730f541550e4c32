"""The offline model zoo: resolve a name, load a model with its tokenizer."""

from nsync.models.zoo import (
    BUNDLED,
    LoadedModel,
    ModelConfig,
    ResolvedModel,
    load_model,
    resolve_model,
    wrap_model,
)

__all__ = ["BUNDLED", "LoadedModel", "ModelConfig", "ResolvedModel", "load_model", "resolve_model", "wrap_model"]
