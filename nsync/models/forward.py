"""What nsync needs to know about a model's forward pass: where its decoder blocks are, what
its forward arguments are called, where its KV cache comes back. The generator, the judge and
re-reading use these; a backend for another kind of model (TransformerLens, nnsight) would
provide the same."""

from __future__ import annotations

import inspect
from typing import Any, cast

from torch import nn

#: Attribute paths of the decoder blocks of known architectures (``config.model_type``).
DECODER_BLOCKS = {
    "llama": "model.layers",
    "mistral": "model.layers",
    "qwen2": "model.layers",
    "qwen3": "model.layers",
    "gemma": "model.layers",
    "gemma2": "model.layers",
    "gemma3_text": "model.layers",
    "phi3": "model.layers",
    "olmo2": "model.layers",
    "gpt2": "transformer.h",
    "gpt_neox": "gpt_neox.layers",
}


def decoder_layers(model: nn.Module) -> nn.ModuleList:
    """The model's list of decoder blocks: from :data:`DECODER_BLOCKS` for known architectures,
    else the only ``ModuleList`` whose length is the layer count (an error if there is none or
    more than one, rather than a guess).

    >>> from nsync.models.tiny import tiny_model
    >>> len(decoder_layers(tiny_model("gpt2").model))
    2
    """
    config: Any = model.config  # a transformers config (nn.Module does not declare it)
    cfg = config.get_text_config() if hasattr(config, "get_text_config") else config
    n = cfg.num_hidden_layers
    path = DECODER_BLOCKS.get(getattr(cfg, "model_type", ""))
    if path is not None:
        module: Any = model
        for part in path.split("."):
            module = getattr(module, part, None)
        if isinstance(module, nn.ModuleList) and len(module) == n:
            return module
    found = [name for name, m in model.named_modules() if isinstance(m, nn.ModuleList) and len(m) == n]
    if len(found) != 1:
        raise ValueError(
            f"cannot tell the {n} decoder blocks of {type(model).__name__} (candidates: {found or 'none'}); "
            f"add its model_type '{getattr(cfg, 'model_type', '?')}' to nsync.models.forward.DECODER_BLOCKS"
        )
    return cast(nn.ModuleList, model.get_submodule(found[0]))  # found holds ModuleLists only


def accepts(model: nn.Module, name: str) -> bool:
    return name in inspect.signature(model.forward).parameters


def cache_kwarg(model: nn.Module) -> str:
    """The forward argument that takes a KV cache: transformers 5.2x renamed `past_key_values` to `cache`."""
    return "cache" if accepts(model, "cache") else "past_key_values"


def kv_cache(out):
    """The KV cache a forward pass returned (under either name)."""
    cache = getattr(out, "cache", None)
    return cache if cache is not None else out.past_key_values
