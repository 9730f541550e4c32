"""Characters, scenarios and episodes in SOTOPIA's data model, and what each agent may see.

A scenario has N >= 2 goals, one per agent (SOTOPIA's dyads are N = 2); an episode casts one
character per goal. What agent ``i`` knows of agent ``j`` follows the relationship of the
ordered pair (``Scenario.relationship_of``): the scenario-wide one unless ``relationships``
says otherwise for that pair.
"""

from __future__ import annotations

from dataclasses import dataclass, field

#: SOTOPIA's relationship codes, in order (0 = stranger ... 5 = family member).
RELATIONSHIPS = (
    "stranger",
    "know_by_name",
    "acquaintance",
    "friend",
    "romantic_relationship",
    "family_member",
)


@dataclass(frozen=True)
class Character:
    """One persona (SOTOPIA's AgentProfile)."""

    id: str
    first_name: str
    last_name: str
    age: int
    occupation: str
    gender: str
    gender_pronoun: str
    public_info: str
    big_five: str
    moral_values: tuple[str, ...]
    schwartz_values: tuple[str, ...]
    personality_and_values: str
    decision_making_style: str
    secret: str
    mbti: str

    @property
    def name(self) -> str:
        return f"{self.first_name} {self.last_name}".strip()


@dataclass(frozen=True)
class Scenario:
    """One social situation with a private goal per agent (SOTOPIA's EnvironmentProfile).

    ``relationships`` maps an ordered pair ``(i, j)`` to what agent ``i`` knows of agent ``j``
    when it differs from the scenario-wide ``relationship`` (e.g. a mediator who knows both
    parties while they are strangers to each other).

    >>> s = Scenario("s", "mediation", "", "A dispute.", ("g0", "g1", "g2"), 0, relationships={(2, 0): 2, (2, 1): 2})
    >>> s.n_agents, s.relationship_of(2, 0), s.relationship_of(0, 1)
    (3, 2, 0)
    """

    id: str
    codename: str
    source: str
    scenario: str
    goals: tuple[str, ...]
    relationship: int
    age_constraint: str | None = None
    occupation_constraint: str | None = None
    agent_constraint: str | None = None
    relationships: dict[tuple[int, int], int] = field(default_factory=dict, hash=False, compare=False)

    @property
    def n_agents(self) -> int:
        return len(self.goals)

    @property
    def relationship_name(self) -> str:
        return RELATIONSHIPS[self.relationship]

    def relationship_of(self, viewer: int, other: int) -> int:
        """What agent ``viewer`` knows of agent ``other`` (a level of :data:`RELATIONSHIPS`)."""
        return self.relationships.get((viewer, other), self.relationship)


@dataclass(frozen=True)
class Episode:
    """A scenario played by N characters; ``characters[i]`` pursues ``scenario.goals[i]``."""

    id: str
    scenario: Scenario
    characters: tuple[Character, ...]

    def __post_init__(self) -> None:
        from nsync.errors import NsyncError

        if len(self.characters) != len(self.scenario.goals):
            raise NsyncError(
                f"episode {self.id} casts {len(self.characters)} characters in scenario {self.scenario.id}, which has "
                f"{len(self.scenario.goals)} goals; give one character per goal"
            )
        if len({c.id for c in self.characters}) != len(self.characters):
            raise NsyncError(f"episode {self.id} casts the same character twice ({[c.id for c in self.characters]})")

    @property
    def n_agents(self) -> int:
        return len(self.characters)


def visible_background(character: Character, relationship: int) -> str:
    """What an agent in a relationship of this level knows about ``character``.

    stranger: nothing; know_by_name: the name; acquaintance: name, age, gender, pronouns,
    occupation and public info; friend, romantic, family: everything but the secret. The
    secret is visible only to its owner (``relationship=None`` is not allowed here: use
    :func:`own_background`).

    >>> c = Character("x", "Ana", "Lee", 30, "Chef", "Woman", "She/her", "Likes jazz.", "", (), (),
    ...               "Calm.", "Analytical", "Hates cooking.", "INFJ")
    >>> visible_background(c, 0)
    'Unknown'
    >>> visible_background(c, 1)
    'Ana Lee.'
    """
    if relationship == 0:
        return "Unknown"
    if relationship == 1:
        return f"{character.name}."
    basic = (
        f"{character.name} is a {character.age}-year-old {character.gender.lower()} "
        f"{character.occupation.lower()}. {character.gender_pronoun} pronouns. {character.public_info}"
    )
    if relationship == 2:
        return basic
    return basic + " " + _inner_life(character)


def own_background(character: Character) -> str:
    """An agent's view of itself: everything, the secret included."""
    return visible_background(character, 3) + f" {character.first_name}'s secrets: {character.secret}"


def _inner_life(c: Character) -> str:
    parts = [f"Personality and values description: {c.personality_and_values}"]
    if c.big_five:
        parts.append(f"Big Five: {c.big_five}.")
    if c.moral_values:
        parts.append(f"Moral values: {', '.join(c.moral_values)}.")
    if c.schwartz_values:
        parts.append(f"Personal values: {', '.join(c.schwartz_values)}.")
    if c.decision_making_style:
        parts.append(f"Decision-making style: {c.decision_making_style}.")
    if c.mbti:
        parts.append(f"MBTI: {c.mbti}.")
    return " ".join(parts)


@dataclass
class ScenarioLibrary:
    """Characters, scenarios and the episodes that combine them."""

    characters: dict[str, Character]
    scenarios: dict[str, Scenario]
    episodes: list[Episode] = field(default_factory=list)
    origin: str = ""

    def __len__(self) -> int:
        return len(self.episodes)

    def select(self, ids: list[str] | None = None, limit: int | None = None) -> list[Episode]:
        """Episodes whose id, scenario id or scenario codename is in ``ids`` (all if empty),
        then the first ``limit`` of them."""
        from nsync.errors import NsyncError

        episodes = self.episodes
        if ids:
            wanted = set(ids)
            episodes = [e for e in episodes if wanted & {e.id, e.scenario.id, e.scenario.codename}]
            known = {k for e in self.episodes for k in (e.id, e.scenario.id, e.scenario.codename)}
            unknown = sorted(wanted - known)
            if unknown:
                raise NsyncError(
                    f"no episode or scenario matches {unknown} in {self.origin}; use episode ids, "
                    f"scenario ids or codenames (e.g. {self.episodes[0].scenario.codename})"
                )
        if limit is not None:
            if limit < 1:
                raise NsyncError(f"scenarios.limit must be at least 1, got {limit}")
            episodes = episodes[:limit]
        return list(episodes)
