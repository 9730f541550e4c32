"""The offline model zoo: resolve a name, load a model with its tokenizer."""

from nsync.models import tiny  # noqa: F401  (registers the tiny-* model source)
from nsync.models.text_embedder import TextEmbedder
from nsync.models.zoo import (
    BUNDLED,
    MODEL_SOURCES,
    LoadedModel,
    ModelConfig,
    ModelSource,
    ResolvedModel,
    load_model,
    resolve_model,
    untrained_copy,
    wrap_model,
)

__all__ = [
    "BUNDLED",
    "MODEL_SOURCES",
    "ModelSource",
    "LoadedModel",
    "ModelConfig",
    "ResolvedModel",
    "load_model",
    "TextEmbedder",
    "resolve_model",
    "untrained_copy",
    "wrap_model",
]
