"""What each agent reads before it speaks, in the three prompt formats.

- ``sotopia`` (the paper's): one user message, re-rendered every turn, with the history as
  lines ``Turn k: NAME said: ...``, sent through the model's chat template.
- ``chat``: a multi-turn conversation (the partner's lines are user messages, the agent's own
  lines assistant messages), so the prompt only grows at its end.
- ``transcript``: plain text for base models without a chat template, ending with the cue
  ``Turn k: NAME said:`` that the model continues.

The observer view (the paper's no-engagement control) is the speaker's prompt read by a
passive reader: role-play opening, goal lines and leave instruction removed; scenario,
backgrounds and history kept. It ends with the same last line as the speaker's prompt in its
format (:func:`final_line`: the speaking cue ``Turn k: NAME said:``, or in the chat format the
partner's last line), so both states are read at the same final tokens: a reader told who
speaks next is still not that speaker. (The paper's observer also dropped the cue; then the two
states sit on different tokens, which for base models reading transcripts moves R² by more
than the engagement it is meant to measure.)
"""

from __future__ import annotations

import re
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from typing import Any, Protocol

import pandas as pd

from nsync.scenarios import Episode, own_background, visible_background

FORMATS = ("sotopia", "chat", "transcript")
#: How the context is laid out: ``fields`` (the paper's: ``Scenario:``, ``NAME's background:``,
#: ``NAME's goal:`` lines) or ``prose`` (paragraphs, the private goal stated once as an instruction),
#: which gives small models no field to continue (experiments/benchmarks/conversation_quality.py).
LAYOUTS = ("fields", "prose")
#: 2: the observer's prompt ends with the speaker's final line (1: it ended with the history).
OBSERVER_PROMPT_VERSION = 2
LEAVE_MARKER = "[leave]"


@dataclass(frozen=True)
class Utterance:
    agent: int  # which character of the episode spoke (0 .. N-1)
    text: str
    left: bool = False


def conversations(turns: pd.DataFrame) -> Iterator[tuple[str, pd.DataFrame, list[Utterance]]]:
    """Per run of a turns table's interactive rows, in run order: the run id, its rows in
    utterance order, and its history (what the prompts are rendered from).

    >>> t = pd.DataFrame({"run_id": ["r", "r"], "utterance": [1, 0], "agent": [1, 0], "text": ["Hi!", "Hello."],
    ...                   "left": [True, False], "condition": "interactive"})
    >>> [(run, [u.text for u in history]) for run, _, history in conversations(t)]
    [('r', ['Hello.', 'Hi!'])]
    """
    inter = turns[turns["condition"] == "interactive"].sort_values(["run_id", "utterance"])
    for run_id, rows in inter.groupby("run_id", sort=True):
        yield run_id, rows, [Utterance(int(r.agent), r.text, bool(r.left)) for r in rows.itertuples()]


class Speakers(Protocol):
    """What history lines read of an episode: its characters' names (an :class:`Episode`, or
    re-reading's stand-in for a run without a scenario source)."""

    @property
    def characters(self) -> Sequence[Any]: ...


def _speaker_name(episode: Speakers, agent: int) -> str:
    return episode.characters[agent].name


def _history_line(episode: Speakers, index: int, u: Utterance) -> str:
    name = _speaker_name(episode, u.agent)
    return f"Turn {index}: {name} left the conversation." if u.left and not u.text else f"Turn {index}: {name} said: {u.text}"


def history_text(episode: Speakers, history: list[Utterance]) -> str:
    """The conversation so far as "Turn k: NAME said: ..." lines."""
    return "\n".join(_history_line(episode, k, u) for k, u in enumerate(history))


def encode(lm, text: str) -> list[int]:
    """Token ids of a rendered prompt: chat templates hold their special tokens already, plain
    transcripts need the tokenizer's BOS."""
    return lm.tokenizer(text, add_special_tokens=not lm.has_chat_template)["input_ids"]


def prompt_format(lm, fmt: str) -> str:
    """The format a model gets: models without a chat template read plain transcripts."""
    return fmt if lm.has_chat_template else "transcript"


def participants(episode: Episode) -> str:
    """ "A and B", "A, B and C": the episode's characters in agent order."""
    names = [c.name for c in episode.characters]
    return ", ".join(names[:-1]) + " and " + names[-1]


def backgrounds(episode: Episode, me: int) -> list[str]:
    """Every agent's background as agent ``me`` sees it: its own in full (secret included), the
    others' through the relationship of the ordered pair (:func:`visible_background`)."""
    return [
        own_background(c) if agent == me else visible_background(c, episode.scenario.relationship_of(me, agent))
        for agent, c in enumerate(episode.characters)
    ]


def _context(episode: Episode, me: int, with_goal: bool, layout: str = "fields") -> str:
    """Scenario, participants, every background as visible to ``me`` (:func:`backgrounds`), and
    (optionally, ``fields`` layout) the goals."""
    seen = backgrounds(episode, me)
    if layout == "prose":
        people = []
        for agent, (c, bg) in enumerate(zip(episode.characters, seen, strict=True)):
            level = None if agent == me else episode.scenario.relationship_of(me, agent)
            people.append(bg if level is None or level >= 2 else f"{c.name} is a stranger." if level == 0 else f"Only {c.name}'s name is known.")
        return "\n".join([f"An interaction between {participants(episode)}. {episode.scenario.scenario.rstrip('.')}.", *people])
    lines = [f"Scenario: {episode.scenario.scenario}", f"Participants: {participants(episode)}"]
    lines += [f"{c.name}'s background: {bg}" for c, bg in zip(episode.characters, seen, strict=True)]
    if with_goal:
        for agent in range(episode.n_agents):
            goal = episode.scenario.goals[agent] if agent == me else "Unknown"
            lines.append(f"{_speaker_name(episode, agent)}'s goal: {goal}")
    return "\n".join(lines)


def _setup(episode: Episode, me: int, layout: str) -> str:
    """What a speaking prompt says before the conversation: the role-play opening and the context
    (``prose``: the goal as one instruction between them)."""
    name = _speaker_name(episode, me)
    if layout == "prose":
        goal = f"In this conversation, pursue this goal, which only you know and never say aloud: {episode.scenario.goals[me]}"
        return "\n\n".join([_opening(name), _context(episode, me, False, layout), goal])
    return "\n\n".join([_opening(name), "Here is the context of this interaction:\n" + _context(episode, me, True)])


def _opening(name: str) -> str:
    """The role-play opening, with the rule for leaving: in the intro, so that the last words of
    the prompt are the speaking cue (a leave instruction at the end invites replying with it)."""
    return (
        f"Imagine you are {name}. Speak as {name} would, keeping {name}'s goal in mind; the goal is "
        f"only visible to you. Stay in character, keep the conversation natural and do not repeat "
        f"what has already been said. Each reply is one line: only what {name} says. Only when "
        f"{name}'s goal is reached or the conversation is over, {name} may end it by replying {LEAVE_MARKER}."
    )


def _cue(name: str, turn: int) -> str:
    """The speaking cue, the last line of every speaking prompt."""
    return f"Turn {turn}: {name} said:"


def sotopia_text(episode: Episode, me: int, history: list[Utterance], layout: str = "fields") -> str:
    """The paper's single user message for agent ``me`` before utterance ``len(history)``: the
    opening (with the rule for leaving), the context, the conversation lines and the speaking cue."""
    lines = [_history_line(episode, i, u) for i, u in enumerate(history)] + [_cue(_speaker_name(episode, me), len(history))]
    return "\n\n".join([_setup(episode, me, layout), "Conversation:\n" + "\n".join(lines)])


def final_line(fmt: str, episode: Episode, me: int, history: list[Utterance]) -> str:
    """The last line of agent ``me``'s speaking prompt in ``fmt``: the speaking cue (``sotopia``,
    ``transcript``), or in the ``chat`` format the conversation's last line (``NAME speaks
    first.`` before it starts). The observer's prompt ends with it too."""
    if fmt == "chat":
        return _history_line(episode, len(history) - 1, history[-1]) if history else f"{_speaker_name(episode, me)} speaks first."
    return _cue(_speaker_name(episode, me), len(history))


def observer_text(episode: Episode, me: int, history: list[Utterance], fmt: str = "sotopia", layout: str = "fields") -> str:
    """The speaker's prompt as a passive reader sees it (no role-play, goals or leave rule),
    ending with the speaker prompt's last line in ``fmt`` (:func:`final_line`)."""
    lines = [_history_line(episode, i, u) for i, u in enumerate(history)]
    last = final_line(fmt, episode, me, history)
    if not lines or lines[-1] != last:
        lines.append(last)
    return "\n\n".join(
        ["Here is the context of an interaction:\n" + _context(episode, me, False, layout), "Conversation so far:\n" + "\n".join(lines)]
    )


def chat_messages(episode: Episode, me: int, history: list[Utterance], layout: str = "fields") -> list[dict]:
    """Multi-turn messages for agent ``me``: its own lines as assistant turns."""
    name = _speaker_name(episode, me)
    setup = _setup(episode, me, layout)
    messages: list[dict] = []
    pending = [setup]
    for i, u in enumerate(history):
        if u.agent == me:
            messages.append({"role": "user", "content": "\n\n".join(pending)})
            messages.append({"role": "assistant", "content": u.text})
            pending = []
        else:
            pending.append(_history_line(episode, i, u))
    if not history:
        pending.append(f"{name} speaks first.")
    messages.append({"role": "user", "content": "\n\n".join(pending)})
    return messages


def transcript_text(episode: Episode, me: int, history: list[Utterance], layout: str = "fields") -> str:
    """Plain-text prompt for base models: context, transcript, then ``Turn k: NAME said:``."""
    lines = [_history_line(episode, i, u) for i, u in enumerate(history)]
    lines.append(_cue(_speaker_name(episode, me), len(history)))
    return "\n\n".join([_setup(episode, me, layout), "Conversation:\n" + "\n".join(lines)])


def render(tokenizer, fmt: str, episode: Episode, me: int, history: list[Utterance], observer: bool = False, layout: str = "fields") -> str:
    """The exact string fed to the model (chat template applied where the format uses one)."""
    if layout not in LAYOUTS:
        raise ValueError(f"unknown prompt layout '{layout}'; use one of {LAYOUTS}")
    has_template = bool(getattr(tokenizer, "chat_template", None))
    if observer:
        plain = fmt == "transcript" or not has_template
        text = observer_text(episode, me, history, "transcript" if plain else fmt, layout)
        if plain:
            return text  # ends with the cue, as the speaker's transcript does
        return tokenizer.apply_chat_template([{"role": "user", "content": text}], tokenize=False, add_generation_prompt=True)
    if fmt == "transcript" or not has_template:
        return transcript_text(episode, me, history, layout)
    if fmt == "sotopia":
        messages = [{"role": "user", "content": sotopia_text(episode, me, history, layout)}]
    elif fmt == "chat":
        messages = chat_messages(episode, me, history, layout)
    else:
        raise ValueError(f"unknown prompt format '{fmt}'; use one of {FORMATS}")
    return tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)


def clean_reply(text: str, first_line_only: bool, stop_strings: list[str], names: tuple[str, ...] = ()) -> tuple[str, bool]:
    """Cut a generated reply to what the agent says; return it and whether the agent left.

    Beyond the first line and stop strings, a leading speaker name (``NAME:``, ``NAME said:``,
    ``(NAME)``, for any of ``names``) and echoed speaking cues (``Turn k: NAME said:``) are
    removed, as the paper's scripts did.

    >>> clean_reply("Turn 3: Ana said: Hello! [leave]", True, [], ("Ana",))
    ('Hello!', True)
    >>> clean_reply("Ada: Fine, thanks.", True, [], ("Ada Lovelace", "Ada"))   # a first name leads too
    ('Fine, thanks.', False)
    """
    for stop in stop_strings:
        if stop and stop in text:
            text = text[: text.index(stop)]
    if first_line_only:
        lines = [line for line in text.strip().splitlines() if line.strip()]
        text = lines[0] if lines else ""
    text = text.strip()
    left = LEAVE_MARKER in text.lower()
    if left:
        text = re.sub(re.escape(LEAVE_MARKER), "", text, flags=re.IGNORECASE).strip()
    name = "|".join(re.escape(n) for n in names if n)
    speaker = rf"(?:\(?(?:{name})\)?(?:\s+said)?\s*:|\((?:{name})\))\s*" if name else None
    while True:  # a cue and a name may both lead ("Turn 2: Ana said: ...", "Ana: ...")
        before = text
        text = re.sub(r"^\s*Turn \d+\s*:\s*", "", text, flags=re.IGNORECASE)
        if speaker:
            text = re.sub("^" + speaker, "", text, flags=re.IGNORECASE)
        text = text.strip()
        if text == before:
            return text, left
