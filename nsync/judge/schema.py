"""The judge's answer format, validated with pydantic: every score an integer in its range."""

from __future__ import annotations

import json
import re
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, ValidationError, create_model

from nsync.judge.rubric import DIMENSIONS, agent_keys

#: One agent's seven scores; out-of-range or non-integer values fail validation.
_SCORE_FIELDS: dict[str, Any] = {d.name: (int, Field(ge=d.low, le=d.high)) for d in DIMENSIONS}
AgentScores = create_model("AgentScores", __config__=ConfigDict(extra="ignore", strict=False), **_SCORE_FIELDS)


class EpisodeScores(BaseModel):
    """A chat judge's answer for one two-agent episode (:func:`episode_scores` for N agents)."""

    model_config = ConfigDict(extra="ignore")
    reasoning: str = ""
    agent_a: AgentScores
    agent_b: AgentScores


def episode_scores(n_agents: int) -> type[EpisodeScores]:
    """The answer model of an episode with ``n_agents`` agents (fields ``agent_a``, ``agent_b``, ...)."""
    if n_agents == 2:
        return EpisodeScores
    fields: dict[str, Any] = {key: (AgentScores, ...) for key in agent_keys(n_agents)[2:]}
    return create_model(f"EpisodeScores{n_agents}", __base__=EpisodeScores, **fields)


def overall(scores: dict) -> float:
    """SOTOPIA's overall score of one agent: the mean of the seven dimensions."""
    return sum(float(scores[d.name]) for d in DIMENSIONS) / len(DIMENSIONS)


class AnswerError(ValueError):
    """A judge answer that does not parse or validate; the message says why, for the retry."""


def parse_answer(text: str, n_agents: int = 2) -> EpisodeScores:
    """The JSON object in a chat judge's reply (code fences and text around it are allowed), with
    the scores of ``n_agents`` agents.

    >>> parse_answer('ok {"agent_a": {"believability": 8, "relationship": 1, "knowledge": 3, "secret": 0, '
    ...              '"social_rules": 0, "financial_and_material_benefits": 0, "goal": 6}, "agent_b": {"believability": 7, '
    ...              '"relationship": 1, "knowledge": 2, "secret": -2, "social_rules": 0, '
    ...              '"financial_and_material_benefits": 1, "goal": 4}}').agent_b.goal
    4
    """
    match = re.search(r"\{.*\}", text or "", flags=re.S)
    if match is None:
        raise AnswerError("the answer holds no JSON object")
    try:
        data = json.loads(match.group(0))
    except json.JSONDecodeError as err:
        raise AnswerError(f"the JSON object does not parse: {err}") from None
    for side in agent_keys(n_agents):
        scores = data.get(side) if isinstance(data, dict) else None
        if isinstance(scores, dict):
            for key, value in scores.items():  # integral floats (7.0) are fine; 7.5 is not
                if isinstance(value, float) and value.is_integer():
                    scores[key] = int(value)
    try:
        return episode_scores(n_agents).model_validate(data)
    except ValidationError as err:
        problems = "; ".join(f"{'.'.join(str(p) for p in e['loc'])}: {e['msg']}" for e in err.errors())
        raise AnswerError(f"the scores are invalid: {problems}") from None
