import itertools

import pytest

from nsync.models.tiny import tiny_tokenizer
from nsync.scenarios import load_builtin
from nsync.simulation.prompts import (
    FORMATS,
    LAYOUTS,
    LEAVE_MARKER,
    Utterance,
    chat_messages,
    clean_reply,
    final_line,
    observer_text,
    render,
    sotopia_text,
)


def _episode(relationship=None):
    lib = load_builtin()
    return next(e for e in lib.episodes if relationship is None or e.scenario.relationship == relationship)


HISTORY = [Utterance(0, "Hello, is the bicycle still for sale?"), Utterance(1, "Yes, it is.")]


def test_sotopia_prompt_shows_own_goal_and_hides_partner_goal_and_secret():
    ep = _episode(relationship=3)
    me, other = ep.characters
    text = sotopia_text(ep, 0, HISTORY)
    assert f"Imagine you are {me.name}" in text
    assert ep.scenario.goals[0] in text and ep.scenario.goals[1] not in text
    assert f"{other.name}'s goal: Unknown" in text
    assert me.secret in text and other.secret not in text
    assert f"Turn 1: {other.name} said: Yes, it is." in text
    # the rule for leaving is in the intro; the speaking cue is the last line
    assert text.index(LEAVE_MARKER) < text.index("Conversation:")
    assert text.endswith(f"Turn 2: {me.name} said:")


@pytest.mark.parametrize("fmt", FORMATS)
def test_prose_layout_states_the_goal_once_as_an_instruction_and_has_no_fields(fmt):
    """The prose layout carries what the fields layout does (scenario, own background with its
    secret, the partner as the relationship shows it, the own goal), without a field line to continue."""
    tok = tiny_tokenizer()
    ep = _episode(relationship=3)
    me, other = ep.characters
    text = render(tok, fmt, ep, 0, HISTORY, layout="prose")
    assert text.count(ep.scenario.goals[0]) == 1 and ep.scenario.goals[1] not in text
    assert "'s goal:" not in text and "Scenario:" not in text and "'s background:" not in text and "Participants:" not in text
    assert ep.scenario.scenario.rstrip(".") in text and me.secret in text and other.secret not in text
    assert other.occupation.lower() in text and "Yes, it is." in text
    fields = render(tok, fmt, ep, 0, HISTORY)
    assert f"{me.name}'s goal: {ep.scenario.goals[0]}" in fields and fields != text
    observer = render(tok, fmt, ep, 0, HISTORY, layout="prose", observer=True)
    assert ep.scenario.goals[0] not in observer and "Imagine you are" not in observer and me.secret in observer
    stranger = _episode(relationship=0)
    assert f"{stranger.characters[0].name} is a stranger." in render(tok, fmt, stranger, 1, [], layout="prose")


def test_stranger_sees_nothing_of_partner():
    ep = _episode(relationship=0)
    text = sotopia_text(ep, 1, [])
    assert f"{ep.characters[0].name}'s background: Unknown" in text


def test_observer_prompt_drops_roleplay_and_goals_and_keeps_the_cue():
    ep = _episode()
    text = observer_text(ep, 0, HISTORY)
    assert "Imagine you are" not in text and "goal" not in text.lower()
    assert LEAVE_MARKER not in text and "You are at Turn" not in text
    assert ep.scenario.scenario in text and "Yes, it is." in text
    assert text.endswith(f"Turn 2: {ep.characters[0].name} said:")


def _common_suffix(a: list[int], b: list[int]) -> int:
    n = 0
    while n < min(len(a), len(b)) and a[-1 - n] == b[-1 - n]:
        n += 1
    return n


def assert_observer_ends_like_the_speaker(tok, episode, history=HISTORY):
    """At token level, in every prompt format and layout: the observer's prompt ends with the same
    tokens as the speaker's, the whole final line (cue or partner's last line) and the template's tail."""
    plain = not getattr(tok, "chat_template", None)
    for fmt, layout in itertools.product(FORMATS, LAYOUTS):
        for past in (history, []):
            speaker, observer = (tok(render(tok, fmt, episode, 0, past, observer=o, layout=layout), add_special_tokens=plain)["input_ids"]
                                 for o in (False, True))
            assert speaker != observer
            shared = tok.decode(speaker[len(speaker) - _common_suffix(speaker, observer):])
            last = final_line("transcript" if plain else fmt, episode, 0, past)
            assert last in shared, (fmt, len(past), shared)


def test_observer_is_read_at_the_speakers_final_tokens_in_every_format():
    ep = _episode()
    tok = tiny_tokenizer()
    assert_observer_ends_like_the_speaker(tok, ep)
    base = tiny_tokenizer.__wrapped__()
    base.chat_template = None  # a base model: transcripts
    assert_observer_ends_like_the_speaker(base, ep)


@pytest.mark.real_model
def test_observer_is_read_at_the_speakers_final_tokens_with_real_tokenizers(smollm2):
    assert_observer_ends_like_the_speaker(smollm2.tokenizer, _episode())


def test_chat_format_alternates_and_only_grows_at_the_end():
    ep = _episode()
    tok = tiny_tokenizer()
    for me in (0, 1):
        msgs = chat_messages(ep, me, HISTORY)
        roles = [m["role"] for m in msgs]
        assert roles[0] == "user" and all(a != b for a, b in zip(roles, roles[1:]))
    longer = HISTORY + [Utterance(0, "Would you take 150?"), Utterance(1, "Maybe 170.")]
    before = render(tok, "chat", ep, 0, HISTORY)
    after = render(tok, "chat", ep, 0, longer)
    # the earlier prompt plus the agent's own reply is a prefix of the later prompt
    assert after.startswith(before)


def test_transcript_format_for_base_models_ends_with_cue():
    ep = _episode()
    tok = tiny_tokenizer.__wrapped__()
    tok.chat_template = None
    text = render(tok, "sotopia", ep, 0, HISTORY)
    assert text.endswith(f"Turn 2: {ep.characters[0].name} said:")


def test_clean_reply():
    assert clean_reply('  "Hi there."\nMore text', True, []) == ('"Hi there."', False)
    assert clean_reply("Goodbye! [LEAVE]", True, []) == ("Goodbye!", True)
    assert clean_reply("Sure. Turn 3: x", True, ["Turn 3"]) == ("Sure.", False)


def test_clean_reply_drops_speaker_names_and_echoed_cues():
    names = ("Ana Díaz", "Bo Chen")
    assert clean_reply("Turn 2: Ana Díaz said: Fine, 150 it is.", True, [], names) == ("Fine, 150 it is.", False)
    assert clean_reply("Ana Díaz: Fine.", True, [], names) == ("Fine.", False)
    assert clean_reply("(Bo Chen) Deal. [leave]", True, [], names) == ("Deal.", True)
    assert clean_reply("Bo Chen said: Turn 3: ok", True, [], names) == ("ok", False)
    assert clean_reply("Analysis: Ana Díaz is right.", True, [], names) == ("Analysis: Ana Díaz is right.", False)
