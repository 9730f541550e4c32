"""Tiny random-weight models and an offline tokenizer, for tests and quick experiments.

Nothing is downloaded: the tokenizer is a byte-level BPE trained in a few milliseconds on a
fixed text, and the models are built from configs in code.

>>> lm = tiny_model("llama")
>>> lm.n_layers, lm.hidden_size
(2, 32)
"""

from __future__ import annotations

from functools import cache

import torch

from nsync.models.zoo import MODEL_SOURCES, TINY_PREFIX, LoadedModel, ModelConfig, pick_device, wrap_model

CHATML_TEMPLATE = (
    "{% for message in messages %}<|im_start|>{{ message['role'] }}\n{{ message['content'] }}<|im_end|>\n"
    "{% endfor %}{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)

_TRAINING_TEXT = """
Imagine you are a person in a social conversation. Keep your goal in mind. Turn 1: said: left the conversation.
The two friends are moving out of a shared apartment and need to split their possessions. I would like to
negotiate a fair price for the bicycle. Could you help me with my homework? Let's meet on Saturday at the park.
Background: age, occupation, gender, pronouns, public info, personality and values, decision-making style, secret.
Goal: convince the other person. Unknown. Scenario: colleagues, neighbours, strangers on a train, a family dinner.
0123456789 .,;:!?'"()[]{}-_/\\@#%&*+=<>|
"""


@cache
def tiny_tokenizer(vocab_size: int = 400):
    """A byte-level BPE tokenizer with a ChatML chat template; covers any text (bytes fallback)."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=["<|endoftext|>", "<|im_start|>", "<|im_end|>"],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tok.train_from_iterator([_TRAINING_TEXT] * 4, trainer=trainer)
    fast = PreTrainedTokenizerFast(
        tokenizer_object=tok,
        bos_token="<|im_start|>",
        eos_token="<|im_end|>",
        pad_token="<|endoftext|>",
        unk_token=None,
    )
    fast.chat_template = CHATML_TEMPLATE
    return fast


def _config(arch: str, vocab: int, n_layers: int, hidden: int, tokenizer):
    from transformers import Gemma3TextConfig, GPT2Config, LlamaConfig, Qwen2Config

    ids = dict(
        vocab_size=vocab,
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
    )
    common = dict(
        hidden_size=hidden,
        intermediate_size=2 * hidden,
        num_hidden_layers=n_layers,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=4096,
        **ids,
    )
    if arch == "llama":
        return LlamaConfig(**common)
    if arch == "qwen2":
        return Qwen2Config(**common)
    if arch == "gemma3":
        return Gemma3TextConfig(**common, head_dim=hidden // 4, sliding_window=64)
    if arch == "gpt2":
        return GPT2Config(n_embd=hidden, n_layer=n_layers, n_head=4, n_positions=4096, **ids)
    from nsync.errors import NsyncError

    raise NsyncError(f"unknown tiny architecture '{arch}'; use tiny-llama, tiny-qwen2, tiny-gemma3 or tiny-gpt2")


def tiny_model(arch: str = "llama", n_layers: int = 2, hidden: int = 32, seed: int = 0, chat: bool = True) -> LoadedModel:
    """A random-weight causal LM of the given architecture, wrapped like a zoo model.

    ``chat=False`` drops the chat template, which makes it behave like a base model.
    """
    from transformers import AutoModelForCausalLM

    tokenizer = tiny_tokenizer()
    if not chat:
        tokenizer = tiny_tokenizer.__wrapped__()
        tokenizer.chat_template = None
    config = _config(arch, len(tokenizer), n_layers, hidden, tokenizer)
    with torch.random.fork_rng(devices=[]):  # leave the caller's random state alone
        torch.manual_seed(seed)
        model = AutoModelForCausalLM.from_config(config, dtype=torch.float32).eval()
    return wrap_model(f"tiny-{arch}", model, tokenizer, source=f"random:{arch}:seed{seed}")


@MODEL_SOURCES.register("tiny")
class TinySource:
    """``tiny-llama``, ``tiny-qwen2``, ``tiny-gemma3``, ``tiny-gpt2``: random-weight models for tests."""

    def matches(self, name: str) -> bool:
        return name.startswith(TINY_PREFIX) and not name.endswith("@untrained")

    def load(self, cfg: ModelConfig) -> LoadedModel:
        lm = tiny_model(cfg.name[len(TINY_PREFIX) :])
        lm.model.to(pick_device(cfg.device))
        return lm
