"""Replies that recite instead of converse, and what they recite.

Small models often answer a role-play prompt by continuing its fields ("Leo's goal: ...",
"Naomi's background: ...") or by repeating a line of the conversation. Such a reply puts prompt
text into the transcript the partner reads, which is shared text, not synchrony. The simulator
flags every reply that :func:`echo_of` matches as ``echo:<kind>`` (and can re-sample it), and
fits can leave flagged replies out (``data.exclude_flags``).

Kinds, checked in this order (the first that matches is recorded):

- ``cue``: the prompt's scaffolding (``Turn k:``, ``Imagine you are``, ``Here is the context``,
  ``Conversation so far``, a line that opens with a field such as ``Scenario:``, ``Name:`` or
  ``Goal:``) or a made-up field of a character (``NAME's mood:``);
- ``goal``: a goal field (``NAME's goal:``) or a run of :data:`SPAN_WORDS` words of the speaker's goal;
- ``background``: a background field or a run of words of a background the speaker reads;
- ``scenario``: a run of words of the scenario;
- ``partner``: a near-duplicate of the last line of another agent;
- ``own_reply``: a near-duplicate of one of the speaker's earlier replies.

>>> from nsync.scenarios import load_builtin
>>> ep = load_builtin().episodes[0]
>>> echo_of(f"{ep.characters[0].name}'s goal: to win", ep, 0, [])
'goal'
>>> echo_of("Lovely weather for it, isn't it?", ep, 0, [])
"""

from __future__ import annotations

import difflib
import re
from functools import lru_cache

from nsync.cache.layout import ECHO_KINDS
from nsync.scenarios import Episode
from nsync.simulation.prompts import Utterance, backgrounds

#: Words in a row shared with a goal, background or scenario that make a reply a recitation.
SPAN_WORDS = 6
#: Word-level similarity (difflib ratio) from which two replies are near-duplicates.
NEAR_DUPLICATE = 0.8
KINDS = ECHO_KINDS

_CUE = re.compile(
    r"\bTurn \d+\s*:|\bYou are at Turn\b|\bImagine you are\b|\bHere is the context\b|\bConversation so far\b"
    r"|^\s*(?:Scenario|Participants|Name|Goal|Background|Secrets?|Occupation|Personality[\w ]*)\s*:",
    re.IGNORECASE,
)
_GOAL_FIELD = re.compile(r"'s goal\s*:", re.IGNORECASE)
_BACKGROUND_FIELD = re.compile(r"'s (?:background|secrets?)\s*:", re.IGNORECASE)
_WORD = re.compile(r"[\w']+")


def words(text: str) -> tuple[str, ...]:
    """Lower-case words, punctuation dropped: what near-duplicates and spans compare."""
    return tuple(_WORD.findall(text.lower()))


@lru_cache(maxsize=4096)
def _spans(text: str, n: int = SPAN_WORDS) -> frozenset[tuple[str, ...]]:
    w = words(text)
    return frozenset(w[i : i + n] for i in range(len(w) - n + 1))


def shares_span(reply: str, source: str, n: int = SPAN_WORDS) -> bool:
    """Whether ``reply`` holds ``n`` words in a row of ``source``."""
    w = words(reply)
    spans = _spans(source, n)
    return any(w[i : i + n] in spans for i in range(len(w) - n + 1))


def near_duplicate(a: str, b: str) -> bool:
    """Whether two replies say the same thing: equal word lists for replies under three words,
    else a word-level similarity of at least :data:`NEAR_DUPLICATE`.

    >>> near_duplicate("I'd love to help you, Ana!", "I would love to help you Ana")
    False
    >>> near_duplicate("I'd love to help you, Ana!", "i'd love to help you ana.")
    True
    """
    wa, wb = words(a), words(b)
    if not wa or not wb:
        return False
    if min(len(wa), len(wb)) < 3:
        return wa == wb
    return difflib.SequenceMatcher(None, wa, wb, autojunk=False).ratio() >= NEAR_DUPLICATE


def echo_of(text: str, episode: Episode, me: int, history: list[Utterance]) -> str | None:
    """What agent ``me``'s reply ``text`` recites (one of :data:`KINDS`), or None.

    ``history`` is the conversation before the reply; the backgrounds are those the speaker's
    prompt shows (its own in full, the others' as its relationship lets it see them).
    """
    if not text.strip():
        return None
    if _CUE.search(text):
        return "cue"
    if _GOAL_FIELD.search(text) or shares_span(text, episode.scenario.goals[me]):
        return "goal"
    if _BACKGROUND_FIELD.search(text) or any(shares_span(text, bg) for bg in backgrounds(episode, me)):
        return "background"
    names = "|".join(re.escape(n) for c in episode.characters for n in (c.name, c.first_name) if n)
    if names and re.search(rf"\b(?:{names})'s\s+(?:[\w-]+\s+){{0,2}}[\w-]+\s*:", text, re.IGNORECASE):
        return "cue"
    if shares_span(text, episode.scenario.scenario):
        return "scenario"
    last_other = next((u for u in reversed(history) if u.agent != me and u.text), None)
    if last_other is not None and near_duplicate(text, last_other.text):
        return "partner"
    if any(near_duplicate(text, u.text) for u in history if u.agent == me):
        return "own_reply"
    return None
