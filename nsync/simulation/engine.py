"""Run many episodes (two or more agents each) together and stream finished ones into the cache.

Every step, the episodes in flight are grouped by the model whose agent speaks next, and each
group's replies come from one batched, left-padded generation. Finished episodes leave the
batch and new ones take their place; every ``flush_every`` finished episodes are committed
to the cache as one atomic shard, so a crash loses at most the episodes in flight.
"""

from __future__ import annotations

import hashlib
import time
from collections import deque
from dataclasses import dataclass, field

import numpy as np
import torch
from tqdm.auto import tqdm

from nsync.cache.layout import TurnRow
from nsync.cache.writer import CacheWriter
from nsync.errors import NsyncError
from nsync.models import LoadedModel
from nsync.scenarios import Episode
from nsync.simulation.capture import read_states
from nsync.simulation.config import SimulateConfig
from nsync.simulation.echo import echo_of
from nsync.simulation.generation import Generation, Generator
from nsync.simulation.prompts import Utterance, clean_reply, encode, prompt_format, render
from nsync.simulation.turns import TURN_POLICIES


@dataclass
class Run:
    """One conversation: an episode played by a model order with a sampling seed."""

    run_id: str
    episode: Episode
    models: tuple[str, ...]  # the model of each agent
    order: int
    seed: int
    speaker: int = 0  # who speaks the next utterance (set by the turn-taking policy)
    present: list[int] = field(default_factory=list)  # agents who have not left
    history: list[Utterance] = field(default_factory=list)
    rows: list[dict] = field(default_factory=list)
    states: dict[str, list[np.ndarray]] = field(default_factory=dict)
    listeners: dict[int, tuple[np.ndarray, int]] = field(default_factory=dict)  # each other agent's state before the next utterance
    attempt: int = 0  # how often the next utterance was sampled again so far
    stream: torch.Generator | None = None  # the next utterance's random stream, kept across re-samples
    done: bool = False

    def __post_init__(self) -> None:
        if not self.present:
            self.present = list(range(self.episode.n_agents))

    @property
    def listening(self) -> list[int]:
        """The agents present who do not speak next."""
        return [a for a in self.present if a != self.speaker]

    def others_models(self, agent: int) -> str:
        """The other agents' model ("|"-joined when they differ): the partner model of a row."""
        return "|".join(dict.fromkeys(m for a, m in enumerate(self.models) if a != agent))


@dataclass
class Reply:
    """One cleaned reply: its text, whether the agent left, tokens generated, what it recites
    (:func:`~nsync.simulation.echo.echo_of`) and its flags."""

    text: str
    left: bool
    n_new: int
    echo: str | None
    flags: list[str] = field(default_factory=list)


def plan_runs(cfg: SimulateConfig, episodes: list[Episode]) -> list[Run]:
    """Every (episode, model order, seed) combination, in a fixed order.

    Agent ``i`` plays ``models[i % len(models)]``; with ``both_orders`` the model list is also
    rotated (for two models: the swapped order), so every model speaks first once.
    """
    orders = [list(cfg.models)]
    if cfg.both_orders and len(set(cfg.models)) > 1:
        orders += [cfg.models[k:] + cfg.models[:k] for k in range(1, len(cfg.models))]
    policy = TURN_POLICIES.get(cfg.turn_taking.policy)(cfg.turn_taking)
    runs = []
    for episode in episodes:
        first = policy.first(episode)
        for order, models in enumerate(orders):
            cast = tuple(models[i % len(models)] for i in range(episode.n_agents))
            for seed in cfg.seeds:
                runs.append(Run(f"{episode.id}|o{order}|s{seed}", episode, cast, order, seed, speaker=first))
    return runs


def utterance_generator(base_seed: int, run_id: str, utterance: int, device: torch.device) -> torch.Generator:
    """The random stream of one utterance: the same whatever else shares its batch."""
    digest = hashlib.sha256(f"{base_seed}|{run_id}|{utterance}".encode()).digest()
    return torch.Generator(device=device).manual_seed(int.from_bytes(digest[:8], "little") & ((1 << 63) - 1))


@dataclass
class SimulationStats:
    runs: int = 0
    utterances: int = 0
    new_tokens: int = 0
    prompt_tokens: int = 0
    resampled: int = 0  # replies sampled again (empty too early, or with resample_echo an echo)
    seconds: float = 0.0
    capture_seconds: float = 0.0  # of which re-reading finished runs (capture.mode=reread)

    def line(self) -> str:
        minutes = max(self.seconds, 1e-9) / 60
        return (
            f"{self.runs} episodes, {self.utterances} utterances in {self.seconds:.1f} s: "
            f"{self.runs / minutes:.2f} episodes/min, {self.utterances / max(self.seconds, 1e-9):.2f} utterances/s, "
            f"{self.new_tokens / max(self.seconds, 1e-9):.1f} generated tokens/s, {self.resampled} replies re-sampled"
            + (f", {self.capture_seconds:.1f} s of it re-reading" if self.capture_seconds else "")
        )

    def as_dict(self) -> dict:
        return {
            **self.__dict__,
            "episodes_per_min": self.runs / max(self.seconds, 1e-9) * 60,
            "utterances_per_s": self.utterances / max(self.seconds, 1e-9),
            "tokens_per_s": self.new_tokens / max(self.seconds, 1e-9),
        }


class Simulator:
    """Advance runs in batches and hand finished ones to a :class:`CacheWriter`.

    Replies come from nsync's own loop (``generation.backend=hf``) or a completions server
    (``openai``, :mod:`nsync.simulation.remote`). States come from the generation's own passes
    (``capture.mode=generation``) or, once a run is finished, from re-reading its prompts
    (``reread``, :mod:`nsync.simulation.capture`): the same rows and states either way.
    """

    def __init__(self, cfg: SimulateConfig, models: dict[str, LoadedModel], writer: CacheWriter | None, capture: bool = True):
        self.cfg = cfg
        self.models = models
        self.writer = writer
        self.capture = capture
        self.reread = capture and cfg.capture.resolved_mode(cfg.generation.backend) == "reread"
        self.inline = capture and not self.reread  # states from the generation's passes
        self.generators = {name: Generator(lm, cfg.sampling) for name, lm in models.items()}
        self.policy = TURN_POLICIES.get(cfg.turn_taking.policy)(cfg.turn_taking)
        self.remote = None
        if cfg.generation.backend == "openai":
            from nsync.simulation.remote import CompletionsBackend

            self.remote = CompletionsBackend(cfg.generation, cfg.sampling, list(dict.fromkeys(cfg.models)))

    def text(self, name: str, run: Run, agent: int, history: list[Utterance], observer: bool = False) -> str:
        """The text ``agent`` (played by model ``name``) reads before the next utterance: its
        speaking prompt, or with ``observer`` the passive reader's view of it."""
        lm = self.models[name]
        fmt = prompt_format(lm, self.cfg.prompt_format)
        return render(lm.tokenizer, fmt, run.episode, agent, history, observer=observer, layout=self.cfg.prompt_layout)

    def prompt(self, name: str, run: Run, agent: int, history: list[Utterance], observer: bool = False) -> list[int]:
        """:meth:`text`'s token ids, what the model reads."""
        return encode(self.models[name], self.text(name, run, agent, history, observer))

    def _generate(self, name: str, runs: list[Run], prompts: list[list[int]]) -> tuple[list[tuple[str, int]], Generation | None]:
        """Each run's raw reply (text, tokens generated) and, capturing inline, the generation."""
        if self.remote is not None:
            from nsync.simulation.remote import request_seed

            seeds = [request_seed(r.seed, r.run_id, len(r.history), r.attempt) for r in runs]
            texts = [self.text(name, r, r.speaker, r.history) for r in runs] if self.cfg.generation.prompt_as == "text" else [""] * len(runs)
            return [(c.text, c.n_tokens) for c in self.remote.complete(name, prompts, texts, seeds)], None
        lm = self.models[name]
        streams = []
        for r in runs:
            if r.stream is None:
                r.stream = utterance_generator(r.seed, r.run_id, len(r.history), lm.device)
            streams.append(r.stream)
        out = self.generators[name].generate(
            prompts,
            streams,
            capture=self.inline,
            generated_mean=self.inline and self.cfg.capture.generated_mean,
            keys=[(r.run_id, r.speaker, "interactive") for r in runs] if self.cfg.reuse_prefix else None,
        )
        return [(lm.tokenizer.decode(t, skip_special_tokens=True), len(t)) for t in out.tokens], out

    def _step(self, name: str, runs: list[Run], stats: SimulationStats) -> None:
        """One reply for each of ``runs`` (their speakers all play ``name``), in one batch.

        A reply that :meth:`_retry` rejects is not kept: its run stays at the same utterance and is
        sampled again in the next step's batch, continuing the same utterance's random stream, so
        the result does not depend on the batch and a re-sample costs one row of a batch, not a
        batch of its own. After ``max_resamples`` the last reply is kept and flagged.
        """
        prompts = [self.prompt(name, r, r.speaker, r.history) for r in runs]
        try:
            replies, out = self._generate(name, runs, prompts)
        except NsyncError:
            raise
        except Exception as err:
            ids = ", ".join(r.run_id for r in runs)
            raise NsyncError(f"generation with {name} failed for runs [{ids}]: {type(err).__name__}: {err}") from err
        kept = []
        for i, run in enumerate(runs):
            reply = self._reply(run, *replies[i])
            if self._retry(run, reply) and run.attempt < self.cfg.max_resamples:
                run.attempt += 1
                stats.resampled += 1
                continue
            kept.append((i, run, reply))
        if not kept:
            return
        observer = obs_prompts = None
        if self.inline and self.cfg.capture.observer:  # the observer reads only utterances that are kept
            obs_prompts = [self.prompt(name, r, r.speaker, r.history, observer=True) for _, r, _ in kept]
            keys = [(r.run_id, r.speaker, "observer") for _, r, _ in kept] if self.cfg.reuse_prefix else None
            observer = self.generators[name].prompt_states(obs_prompts, keys)
        for j, (i, run, reply) in enumerate(kept):
            self._flag(run, reply)
            text, left, n_new = reply.text, reply.left, reply.n_new
            k, speaker = len(run.history), run.speaker
            base = self._row(run, k, speaker, text, left, len(prompts[i]), n_new) | {"resampled": run.attempt, "flag": ",".join(reply.flags)}
            run.history.append(Utterance(speaker, text, left))
            run.attempt, run.stream = 0, None
            run.rows.append(base)
            if self.capture:
                # re-reading fills the states and the other prompts' lengths of these rows when the run is finished
                if out is not None and out.states is not None:
                    run.states.setdefault("interactive", []).append(out.states[i].cpu().numpy())
                if self.cfg.capture.observer:
                    run.rows.append({**base, "condition": "observer", "n_prompt_tokens": len(obs_prompts[j]) if obs_prompts else 0})
                    if observer is not None:
                        run.states.setdefault("observer", []).append(observer[j].cpu().numpy())
                listeners = run.listeners if self.inline else {a: (None, 0) for a in run.listening} if self.cfg.capture.listener else {}
                for listener, (state, n_prompt) in sorted(listeners.items()):
                    run.rows.append(
                        {
                            **base,
                            "condition": "listener",
                            "agent": listener,
                            "character_id": run.episode.characters[listener].id,
                            "model": run.models[listener],
                            "partner_model": name,
                            "n_prompt_tokens": n_prompt,
                            "n_new_tokens": 0,
                        }
                    )
                    if state is not None:
                        run.states.setdefault("listener", []).append(state)
                run.listeners = {}
                if out is not None and out.generated_mean is not None:
                    run.rows.append({**base, "condition": "generated_mean"})
                    run.states.setdefault("generated_mean", []).append(out.generated_mean[i].cpu().numpy())
            stats.utterances += 1
            stats.new_tokens += n_new
            stats.prompt_tokens += len(prompts[i])
            if left:
                run.present.remove(speaker)
            run.done = len(run.present) < 2 or len(run.history) >= self.cfg.max_turns
            if not run.done:
                run.speaker = self.policy.next(run.episode, run.history, run.present)

    def _capture_finished(self, finished: list[Run]) -> None:
        """Re-reading: every row's prompt, rendered from the finished history, read by the row's
        model; one pass per chain of prompts that extend each other within a run."""
        by_model: dict[str, list[tuple[Run, dict]]] = {}
        for run in finished:
            for row in run.rows:
                by_model.setdefault(row["model"], []).append((run, row))
        for name, rows in by_model.items():
            prompts = [self.prompt(name, run, row["agent"], run.history[: row["utterance"]], row["condition"] == "observer") for run, row in rows]
            # an agent's speaking and listening prompts grow together (as in generation); the observer's apart
            groups = [(run.run_id, row["agent"], "observer" if row["condition"] == "observer" else "interactive") for run, row in rows]
            capture = self.cfg.capture
            states = read_states(self.generators[name], prompts, groups, capture.max_batch_tokens, capture.single_pass).numpy()
            for (run, row), state, prompt in zip(rows, states, prompts, strict=True):
                row["n_prompt_tokens"] = len(prompt)
                run.states.setdefault(row["condition"], []).append(state)

    def _reply(self, run: Run, raw: str, n_new: int) -> Reply:
        """A generated reply (its raw text and token count), cleaned, with what it recites."""
        # full names first, so "Ada Lovelace:" goes whole before "Ada:" is tried
        names = tuple(c.name for c in run.episode.characters) + tuple(c.first_name for c in run.episode.characters)
        text, left = clean_reply(raw, self.cfg.sampling.first_line_only, self.cfg.sampling.stop_strings, names)
        return Reply(text, left, n_new, echo_of(text, run.episode, run.speaker, run.history))

    def _retry(self, run: Run, reply: Reply) -> bool:
        """Whether a reply is sampled again: empty before ``min_utterances``, or (with
        ``resample_echo``) one that recites the prompt or repeats a line."""
        if not reply.text and len(run.history) < self.cfg.min_utterances:
            return True
        return self.cfg.resample_echo and reply.echo is not None

    def _flag(self, run: Run, reply: Reply) -> None:
        """The flags of a kept reply; a leave before ``min_utterances`` is ignored (the agent stays)."""
        if not reply.text:
            reply.flags.append("empty")
        if reply.left and len(run.history) < self.cfg.min_utterances:
            reply.flags.append("early_leave")
            reply.left = False
        if reply.echo is not None:
            reply.flags.append(f"echo:{reply.echo}")

    def _listen(self, name: str, listeners: list[tuple[Run, int]]) -> None:
        """Every agent who does not speak next reads the same history with its own prompt. It
        shares that agent's prefix slot: its next own prompt extends this one."""
        prompts = [self.prompt(name, r, agent, r.history) for r, agent in listeners]
        keys = [(r.run_id, agent, "interactive") for r, agent in listeners] if self.cfg.reuse_prefix else None
        states = self.generators[name].prompt_states(prompts, keys).cpu().numpy()
        for (run, agent), state, prompt in zip(listeners, states, prompts, strict=True):
            run.listeners[agent] = (state, len(prompt))

    def _row(self, run: Run, k: int, speaker: int, text: str, left: bool, n_prompt: int, n_new: int) -> dict:
        ep = run.episode
        return TurnRow(
            run_id=run.run_id,
            episode_id=ep.id,
            scenario_id=ep.scenario.id,
            scenario_codename=ep.scenario.codename,
            relationship=ep.scenario.relationship,
            character_a=ep.characters[0].id,
            character_b=ep.characters[1].id,
            agent=speaker,
            character_id=ep.characters[speaker].id,
            model=run.models[speaker],
            partner_model=run.others_models(speaker),
            order=run.order,
            seed=run.seed,
            utterance=k,
            condition="interactive",
            text=text,
            left=left,
            n_prompt_tokens=n_prompt,
            n_new_tokens=n_new,
            characters="|".join(c.id for c in ep.characters),
            n_agents=ep.n_agents,
        ).as_dict()

    def _flush(self, finished: list[Run], stats: SimulationStats) -> None:
        if self.writer is None or not finished:
            return
        if self.reread:
            start = time.perf_counter()
            self._capture_finished(finished)
            stats.capture_seconds += time.perf_counter() - start
        rows = [row for run in finished for row in run.rows]
        states: dict[tuple[str, str], list[np.ndarray]] = {}
        for run in finished:
            # a run's rows come from several models; each model's states follow the row order
            per_condition = {c: iter(v) for c, v in run.states.items()}
            for row in run.rows:
                states.setdefault((row["model"], row["condition"]), []).append(next(per_condition[row["condition"]]))
        self.writer.write_shard(rows, {key: np.stack(v) for key, v in states.items()})

    def run(self, runs: list[Run]) -> SimulationStats:
        """Simulate ``runs`` to the end; return throughput figures."""
        stats = SimulationStats()
        pending = deque(runs)
        active: list[Run] = []
        finished: list[Run] = []
        start = time.perf_counter()
        ended_early = 0
        # The bar counts utterances (each run at most max_turns): it moves with every batch of replies,
        # where a count of finished episodes sits at 0 until the first batch of runs ends.
        bar = tqdm(total=len(runs) * self.cfg.max_turns, desc="utterances", unit="utt", disable=not self.cfg.progress, dynamic_ncols=True)
        with bar:
            while pending or active:
                while pending and len(active) < self.cfg.episodes_in_flight:
                    active.append(pending.popleft())
                if self.inline and self.cfg.capture.listener:
                    by_listener: dict[str, list[tuple[Run, int]]] = {}
                    for run in active:
                        for agent in run.listening:
                            by_listener.setdefault(run.models[agent], []).append((run, agent))
                    for name, group in by_listener.items():
                        self._listen(name, group)
                by_model: dict[str, list[Run]] = {}
                for run in active:
                    by_model.setdefault(run.models[run.speaker], []).append(run)
                for name, speakers in by_model.items():
                    self._step(name, speakers, stats)
                for run in [r for r in active if r.done]:
                    active.remove(run)
                    for generator in self.generators.values():
                        if generator.prefixes is not None:
                            generator.prefixes.drop(lambda key, run_id=run.run_id: key[0] == run_id)
                    finished.append(run)
                    stats.runs += 1
                    ended_early += self.cfg.max_turns - len(run.history)  # a leave: its unspoken utterances count as done
                if len(finished) >= self.cfg.flush_every or (finished and not pending and not active):
                    bar.set_postfix_str(f"writing {len(finished)} episodes", refresh=True)
                    self._flush(finished, stats)
                    finished = []
                elapsed = time.perf_counter() - start
                bar.update(stats.utterances + ended_early - bar.n)
                bar.set_postfix_str(f"episodes {stats.runs}/{len(runs)}, {stats.new_tokens / max(elapsed, 1e-9):.0f} tok/s", refresh=False)
        stats.seconds = time.perf_counter() - start
        if self.remote is not None:
            self.remote.close()
        return stats
