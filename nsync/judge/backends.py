"""Judge backends: any OpenAI-compatible chat endpoint, or a local zoo model read by its
probabilities.

A chat judge answers with JSON; an answer that does not parse or validate is sent back with
what was wrong, up to ``max_attempts`` times, and then recorded as a failure with the raw
answers. A failure is never a silent zero and never dropped from the count.

A small local model cannot write reliable JSON, so the local judge never generates: for every
agent and dimension it reads the model's probability of each allowed integer (followed by a
newline) after a "Score:" cue, and reports the expected value and the argmax. It is
deterministic and always parses.
"""

from __future__ import annotations

import copy
import os
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Protocol

import numpy as np
import torch

from nsync.errors import NsyncError
from nsync.judge.rubric import DIMENSIONS, agent_keys, dimension_question, episode_context, json_request
from nsync.judge.schema import AnswerError, parse_answer
from nsync.models.forward import accepts, cache_kwarg, kv_cache
from nsync.registry import Registry
from nsync.scenarios import Episode
from nsync.simulation.prompts import Utterance

if TYPE_CHECKING:
    from openai.types.chat import ChatCompletionMessageParam

#: The answer keys of a dyad's agents; ``agent_keys(episode.n_agents)`` for any episode.
AGENTS = tuple(agent_keys(2))


@dataclass
class Judgement:
    """One episode's scores: ``scores[agent][dimension]`` (agent ``agent_a``, ``agent_b``, ...)."""

    ok: bool
    scores: dict[str, dict[str, float]] = field(default_factory=dict)
    argmax: dict[str, dict[str, int]] = field(default_factory=dict)  # local judge only
    attempts: int = 1
    raw: list[str] = field(default_factory=list)
    error: str = ""
    reasoning: str = ""


class JudgeBackend(Protocol):
    """A judge of social performance (``backend=NAME`` in the judge config). Register one with
    ``@JUDGE_BACKENDS.register("name")``."""

    kind: str
    max_attempts: int

    @classmethod
    def from_config(cls, cfg) -> JudgeBackend:
        """Build it from a :class:`nsync.judge.run.JudgeConfig` (``cfg.options`` holds extra settings)."""

    def identity(self) -> dict:
        """What decides its answers (stored judgements are re-used while it stays the same)."""

    def prompt(self, episode: Episode, history: list[Utterance]) -> str:
        """The text it judges (stored beside the scores)."""

    def score(self, episode: Episode, history: list[Utterance]) -> Judgement:
        """Scores for every agent (``agent_keys(episode.n_agents)``) on every dimension (``Judgement.ok`` False on failure)."""


#: Registered judge backends, by name.
JUDGE_BACKENDS: Registry[type[JudgeBackend]] = Registry("judge backend")


@JUDGE_BACKENDS.register("openai")
class ChatJudge:
    """A judge behind an OpenAI-compatible ``/v1/chat/completions`` endpoint (vLLM, llama.cpp
    server, Ollama, OpenAI). The API key is read from the environment variable ``api_key_env``
    and never logged or stored.

    >>> judge = ChatJudge("http://127.0.0.1:8000/v1", "Qwen/Qwen2.5-72B-Instruct")  # doctest: +SKIP
    >>> judge.score(episode, history).scores["agent_a"]["goal"]                     # doctest: +SKIP
    """

    kind = "openai"

    @classmethod
    def from_config(cls, cfg) -> ChatJudge:
        return cls(cfg.base_url, cfg.model, cfg.api_key_env, cfg.temperature, cfg.max_tokens, cfg.max_attempts, cfg.timeout)

    def __init__(
        self,
        base_url: str,
        model: str,
        api_key_env: str = "OPENAI_API_KEY",
        temperature: float = 0.0,
        max_tokens: int = 1024,
        max_attempts: int = 3,
        timeout: float = 120.0,
    ):
        from openai import OpenAI

        if max_attempts < 1:
            raise NsyncError("judge max_attempts must be at least 1")
        self.base_url, self.model = base_url, model
        self.temperature, self.max_tokens, self.max_attempts = temperature, max_tokens, max_attempts
        # Local servers ignore the key; the SDK still wants one.
        key = os.environ.get(api_key_env) or "no-key"
        self.client = OpenAI(base_url=base_url, api_key=key, max_retries=2, timeout=timeout)

    def identity(self) -> dict:
        """What decides the answers (the cache key of a judgement); the key is not part of it."""
        return {
            "backend": self.kind,
            "base_url": self.base_url,
            "model": self.model,
            "temperature": self.temperature,
            "max_tokens": self.max_tokens,
            "max_attempts": self.max_attempts,
        }

    def prompt(self, episode: Episode, history: list[Utterance]) -> str:
        return json_request(episode, history)

    def score(self, episode: Episode, history: list[Utterance]) -> Judgement:
        import openai

        messages: list[ChatCompletionMessageParam] = [{"role": "user", "content": self.prompt(episode, history)}]
        raw: list[str] = []
        error = ""
        for attempt in range(1, self.max_attempts + 1):
            try:
                reply = self.client.chat.completions.create(
                    model=self.model, messages=messages, temperature=self.temperature, max_tokens=self.max_tokens
                )
                text = reply.choices[0].message.content or ""
            except openai.APIConnectionError as err:
                raise NsyncError(f"cannot reach the judge at {self.base_url}: {err}; is the server running?") from None
            except openai.AuthenticationError:
                raise NsyncError(f"the judge at {self.base_url} refused the API key; set the judge's api_key_env variable") from None
            except openai.NotFoundError as err:
                raise NsyncError(f"the judge at {self.base_url} does not know model '{self.model}': {err}") from None
            except openai.APIStatusError as err:  # a server error on this episode: counted as a failed attempt
                raw.append(f"HTTP {err.status_code}: {err.message}")
                error = f"HTTP {err.status_code}"
                continue
            raw.append(text)
            try:
                parsed = parse_answer(text, episode.n_agents)
            except AnswerError as err:
                error = str(err)
                messages += [
                    {"role": "assistant", "content": text},
                    {
                        "role": "user",
                        "content": f"That answer could not be used: {err}. "
                        "Answer again with only the JSON object, every score an integer in its range.",
                    },
                ]
                continue
            scores = {a: getattr(parsed, a).model_dump() for a in agent_keys(episode.n_agents)}
            return Judgement(True, scores, attempts=attempt, raw=raw, reasoning=parsed.reasoning)
        return Judgement(False, attempts=self.max_attempts, raw=raw, error=error)


@JUDGE_BACKENDS.register("local")
class LocalJudge:
    """A zoo model as judge, scored by its probabilities over the allowed integers.

    >>> judge = LocalJudge(load_model("smollm2-135m"))   # doctest: +SKIP
    """

    kind = "local"

    @classmethod
    def from_config(cls, cfg) -> LocalJudge:
        from nsync.models import ModelConfig, load_model

        return cls(load_model(ModelConfig(name=cfg.model, device=cfg.device, dtype=cfg.dtype)))

    def __init__(self, lm):
        self.lm = lm
        self.max_attempts = 1
        tok = lm.tokenizer
        # Each candidate is " <integer>\\n": the newline ends the number, so " 1" does not take
        # the probability of " 10".
        self.candidates = {d.name: [tok(f" {v}\n", add_special_tokens=False)["input_ids"] for v in d.values] for d in DIMENSIONS}

    def identity(self) -> dict:
        return {"backend": self.kind, "model": self.lm.name, "checksum": self.lm.checksum}

    def prompt(self, episode: Episode, history: list[Utterance]) -> str:
        return episode_context(episode, history) + "".join(dimension_question(episode, a, d) for a in range(episode.n_agents) for d in DIMENSIONS)

    @torch.inference_mode()
    def distributions(self, episode: Episode, history: list[Utterance]) -> dict[str, dict[str, np.ndarray]]:
        """``[agent][dimension]`` -> probabilities over the dimension's integers."""
        model, tok = self.lm.model, self.lm.tokenizer
        device = self.lm.device
        bos = [tok.bos_token_id] if tok.bos_token_id is not None else []
        ctx = torch.tensor([bos + tok(episode_context(episode, history), add_special_tokens=False)["input_ids"]], device=device)
        arg = cache_kwarg(model)
        # Only the last position's logits are ever read: skip the vocabulary projection of the rest.
        keep = {"logits_to_keep": 1} if accepts(model, "logits_to_keep") else {}
        ctx_cache = kv_cache(model(ctx, use_cache=True, **keep))
        out: dict[str, dict[str, np.ndarray]] = {}
        for agent, key in enumerate(agent_keys(episode.n_agents)):
            out[key] = {}
            for dim in DIMENSIONS:
                q = torch.tensor([tok(dimension_question(episode, agent, dim), add_special_tokens=False)["input_ids"]], device=device)
                cache = copy.deepcopy(ctx_cache)
                first = model(q, use_cache=True, **keep, **{arg: cache})
                out[key][dim.name] = self._candidate_probs(first, self.candidates[dim.name], arg)
        return out

    def _candidate_probs(self, first, candidates: list[list[int]], arg: str) -> np.ndarray:
        """log P(candidate) = sum of its tokens' log-probabilities; softmax over candidates."""
        model = self.lm.model
        n, width = len(candidates), max(len(c) for c in candidates)
        pad = candidates[0][0]
        ids = torch.tensor([c + [pad] * (width - len(c)) for c in candidates], device=self.lm.device)
        cache = kv_cache(first)
        cache.batch_repeat_interleave(n)
        # Trailing pads only attend to what comes before them, so they change no real token.
        logits = model(ids, use_cache=False, **{arg: cache}).logits.float()
        logp = torch.cat([first.logits[:, -1:].float().expand(n, -1, -1), logits[:, :-1]], dim=1).log_softmax(-1)
        token_logp = logp.gather(2, ids[..., None])[..., 0]
        lengths = torch.tensor([len(c) for c in candidates], device=ids.device)
        mask = torch.arange(width, device=ids.device)[None, :] < lengths[:, None]
        total = (token_logp * mask).sum(1)
        return total.softmax(0).cpu().numpy()

    def score(self, episode: Episode, history: list[Utterance]) -> Judgement:
        dists = self.distributions(episode, history)
        values = {d.name: np.array(d.values, dtype=float) for d in DIMENSIONS}
        scores = {a: {d: float(p @ values[d]) for d, p in dims.items()} for a, dims in dists.items()}
        argmax = {a: {d: int(values[d][int(p.argmax())]) for d, p in dims.items()} for a, dims in dists.items()}
        return Judgement(True, scores, argmax, attempts=1)
