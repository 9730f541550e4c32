"""Replies that recite: what the detector names, the flags' vocabulary, and fits that leave them out."""

import numpy as np
import pandas as pd
import pytest

from nsync.cache import ActivationCache
from nsync.cache.layout import check_flag_names, flagged
from nsync.data.pairs import build_pairs, drop_flagged
from nsync.errors import NsyncError
from nsync.scenarios import load_builtin
from nsync.simulation.echo import echo_of, near_duplicate
from nsync.simulation.prompts import Utterance


def _episode():
    return next(e for e in load_builtin().episodes if e.scenario.relationship == 3)


def test_each_kind_of_recitation_is_named():
    ep = _episode()
    me, other = ep.characters
    goal_words = " ".join(ep.scenario.goals[0].split()[:7])
    history = [Utterance(0, "Shall we start with the sofa?"), Utterance(1, "I think the television should be mine, honestly.")]
    cases = {
        "Sure. You are at Turn 4, so": "cue",
        "Turn 3: you said so": "cue",
        "Scenario: two friends": "cue",
        f"Name: {me.name}": "cue",
        f"{other.first_name}'s mood: cheerful and calm": "cue",  # a made-up field of a character
        f"{me.name}'s goal: to win": "goal",
        f"Well, {goal_words.lower()}, right?": "goal",
        f"{other.first_name}'s background: a student": "background",
        f"{me.first_name}'s secrets: none": "background",
        f"I know. {' '.join(me.public_info.split()[:8])}": "background",
        f"Oh, {' '.join(ep.scenario.scenario.split()[:8])}": "scenario",
        "I think the television should be mine honestly!": "partner",
        "shall we start with the sofa": "own_reply",
    }
    for text, kind in cases.items():
        assert echo_of(text, ep, 0, history) == kind, text
    natural = ["My goal is simple: pay half.", "I'll turn 40 next year.", "Here's the thing: I need the sofa.",
               "That's fair. What about the coffee machine?", "", "Yes."]
    for text in natural:
        assert echo_of(text, ep, 0, history) is None, text
    # the partner's line is only a near-duplicate when most of it is repeated
    assert echo_of("The television? Fine, take it, I keep the sofa.", ep, 0, history) is None


def test_near_duplicate_is_a_word_level_similarity():
    assert near_duplicate("I'd love to help you, Ana!", "i'd love to help you ana.")
    assert not near_duplicate("I'd love to help you, Ana!", "I would love to help you Ana")
    assert near_duplicate("Yes.", "yes") and not near_duplicate("Yes.", "No.") and not near_duplicate("", "")
    assert near_duplicate("we split the sofa and the television and keep the lamp", "we split the sofa and the television and keep the mug")


def test_flag_names_match_exactly_or_by_kind():
    flags = pd.Series(["", "echo:goal", "empty,echo:partner", None, "echo", "early_leave"])
    assert flagged(flags, ["echo"]).tolist() == [False, True, True, False, True, False]
    assert flagged(flags, ["echo:goal"]).tolist() == [False, True, False, False, False, False]
    assert flagged(flags, ["empty", "early_leave"]).tolist() == [False, False, True, False, False, True]
    check_flag_names(["echo", "echo:own_reply", "empty", "early_leave"])
    with pytest.raises(NsyncError, match=r"unknown reply flag\(s\) \['echoes'\]"):
        check_flag_names(["echoes"])


def _flag_cache(tmp_path):
    """A planted cache in which the flagged replies carry no synchrony: their states are noise."""
    from nsync.testing.synthetic import write_synthetic_cache

    return write_synthetic_cache(tmp_path / "c", n_episodes=60, turns=8, hidden=6, n_layers=1, scale=1.0, noise=0.5, flag_share=0.3)


def test_drop_flagged_leaves_out_pairs_whose_source_or_target_reply_is_flagged(tmp_path):
    turns = ActivationCache.open(_flag_cache(tmp_path)).turns
    pairs = build_pairs(turns, "synthetic", "synthetic", "A->B")
    kept = drop_flagged(pairs, turns, ["echo"])
    inter = turns[turns.condition == "interactive"]
    bad = {(r, u) for r, u, f in zip(inter.run_id, inter.utterance, inter.flag) if f}
    expected = [(r, t) not in bad and (tr, tu) not in bad
                for r, t, tr, tu in zip(pairs.run_id, pairs.t, pairs.target_run_id, pairs.target_utterance)]
    assert 0 < len(kept) < len(pairs) and len(kept) == sum(expected)
    assert kept[["run_id", "t"]].values.tolist() == pairs[np.array(expected)][["run_id", "t"]].values.tolist()
    assert drop_flagged(pairs, turns, ["echo:partner"]).equals(pairs)  # the planted flags are echo:goal
    assert drop_flagged(pairs, turns.drop(columns="flag"), ["echo"]).equals(pairs)  # no flags recorded: nothing to drop


def test_a_fit_with_exclude_flags_counts_what_it_left_out_and_recovers_the_clean_synchrony(tmp_path):
    """The control can fail: with the flagged (noise) pairs in, SyncR² is diluted; left out, it is higher."""
    from nsync.config import load_config
    from nsync.fit import FitConfig, run_fit

    cache = _flag_cache(tmp_path)
    common = [f"data.cache={cache}", "data.split_seeds=[0]", "data.directions=[A->B]", "logger.kind=none", "progress=false",
              "bootstrap=0", "surrogates.n=0", "time_bins=-1"]
    every = run_fit(load_config(FitConfig, [*common, f"out={tmp_path}/all"], prog="test"))
    clean = run_fit(load_config(FitConfig, [*common, f"out={tmp_path}/clean", "data.exclude_flags=[echo]"], prog="test"))
    turns = ActivationCache.open(cache).turns
    pairs = build_pairs(turns, "synthetic", "synthetic", "A->B")
    n_out = len(pairs) - len(drop_flagged(pairs, turns, ["echo"]))
    d_all, d_clean = every.directions["A->B"], clean.directions["A->B"]
    assert d_all.n_excluded == 0 and d_clean.n_excluded == n_out > 0
    assert d_clean.n_train[0] + d_clean.n_test[0] == len(pairs) - n_out
    assert clean.sync_r2 > every.sync_r2 + 0.1
    inter = turns[turns.condition == "interactive"]
    assert clean.reply_flags["replies"] == len(inter) and clean.reply_flags["echo"] == int((inter.flag != "").sum())
    assert clean.reply_flags["echo_by_kind"] == {"goal": clean.reply_flags["echo"]}


def test_fit_cli_prints_the_flagged_share_and_what_it_left_out(tmp_path, capsys):
    from nsync.fit.__main__ import main

    cache = _flag_cache(tmp_path)
    main([f"data.cache={cache}", f"out={tmp_path}/fit", "data.split_seeds=[0]", "data.directions=[A->B]", "logger.kind=none",
          "progress=false", "bootstrap=0", "surrogates.n=0", "time_bins=-1", "data.exclude_flags=[echo]"])
    turns = ActivationCache.open(cache).turns
    inter = turns[turns.condition == "interactive"]
    n_flagged = int((inter.flag != "").sum())
    pairs = build_pairs(turns, "synthetic", "synthetic", "A->B")
    n_out = len(pairs) - len(drop_flagged(pairs, turns, ["echo"]))
    out = capsys.readouterr().out
    assert (f"replies in the cache: {n_flagged} of {len(inter)} flagged ({n_flagged / len(inter):.1%}): 0 empty, {n_flagged} echo "
            f"(goal {n_flagged}), 0 early leaves ignored; data.exclude_flags=['echo'] left out pairs: A->B {n_out}") in out
