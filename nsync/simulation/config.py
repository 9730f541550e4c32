"""The config of ``python -m nsync simulate``; every field's help line is its documentation."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Optional

from omegaconf import MISSING

from nsync.errors import NsyncError
from nsync.simulation.prompts import FORMATS, LAYOUTS, OBSERVER_PROMPT_VERSION
from nsync.simulation.turns import TurnTakingConfig


@dataclass
class SamplingConfig:
    """How replies are sampled."""

    temperature: float = field(default=0.7, metadata={"help": "softmax temperature; 0 means greedy"})
    top_p: float = field(default=1.0, metadata={"help": "nucleus sampling mass (1.0 = off)"})
    max_new_tokens: int = field(default=300, metadata={"help": "longest reply in tokens"})
    first_line_only: bool = field(default=True, metadata={"help": "cut each reply to its first non-empty line (the paper's)"})
    stop_strings: list[str] = field(default_factory=list, metadata={"help": "extra strings that end a reply"})
    no_repeat_ngram: int = field(
        default=4,
        metadata={
            "help": "ban every run of this many tokens that the prompt or the reply already holds (0 = off; the paper: off), so a reply cannot copy a span of its prompt or of the conversation (HF's no_repeat_ngram_size)"
        },
    )
    repetition_penalty: float = field(
        default=1.0, metadata={"help": "divide the logits of tokens the prompt or the reply holds by this (1.0 = off; HF's repetition_penalty)"}
    )

    def logits_processors(self):
        """HF's processors for the repetition settings (None when both are off)."""
        from transformers import LogitsProcessorList, NoRepeatNGramLogitsProcessor, RepetitionPenaltyLogitsProcessor

        found = LogitsProcessorList()
        if self.repetition_penalty != 1.0:
            found.append(RepetitionPenaltyLogitsProcessor(self.repetition_penalty))
        if self.no_repeat_ngram > 0:
            found.append(NoRepeatNGramLogitsProcessor(self.no_repeat_ngram))
        return found or None


@dataclass
class ScenarioSelection:
    """Which episodes to simulate."""

    source: str = field(
        default="builtin",
        metadata={"help": "'builtin' (nsync's dyads), 'builtin-groups' (three- and four-agent scenarios) or the folder of a SOTOPIA JSON export"},
    )
    ids: list[str] = field(default_factory=list, metadata={"help": "episode ids, scenario ids or codenames (empty: all)"})
    limit: Optional[int] = field(default=None, metadata={"help": "keep only the first N selected episodes"})

    def __post_init__(self) -> None:
        if self.limit is not None and self.limit < 1:
            raise NsyncError(f"scenarios.limit must be a positive number of episodes, or null for all of them, got {self.limit}")


@dataclass
class CaptureConfig:
    """What is recorded at every utterance."""

    observer: bool = field(default=True, metadata={"help": "also record the passive re-reader's states (condition 'observer')"})
    listener: bool = field(
        default=False,
        metadata={
            "help": "also record the partner's state reading the same history with its own prompt (condition 'listener', the same-time control)"
        },
    )
    generated_mean: bool = field(default=False, metadata={"help": "also record the mean state over the reply's tokens (condition 'generated_mean')"})
    dtype: str = field(default="float16", metadata={"help": "stored precision: float16 or float32"})
    mode: str = field(
        default="auto",
        metadata={
            "help": "generation: states from the generation's own passes (hf backend only); reread: text first, then states from prefill-only passes of each finished run, one pass per chain of prompts that extend each other (nsync.simulation.capture); auto: generation with the hf backend, reread with openai"
        },
    )
    max_batch_tokens: int = field(default=16384, metadata={"help": "reread: most padded tokens per prefill batch (memory)"})
    single_pass: bool = field(
        default=False,
        metadata={
            "help": "reread: read every prompt that a longer one of the same agent starts with inside that one's pass (the chat format's); false: a pass per prompt, re-using the previous one's keys and values (the same tokens computed; on a CPU 19% faster in the chat format, with less padding)"
        },
    )

    def resolved_mode(self, backend: str) -> str:
        """The capture mode a backend gets: a server's replies carry no states, so ``openai`` re-reads."""
        return self.mode if self.mode != "auto" else ("generation" if backend == "hf" else "reread")


#: Generation backends: nsync's own batched loop, or any OpenAI-compatible completions server.
BACKENDS = ("hf", "openai")


@dataclass
class GenerationConfig:
    """Where replies are generated: ``hf`` (nsync's batched transformers loop) or ``openai`` (any
    OpenAI-compatible ``/v1/completions`` server: vLLM, llama.cpp's server, ...), which gets the
    prompt nsync rendered as token ids, so the re-read prompt is token-identical."""

    backend: str = field(default="hf", metadata={"help": f"one of {BACKENDS}"})
    base_url: str = field(default="http://127.0.0.1:8000/v1", metadata={"help": "openai: the server's address (ending in /v1)"})
    urls: dict[str, str] = field(default_factory=dict, metadata={"help": "openai: per nsync model, another server's address (one server per model)"})
    served_models: dict[str, str] = field(
        default_factory=dict,
        metadata={"help": "openai: per nsync model, the name the server serves it under (default: the server's only model, else the nsync name)"},
    )
    prompt_as: str = field(
        default="tokens",
        metadata={
            "help": "openai: send the rendered prompt as token ids (vLLM, llama.cpp's own server) or as text (servers that take only strings, e.g. llama-cpp-python's); text is checked once per model: the server must count as many prompt tokens as nsync's tokenizer"
        },
    )
    server: str = field(
        default="auto",
        metadata={
            "help": "openai: the server's family, whose own samplers (top_k, min_p, repetition penalties) nsync turns off: vllm, llama.cpp, other (send nothing more), or auto (told by the server's model list)"
        },
    )
    api_key_env: str = field(default="OPENAI_API_KEY", metadata={"help": "openai: environment variable holding the API key (never logged)"})
    concurrency: int = field(default=16, metadata={"help": "openai: requests in flight at once (the server batches them)"})
    timeout: float = field(default=120.0, metadata={"help": "openai: seconds per request"})
    max_retries: int = field(
        default=4, metadata={"help": "openai: retries of a failed request (connection errors, 429, 5xx), with exponential backoff"}
    )
    extra_body: dict[str, Any] = field(
        default_factory=dict, metadata={"help": "openai: server-specific sampling parameters added to every request (e.g. vLLM's min_p)"}
    )


@dataclass
class SimulateConfig:
    """Social episodes of two or more agents with every layer's hidden state cached."""

    out: str = field(default=MISSING, metadata={"help": "cache folder to write (created; resumed if it holds this config)"})
    models: list[str] = field(
        default_factory=lambda: ["smollm2-135m"], metadata={"help": "one model (every agent) or several: agent i plays models[i % len(models)]"}
    )
    device: str = field(default="cpu", metadata={"help": "cpu, cuda, cuda:N or auto"})
    dtype: str = field(
        default="auto",
        metadata={"help": "model precision: float32, bfloat16, float16, or auto (bfloat16 on GPUs and on CPUs with bfloat16 hardware, else float32)"},
    )
    trust_remote_code: bool = field(default=False, metadata={"help": "allow custom modelling code shipped with a checkpoint"})
    both_orders: bool = field(
        default=False, metadata={"help": "with several models, also run every rotation of the list over the agents (two models: the swapped order)"}
    )
    prompt_format: str = field(default="sotopia", metadata={"help": f"one of {FORMATS}; models without a chat template use transcript"})
    prompt_layout: str = field(
        default="fields",
        metadata={
            "help": f"one of {LAYOUTS}: fields (the paper's 'Scenario:', 'NAME's goal:' lines) or prose (paragraphs, the goal stated once as an instruction)"
        },
    )
    max_turns: int = field(default=16, metadata={"help": "most utterances per episode"})
    turn_taking: TurnTakingConfig = field(default_factory=TurnTakingConfig)
    min_utterances: int = field(
        default=2, metadata={"help": "an agent may leave only from this utterance on (2: each agent has spoken once); earlier leaves are ignored"}
    )
    max_resamples: int = field(
        default=3,
        metadata={
            "help": "a rejected reply (empty before min_utterances; with resample_echo, an echo) is re-sampled from the same utterance's random stream at most this many times, then recorded and flagged"
        },
    )
    resample_echo: bool = field(
        default=True,
        metadata={
            "help": "also re-sample replies that recite the prompt or repeat a line (flag echo:<kind>, nsync.simulation.echo; the paper: false)"
        },
    )
    seeds: list[int] = field(default_factory=lambda: [0], metadata={"help": "sampling seeds; each episode runs once per seed"})
    scenarios: ScenarioSelection = field(default_factory=ScenarioSelection)
    sampling: SamplingConfig = field(default_factory=SamplingConfig)
    capture: CaptureConfig = field(default_factory=CaptureConfig)
    generation: GenerationConfig = field(default_factory=GenerationConfig)
    episodes_in_flight: int = field(default=16, metadata={"help": "episodes advanced together (the generation batch)"})
    flush_every: int = field(default=16, metadata={"help": "finished episodes per atomic cache write"})
    reuse_prefix: bool = field(
        default=True, metadata={"help": "re-use the keys/values of each agent's previous prompt (full-attention and sliding-window models)"}
    )
    resume: bool = field(default=True, metadata={"help": "continue a cache of the same config instead of refusing"})
    progress: bool = field(default=True, metadata={"help": "show a progress bar"})

    def __post_init__(self) -> None:
        if not self.models:
            raise NsyncError("models must list at least one model")
        if self.prompt_format not in FORMATS:
            raise NsyncError(f"prompt_format must be one of {FORMATS}, got '{self.prompt_format}'")
        if self.prompt_layout not in LAYOUTS:
            raise NsyncError(f"prompt_layout must be one of {LAYOUTS}, got '{self.prompt_layout}'")
        if self.max_turns < 1:
            raise NsyncError(f"max_turns must be at least 1, got {self.max_turns}")
        for key in ("min_utterances", "max_resamples"):
            if getattr(self, key) < 0:
                raise NsyncError(f"{key} must be at least 0, got {getattr(self, key)}")
        if not self.seeds:
            raise NsyncError("seeds must list at least one sampling seed")
        if len(set(self.seeds)) < len(self.seeds):
            raise NsyncError(f"seeds lists a seed twice ({list(self.seeds)}): each seed names one run per episode and model order")
        for key in ("episodes_in_flight", "flush_every"):
            if getattr(self, key) < 1:
                raise NsyncError(f"{key} must be at least 1, got {getattr(self, key)}")
        if self.capture.dtype not in ("float16", "float32"):
            raise NsyncError(f"capture.dtype must be float16 or float32, got '{self.capture.dtype}'")
        if self.capture.max_batch_tokens < 1:
            raise NsyncError(f"capture.max_batch_tokens must be at least 1, got {self.capture.max_batch_tokens}")
        self._check_sampling()
        self._check_generation()

    def _check_sampling(self) -> None:
        sampling = self.sampling
        if sampling.max_new_tokens < 1:
            raise NsyncError(f"sampling.max_new_tokens must be at least 1, got {sampling.max_new_tokens}")
        if not 0 < sampling.top_p <= 1:
            raise NsyncError(f"sampling.top_p must be above 0 and at most 1 (1.0: off), got {sampling.top_p}")
        if sampling.temperature < 0:
            raise NsyncError(f"sampling.temperature must be at least 0 (0: greedy), got {sampling.temperature}")
        if sampling.no_repeat_ngram < 0:
            raise NsyncError(f"sampling.no_repeat_ngram must be 0 (off) or a positive number of tokens, got {sampling.no_repeat_ngram}")
        if sampling.repetition_penalty <= 0:
            raise NsyncError(f"sampling.repetition_penalty must be positive (1.0: off), got {sampling.repetition_penalty}")

    def _check_generation(self) -> None:
        gen, capture = self.generation, self.capture
        if gen.backend not in BACKENDS:
            raise NsyncError(f"generation.backend must be one of {BACKENDS}, got '{gen.backend}'")
        if capture.mode not in ("auto", "generation", "reread"):
            raise NsyncError(f"capture.mode must be auto, generation or reread, got '{capture.mode}'")
        mode = capture.resolved_mode(gen.backend)
        if mode == "generation" and gen.backend != "hf":
            raise NsyncError(
                "capture.mode=generation needs generation.backend=hf: a server's replies carry no states; use capture.mode=reread (or auto)"
            )
        if mode == "reread" and capture.generated_mean:
            raise NsyncError(
                "capture.generated_mean needs the reply's tokens inside the generation: use generation.backend=hf with capture.mode=generation"
            )
        if gen.backend == "openai":
            if self.sampling.no_repeat_ngram > 0:
                raise NsyncError(
                    f"sampling.no_repeat_ngram={self.sampling.no_repeat_ngram} has no equivalent in the completions protocol: set "
                    "sampling.no_repeat_ngram=0 (the paper's setting), and pass the server's own setting, if it has one, in generation.extra_body"
                )
            if self.sampling.repetition_penalty != 1.0:
                raise NsyncError(
                    "sampling.repetition_penalty is transformers' penalty, which servers implement differently (llama.cpp over the last 64 tokens): "
                    "leave it at 1.0 and pass the server's own setting in generation.extra_body"
                )
            if gen.server not in ("auto", "vllm", "llama.cpp", "other"):
                raise NsyncError(f"generation.server must be auto, vllm, llama.cpp or other, got '{gen.server}'")
            if gen.prompt_as not in ("tokens", "text"):
                raise NsyncError(f"generation.prompt_as must be tokens or text, got '{gen.prompt_as}'")
            if gen.concurrency < 1:
                raise NsyncError(f"generation.concurrency must be at least 1, got {gen.concurrency}")
            if gen.max_retries < 0:
                raise NsyncError(f"generation.max_retries must be at least 0, got {gen.max_retries}")
            if gen.timeout <= 0:
                raise NsyncError(f"generation.timeout must be a positive number of seconds, got {gen.timeout}")

    def identity(self) -> dict:
        """The fields that decide what each conversation in a cache holds. Runtime knobs (batch
        size, device) are left out, and so is which conversations there are (``seeds``,
        ``scenarios.ids``, ``scenarios.limit``): every run depends only on its episode, seed and
        this identity, so a cache grows when re-run with a larger limit or more seeds."""
        from nsync.config import to_dict

        d = to_dict(self)
        for key in ("out", "resume", "episodes_in_flight", "flush_every", "progress", "device", "reuse_prefix", "seeds"):
            d.pop(key)
        # how states are captured does not change them (tests/test_capture.py); where the text comes from does
        for key in ("mode", "max_batch_tokens", "single_pass"):
            d["capture"].pop(key)
        d["generation"] = {"backend": self.generation.backend} | (
            {"served_models": dict(self.generation.served_models), "extra_body": dict(self.generation.extra_body)}
            if self.generation.backend != "hf"
            else {}
        )
        for key in ("ids", "limit"):
            d["scenarios"].pop(key)
        if self.capture.observer:  # observer states of earlier versions were read at other tokens
            d["observer_prompt"] = OBSERVER_PROMPT_VERSION
        return d

    @staticmethod
    def identity_defaults() -> dict:
        """Identity keys added after caches were first written, with the value those caches had
        (so they still open, and a cache of another value does not)."""
        from nsync.config import to_dict

        return {
            "turn_taking": to_dict(TurnTakingConfig()),
            "observer_prompt": 1,
            "resample_echo": False,
            "prompt_layout": "fields",
            "sampling": {"no_repeat_ngram": 0, "repetition_penalty": 1.0},
            "generation": {"backend": "hf"},
        }
