"""Replies from an OpenAI-compatible completions server (vLLM, llama.cpp's server, ...).

Each request carries the prompt nsync rendered, as token ids (the raw completions endpoint, no
server-side template), so the prompt the states are later re-read from
(:mod:`nsync.simulation.capture`) is token-identical to the one the server continued. Replies are
streamed and the stream is closed as soon as :func:`~nsync.simulation.generation.reply_complete`
says the reply is complete, the same rule nsync's own loop stops by; a closed stream ends the
request on vLLM and llama.cpp. Every request has its own seed (from its run, utterance and
attempt), so a conversation's text does not depend on what else the server is doing.

vLLM: ``vllm serve HuggingFaceTB/SmolLM2-135M-Instruct --port 8000``; llama.cpp:
``python -m llama_cpp.server --model SmolLM2-135M-Instruct.Q4_1.gguf --port 8000``; then
``python -m nsync simulate ... generation.backend=openai generation.base_url=http://127.0.0.1:8000/v1``.
"""

from __future__ import annotations

import hashlib
import logging
import os
import threading
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

from nsync.errors import NsyncError
from nsync.simulation.config import GenerationConfig, SamplingConfig
from nsync.simulation.generation import reply_complete

log = logging.getLogger("nsync.simulate")


@dataclass
class Completion:
    """One streamed reply: its text up to where it was complete and how many tokens (stream
    chunks: one per token on vLLM and llama.cpp) the server generated for it."""

    text: str
    n_tokens: int


#: What turns off each server family's own samplers: nsync samples with temperature and top_p only,
#: but llama.cpp's servers default to top_k 40 and min_p 0.05 (llama-cpp-python also to a
#: repetition penalty of 1.1), and vLLM may take defaults from the model's generation config. No
#: one value serves both: vLLM refuses top_k 0, llama-cpp-python top_k -1.
NEUTRAL_SAMPLERS = {
    "vllm": {"top_k": -1, "min_p": 0.0, "repetition_penalty": 1.0},
    "llama.cpp": {"top_k": 0, "min_p": 0.0, "repeat_penalty": 1.0},
}
#: A server's family from the ``owned_by`` of its model list (llama.cpp's llama-server, llama-cpp-python, vLLM).
OWNERS = {"vllm": "vllm", "llamacpp": "llama.cpp", "me": "llama.cpp"}


def request_seed(base_seed: int, run_id: str, utterance: int, attempt: int) -> int:
    """The sampling seed of one request: a re-sampled reply (``attempt`` > 0) gets a new one."""
    digest = hashlib.sha256(f"{base_seed}|{run_id}|{utterance}|{attempt}".encode()).digest()
    return int.from_bytes(digest[:4], "little") & 0x7FFFFFFF  # llama.cpp takes 32-bit seeds


class CompletionsBackend:
    """Sends prompts (token ids) to the server that serves each nsync model, ``concurrency`` at once.

    >>> backend = CompletionsBackend(GenerationConfig(backend="openai"), SamplingConfig(), ["smollm2-135m"])  # doctest: +SKIP
    >>> backend.complete("smollm2-135m", [[1, 2, 3]], [0])[0].text                                              # doctest: +SKIP
    """

    def __init__(self, cfg: GenerationConfig, sampling: SamplingConfig, models: list[str]):
        from openai import OpenAI

        self.cfg, self.sampling = cfg, sampling
        key = os.environ.get(cfg.api_key_env) or "no-key"  # local servers ignore the key; the SDK wants one
        self.urls = {m: cfg.urls.get(m, cfg.base_url) for m in models}
        clients = {url: OpenAI(base_url=url, api_key=key, max_retries=cfg.max_retries, timeout=cfg.timeout) for url in set(self.urls.values())}
        self.clients = {m: clients[url] for m, url in self.urls.items()}
        self.served, self.family = {}, {}
        for m in models:
            self.served[m], self.family[m] = self._served_name(m)
        self._checked: set[str] = set()  # models whose text prompts the server was seen to tokenise as nsync does
        self._check_lock = threading.Lock()
        self.pool = ThreadPoolExecutor(cfg.concurrency, thread_name_prefix="nsync-completions")

    def _served_name(self, model: str) -> tuple[str, str | None]:
        """The name the server serves ``model`` under, checked against its model list, and the
        server's family (``generation.server``, or told by the list's ``owned_by``)."""
        import openai

        url = self.urls[model]
        try:
            listed = self.clients[model].with_options(max_retries=1).models.list().data  # an absent server fails fast
        except openai.APIConnectionError as err:
            raise NsyncError(
                f"cannot reach the completions server at {url} ({err}); start it (docs: 'Generate on a serving engine') or set generation.base_url"
            ) from None
        except openai.AuthenticationError:
            raise NsyncError(f"the server at {url} refused the API key; set it in the variable named by generation.api_key_env") from None
        served = [m.id for m in listed]
        name = self.cfg.served_models.get(model) or (served[0] if len(served) == 1 else model)
        if name not in served:
            raise NsyncError(
                f"the server at {url} does not serve '{name}' (for {model}); it serves {served}: set generation.served_models.{model}=<one of them>"
            )
        family = self.cfg.server if self.cfg.server != "auto" else OWNERS.get(next(m.owned_by for m in listed if m.id == name))
        if family is None:
            log.warning(
                "the server at %s is neither vLLM nor llama.cpp (set generation.server if it is): nsync sends only temperature and top_p; "
                "if the server samples with more (top_k, min_p, a repetition penalty), turn them off in generation.extra_body",
                url,
            )
        return name, family

    def complete(self, model: str, prompts: list[list[int]], texts: list[str], seeds: list[int]) -> list[Completion]:
        """One reply per prompt (its token ids and, for ``prompt_as=text``, its rendered text), in order."""
        if self.cfg.prompt_as == "text" and prompts:
            self._check_tokenisation(model, prompts[0], texts[0])
        return list(self.pool.map(lambda args: self._one(model, *args), zip(prompts, texts, seeds, strict=True)))

    def _prompt(self, ids: list[int], text: str) -> list[int] | str:
        return ids if self.cfg.prompt_as == "tokens" else text

    def _check_tokenisation(self, model: str, ids: list[int], text: str) -> None:
        """Once per model: the server must read a text prompt as as many tokens as nsync does, or
        the states re-read from nsync's tokens would not be of the prompt the server continued."""
        with self._check_lock:
            if model in self._checked:
                return
            reply = self._call(model, text, max_tokens=1, stream=False, seed=0)
            counted = getattr(reply.usage, "prompt_tokens", None) if reply.usage is not None else None
            if counted is None:
                raise NsyncError(
                    f"the server at {self.urls[model]} reports no prompt token count, so a text prompt's tokens cannot be checked: use generation.prompt_as=tokens"
                )
            if counted != len(ids):
                raise NsyncError(
                    f"the server at {self.urls[model]} reads the prompt as {counted} tokens, nsync's tokenizer for {model} as {len(ids)} "
                    "(a BOS token added, another tokenizer?): the states would not be of the prompt the server continued; serve the same "
                    "tokenizer, or use a server that takes token ids (generation.prompt_as=tokens)"
                )
            self._checked.add(model)

    def _call(self, model: str, prompt: list[int] | str, max_tokens: int, stream: bool, seed: int):
        """One completions request, its errors turned into what to fix."""
        import openai

        s = self.sampling
        family = self.family[model]
        extra = (NEUTRAL_SAMPLERS[family] if family in NEUTRAL_SAMPLERS else {}) | dict(self.cfg.extra_body)
        try:
            return self.clients[model].completions.create(
                model=self.served[model],
                prompt=prompt,
                max_tokens=max_tokens,
                temperature=s.temperature,
                top_p=s.top_p,
                seed=seed,
                stop=[x for x in s.stop_strings if x] or None,
                stream=stream,
                extra_body=extra or None,
            )
        except openai.APIConnectionError as err:
            raise NsyncError(f"lost the completions server at {self.urls[model]} after {self.cfg.max_retries} retries: {err}") from None
        except openai.BadRequestError as err:
            raise NsyncError(
                f"the server at {self.urls[model]} refused a prompt for {model}: {err.message} (a prompt longer than its context? start it with a larger one)"
            ) from None
        except openai.APIStatusError as err:
            raise NsyncError(
                f"the server at {self.urls[model]} failed a request for {model} after {self.cfg.max_retries} retries: HTTP {err.status_code} {err.message}"
            ) from None

    def _one(self, model: str, ids: list[int], text: str, seed: int) -> Completion:
        import openai

        stream = self._call(model, self._prompt(ids, text), self.sampling.max_new_tokens, True, seed)
        reply, n, finished = "", 0, None
        try:
            with stream:  # leaving the block closes the response: the server stops generating
                for chunk in stream:
                    if not chunk.choices:
                        continue
                    n += 1
                    reply += chunk.choices[0].text or ""
                    finished = chunk.choices[0].finish_reason
                    if reply_complete(reply, self.sampling):
                        finished = "complete"
                        break
        except openai.APIError as err:  # the stream broke off
            raise NsyncError(f"the server at {self.urls[model]} broke off a reply for {model}: {err}") from None
        if finished is None:  # [DONE] without a finish reason: the server cut the reply short
            raise NsyncError(
                f"the server at {self.urls[model]} ended a reply for {model} without a finish reason (after {n} tokens): it interrupts "
                "a reply when the next request arrives (llama-cpp-python does by default: start it with --interrupt_requests False)"
            )
        return Completion(reply, n)

    def close(self) -> None:
        self.pool.shutdown(wait=False, cancel_futures=True)
