import pytest

from nsync.models.tiny import tiny_tokenizer
from nsync.scenarios import load_builtin
from nsync.simulation.prompts import (
    FORMATS,
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
    """At token level, in every prompt format: the observer's prompt ends with the same tokens as
    the speaker's, the whole final line (cue or partner's last line) and the template's tail."""
    plain = not getattr(tok, "chat_template", None)
    for fmt in FORMATS:
        for past in (history, []):
            speaker, observer = (tok(render(tok, fmt, episode, 0, past, observer=o), add_special_tokens=plain)["input_ids"]
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
    from nsync.simulation.prompts import ECHO

    assert ECHO.search("Sure. You are at Turn 4, so") and not ECHO.search("I'll turn 40 next year")
    # lines of the context block, as SmolLM2 repeats them
    assert ECHO.search("Leo Williams's goal: Maintaining financial stability") and ECHO.search("Scenario: two friends")
    assert not ECHO.search("My goal is simple: pay half.")
