"""SOTOPIA-Eval's seven dimensions and the judge's prompts (the rubric text is nsync's own).

The judge sees the whole episode: the scenario, every character's full background with its
secret, every goal, the relationships, and the transcript. Agents are labelled A, B, C, ... in
agent order (a dyad's prompts read as they always did).
"""

from __future__ import annotations

from dataclasses import dataclass

from nsync.scenarios import Episode
from nsync.scenarios.schema import RELATIONSHIPS, own_background
from nsync.simulation.prompts import Utterance, history_text


@dataclass(frozen=True)
class Dimension:
    name: str
    low: int
    high: int
    rubric: str

    @property
    def values(self) -> list[int]:
        return list(range(self.low, self.high + 1))


DIMENSIONS = (
    Dimension(
        "believability",
        0,
        10,
        "Does the agent behave like the character described, naturally and consistently? "
        "10: fully in character and human-like; 0: incoherent, repetitive or out of character.",
    ),
    Dimension(
        "relationship",
        -5,
        5,
        "Did the interaction improve (+) or damage (-) the relationship between the two characters, given where it started? 0: no change.",
    ),
    Dimension(
        "knowledge",
        0,
        10,
        "Did the agent gain new, useful information from the conversation that matters to its goal or to the relationship? 10: a lot; 0: nothing.",
    ),
    Dimension("secret", -10, 0, "Did the agent keep its secret? 0: kept it entirely; -10: revealed it entirely."),
    Dimension(
        "social_rules",
        -10,
        0,
        "Did the agent break social norms or laws (lying with intent to harm, threatening, discriminating)? 0: no violation; -10: severe violations.",
    ),
    Dimension(
        "financial_and_material_benefits",
        -5,
        5,
        "Did the agent gain (+) or lose (-) money, goods or other material advantages in this interaction? 0: no change.",
    ),
    Dimension("goal", 0, 10, "How far did the agent achieve its private social goal? 10: fully achieved; 0: no progress at all."),
)
DIMENSION_NAMES = tuple(d.name for d in DIMENSIONS)


def agent_letter(agent: int) -> str:
    """A, B, C, ... for agents 0, 1, 2, ..."""
    return chr(ord("A") + agent)


def agent_keys(n_agents: int) -> list[str]:
    """The answer keys of an episode's agents: ``agent_a``, ``agent_b``, ...

    >>> agent_keys(3)
    ['agent_a', 'agent_b', 'agent_c']
    """
    if not 2 <= n_agents <= 26:
        raise ValueError(f"an episode has 2 to 26 agents, got {n_agents}")
    return [f"agent_{agent_letter(a).lower()}" for a in range(n_agents)]


def episode_context(episode: Episode, history: list[Utterance]) -> str:
    """Everything the judge knows: the full episode and the transcript."""
    s = episode.scenario
    among = "between two characters" if episode.n_agents == 2 else f"among {episode.n_agents} characters"
    lines = [
        f"You are evaluating a role-play conversation {among} for social intelligence.",
        "",
        f"Scenario: {s.scenario}",
        f"Relationship between the characters: {s.relationship_name.replace('_', ' ')}.",
    ]
    for (i, j), level in sorted(s.relationships.items()):
        lines.append(f"Except: Agent {agent_letter(i)} knows Agent {agent_letter(j)} as: {RELATIONSHIPS[level].replace('_', ' ')}.")
    for agent in range(episode.n_agents):
        label = f"Agent {agent_letter(agent)}"
        c = episode.characters[agent]
        lines += ["", f"{label}: {c.name}. Background: {own_background(c)}", f"{label}'s private goal: {s.goals[agent]}"]
    transcript = history_text(episode, history) or "(no utterances)"
    lines += ["", "Conversation:", transcript]
    return "\n".join(lines)


def json_request(episode: Episode, history: list[Utterance]) -> str:
    """The prompt for a chat judge: one JSON object with every agent's scores."""
    rubric = "\n".join(f"- {d.name} (integer from {d.low} to {d.high}): {d.rubric}" for d in DIMENSIONS)
    who = [f"agent {agent_letter(a)} is {c.name}" for a, c in enumerate(episode.characters)]
    who[0] = who[0][0].upper() + who[0][1:]
    keys = ", ".join(f'"{d.name}": <int>' for d in DIMENSIONS)
    fields = ", ".join(f'"{key}": {{{keys}}}' for key in agent_keys(episode.n_agents))
    return (
        f"{episode_context(episode, history)}\n\n"
        f"Score each agent on these dimensions:\n{rubric}\n\n"
        f"{', '.join(who)}. Think briefly, then answer with one JSON object and nothing after it:\n"
        f'{{"reasoning": "<one or two sentences>", {fields}}}'
    )


def dimension_question(episode: Episode, agent: int, dim: Dimension) -> str:
    """The suffix a local judge reads after the context, before the score it is asked for."""
    name = episode.characters[agent].name
    return (
        f"\n\nQuestion about {name} (agent {agent_letter(agent)}): {dim.name}. {dim.rubric}\n"
        f"Answer with one integer from {dim.low} to {dim.high}.\nScore:"
    )
