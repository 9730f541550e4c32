"""The offline model zoo: resolve a name, load a model with its tokenizer."""

from nsync.models.zoo import (
    BUNDLED,
    LoadedModel,
    ModelConfig,
    ResolvedModel,
    load_model,
    resolve_model,
    untrained_copy,
    wrap_model,
)
from nsync.models.text_embedder import TextEmbedder

__all__ = ["BUNDLED", "LoadedModel", "ModelConfig", "ResolvedModel", "load_model", "TextEmbedder", "resolve_model", "untrained_copy", "wrap_model"]
