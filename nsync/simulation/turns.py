"""Who speaks next (``turn_taking.policy``): round robin, a fixed order, or the agent addressed.

A policy sees the episode, the history and the agents still present (an agent who leaves is
removed; the episode ends when fewer than two remain), and names the next speaker. With two
agents every policy alternates, as SOTOPIA's dyads do.

>>> from nsync.scenarios import load_builtin_groups
>>> episode = load_builtin_groups().episodes[0]
>>> policy = TURN_POLICIES.get("round_robin")(TurnTakingConfig())
>>> policy.first(episode), policy.next(episode, [Utterance(0, "Hello.")], [0, 1, 2])
(0, 1)
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field

from nsync.errors import NsyncError
from nsync.registry import Registry
from nsync.scenarios import Episode
from nsync.simulation.prompts import Utterance


@dataclass
class TurnTakingConfig:
    """The turn-taking policy of every episode."""

    policy: str = field(
        default="round_robin",
        metadata={
            "help": "round_robin (agent order), fixed (turn_taking.order), or addressed (the agent named in the last utterance speaks next, else round robin)"
        },
    )
    order: list[int] = field(
        default_factory=list, metadata={"help": "fixed: the speaking order as agent indices (e.g. [0, 2, 1]); every agent of an episode once"}
    )

    def __post_init__(self) -> None:
        if self.policy not in TURN_POLICIES:
            raise NsyncError(f"turn_taking.policy must be one of {TURN_POLICIES.names()}, got '{self.policy}'")
        if self.policy == "fixed" and not self.order:
            raise NsyncError("turn_taking.policy=fixed needs turn_taking.order, e.g. turn_taking.order=[0,2,1]")
        if self.order and (len(set(self.order)) != len(self.order) or min(self.order) < 0):
            raise NsyncError(f"turn_taking.order must list distinct agent indices from 0, got {self.order}")


#: Registered turn-taking policies, by name; a policy class takes the :class:`TurnTakingConfig`.
TURN_POLICIES: Registry = Registry("turn-taking policy")


def _after(agent: int, order: list[int], present: list[int]) -> int:
    """The first agent after ``agent`` in the cyclic ``order`` who is still present."""
    start = order.index(agent) if agent in order else -1
    for step in range(1, len(order) + 1):
        candidate = order[(start + step) % len(order)]
        if candidate in present:
            return candidate
    raise NsyncError("no agent left to speak")


@TURN_POLICIES.register("round_robin")
class RoundRobin:
    """Agents speak in index order, skipping those who left."""

    def __init__(self, cfg: TurnTakingConfig):
        self.cfg = cfg

    def order(self, episode: Episode) -> list[int]:
        return list(range(episode.n_agents))

    def first(self, episode: Episode) -> int:
        return self.order(episode)[0]

    def next(self, episode: Episode, history: list[Utterance], present: list[int]) -> int:
        return _after(history[-1].agent, self.order(episode), present)


@TURN_POLICIES.register("fixed")
class FixedOrder(RoundRobin):
    """Agents speak in ``turn_taking.order``, cyclically."""

    def order(self, episode: Episode) -> list[int]:
        order = list(self.cfg.order)
        if sorted(order) != list(range(episode.n_agents)):
            raise NsyncError(
                f"turn_taking.order {order} does not list each of the {episode.n_agents} agents of episode {episode.id} once; "
                f"give a permutation of {list(range(episode.n_agents))} (select episodes with that many agents)"
            )
        return order


@TURN_POLICIES.register("addressed")
class Addressed(RoundRobin):
    """The agent whose first name (or full name) the last utterance mentions first speaks next;
    when it names nobody present but the speaker, round robin."""

    def next(self, episode: Episode, history: list[Utterance], present: list[int]) -> int:
        last = history[-1]
        found = []
        for agent in present:
            if agent == last.agent:
                continue
            c = episode.characters[agent]
            match = re.search(rf"\b(?:{re.escape(c.name)}|{re.escape(c.first_name)})\b", last.text, flags=re.IGNORECASE)
            if match:
                found.append((match.start(), agent))
        return min(found)[1] if found else super().next(episode, history, present)
