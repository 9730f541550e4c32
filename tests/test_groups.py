"""Conversations among more than two agents: scenarios, turn-taking, cache, pairs, fits, judge."""

import json

import numpy as np
import pandas as pd
import pytest

from nsync.cache import ActivationCache
from nsync.config import load_config
from nsync.data.pairs import Direction, build_pairs, resolve_directions
from nsync.data.splits import make_split
from nsync.testing.synthetic import planted_r2, write_synthetic_cache
from nsync.errors import NsyncError
from nsync.fit import FitConfig, FitResult, run_fit
from nsync.scenarios import load_builtin_groups, load_sotopia
from nsync.simulation.config import SimulateConfig
from nsync.simulation.prompts import Utterance, observer_text, sotopia_text
from nsync.simulation.run import simulate
from nsync.simulation.turns import TURN_POLICIES, TurnTakingConfig

from test_simulate import _scripted


def _policy(name, **kw):
    return TURN_POLICIES.get(name)(TurnTakingConfig(policy=name, **kw))


# -- scenarios and prompts ------------------------------------------------------------------------


def test_builtin_group_pack():
    lib = load_builtin_groups()
    sizes = {s.id: s.n_agents for s in lib.scenarios.values()}
    assert len(sizes) >= 20 and set(sizes.values()) == {3, 4}
    per_scenario = pd.Series([e.scenario.id for e in lib.episodes]).value_counts()
    assert per_scenario.min() >= 3  # several character groupings each
    assert all(len({c.id for c in e.characters}) == e.n_agents == e.scenario.n_agents for e in lib.episodes)
    kinds = " ".join(s.codename for s in lib.scenarios.values())
    for word in ("mediated", "family", "team", "auction"):
        assert word in kinds


def test_pairwise_relationships_decide_what_each_agent_sees():
    lib = load_builtin_groups()
    episode = next(e for e in lib.episodes if e.scenario.codename == "mediated_fence_dispute")
    parties, mediator = episode.characters[:2], episode.characters[2]
    to_party = sotopia_text(episode, 0, [])
    assert f"{parties[1].name}'s background: Unknown" in to_party  # strangers to each other
    assert f"Participants: {parties[0].name}, {parties[1].name} and {mediator.name}" in to_party
    to_mediator = sotopia_text(episode, 2, [])
    assert f"{parties[0].name}'s background: {parties[0].name} is a {parties[0].age}-year-old" in to_mediator  # acquaintance
    assert parties[0].secret not in to_mediator and mediator.secret in to_mediator
    # every goal but the reader's own is hidden, in the observer view there are none
    assert to_mediator.count("'s goal: Unknown") == 2 and "goal" not in observer_text(episode, 2, []).lower()


def test_character_count_must_match_goals(tmp_path):
    from importlib.resources import files
    import shutil

    root = tmp_path / "export"
    shutil.copytree(str(files("nsync.scenarios").joinpath("pack_groups")), root)
    shutil.copy(str(files("nsync.scenarios").joinpath("pack", "agents.json")), root / "agents.json")
    combos = json.loads((root / "env_agent_combos.json").read_text())
    combos[0]["agent_ids"] = combos[0]["agent_ids"][:2]
    (root / "env_agent_combos.json").write_text(json.dumps(combos))
    with pytest.raises(NsyncError, match=r"has 3 goals, so the episode needs 3 character ids \(one per goal, in order\), got 2"):
        load_sotopia(root)


# -- turn-taking ----------------------------------------------------------------------------------


def test_turn_policies():
    episode = load_builtin_groups().episodes[0]  # three agents
    names = [c.first_name for c in episode.characters]
    said = lambda agent, text="Fine.": [Utterance(agent, text)]  # noqa: E731
    rr = _policy("round_robin")
    assert rr.first(episode) == 0 and [rr.next(episode, said(a), [0, 1, 2]) for a in (0, 1, 2)] == [1, 2, 0]
    assert rr.next(episode, said(0), [0, 2]) == 2  # agent 1 left
    fixed = _policy("fixed", order=[0, 2, 1])
    assert [fixed.next(episode, said(a), [0, 1, 2]) for a in (0, 2, 1)] == [2, 1, 0]
    with pytest.raises(NsyncError, match="does not list each of the 3 agents"):
        _policy("fixed", order=[0, 1]).first(episode)
    addressed = _policy("addressed")
    assert addressed.next(episode, said(0, f"What do you think, {names[2]}?"), [0, 1, 2]) == 2
    assert addressed.next(episode, said(0, f"{names[1]} and {names[2]}, listen."), [0, 1, 2]) == 1  # the first named
    assert addressed.next(episode, said(0, f"{names[2]}, are you there?"), [0, 1]) == 1  # agent 2 left: round robin
    assert addressed.next(episode, said(1, "I agree."), [0, 1, 2]) == 2
    with pytest.raises(NsyncError, match="turn_taking.policy=fixed needs turn_taking.order"):
        TurnTakingConfig(policy="fixed")


# -- simulation -----------------------------------------------------------------------------------

GROUP_ARGS = ["models=[tiny-llama]", "scenarios.source=builtin-groups", "scenarios.limit=4", "max_turns=7",
              "sampling.max_new_tokens=6", "episodes_in_flight=3", "flush_every=2", "progress=false", "capture.listener=true"]


def _simulate(out, *extra):
    return simulate(load_config(SimulateConfig, [f"out={out}", *GROUP_ARGS, *extra], prog="test"))


@pytest.fixture(scope="module")
def group_cache(tmp_path_factory):
    return _simulate(tmp_path_factory.mktemp("groups") / "c")[0]


def test_group_cache_rows(group_cache):
    cache = ActivationCache.open(group_cache)
    t = cache.turns
    inter = t[t.condition == "interactive"]
    lib = {e.id: e for e in load_builtin_groups().episodes}
    assert cache.agents == [0, 1, 2, 3][: max(e.n_agents for e in lib.values() if e.id in set(t.episode_id))]
    for run_id, run in inter.sort_values("utterance").groupby("run_id"):
        episode = lib[run.episode_id.iloc[0]]
        n = episode.n_agents
        assert run["agent"].tolist() == [k % n for k in range(len(run))]  # round robin
        assert (run["characters"] == "|".join(c.id for c in episode.characters)).all() and (run["n_agents"] == n).all()
        assert run["character_id"].tolist() == [episode.characters[a].id for a in run["agent"]]
        # every other agent present listened before each utterance
        listen = t[(t.run_id == run_id) & (t.condition == "listener")]
        assert len(listen) == (n - 1) * len(run)
        for u, rows in listen.groupby("utterance"):
            speaker = int(run.loc[run.utterance == u, "agent"].iloc[0])
            assert sorted(rows["agent"]) == [a for a in range(n) if a != speaker]
    assert cache.states("tiny-llama", 1, "listener").shape[0] == int((t.condition == "listener").sum())
    assert "agents per episode at most" in cache.summary()


def test_group_states_do_not_depend_on_batching_or_prefix_reuse(tmp_path, group_cache):
    a = ActivationCache.open(group_cache)
    b = ActivationCache.open(_simulate(tmp_path / "b", "episodes_in_flight=1", "reuse_prefix=false")[0])
    for cache in (a, b):
        cache.sorted = cache.turns.sort_values(["run_id", "utterance", "condition", "agent"])
    assert a.sorted["text"].tolist() == b.sorted["text"].tolist()
    for condition in ("interactive", "listener", "observer"):
        rows = lambda c: c.sorted[c.sorted.condition == condition]["row"].to_numpy()  # noqa: E731
        np.testing.assert_allclose(np.asarray(a.states("tiny-llama", 2, condition))[rows(a)],
                                   np.asarray(b.states("tiny-llama", 2, condition))[rows(b)], atol=2e-3)


def test_leaving_removes_an_agent_and_two_are_needed(tmp_path, monkeypatch):
    """Every reply is the leave marker: ignored before min_utterances, then agents leave one by
    one and the episode ends when one agent is left."""
    _scripted(monkeypatch, first="[leave]", again="Hello.")
    out, _ = _simulate(tmp_path / "c", "min_utterances=3", "max_turns=10", "scenarios.limit=1", "capture.listener=false")
    inter = ActivationCache.open(out).turns.query("condition == 'interactive'").sort_values("utterance")
    assert inter["agent"].tolist() == [0, 1, 2, 0, 1] and inter["left"].tolist() == [False] * 3 + [True, True]


def test_fixed_order_and_cache_identity(tmp_path):
    out, _ = _simulate(tmp_path / "c", "turn_taking.policy=fixed", "turn_taking.order=[2,0,1]", "scenarios.ids=[family_care_decision]",
                       "scenarios.limit=1", "capture.listener=false", "capture.observer=false")
    inter = ActivationCache.open(out).turns.sort_values("utterance")
    assert inter["agent"].tolist()[:4] == [2, 0, 1, 2]
    with pytest.raises(NsyncError, match="different config"):  # another policy is another cache
        _simulate(tmp_path / "c", "scenarios.ids=[family_care_decision]", "scenarios.limit=1", "capture.listener=false",
                  "capture.observer=false")
    # a cache written before turn_taking existed was round robin: it resumes with the default only
    args = ["scenarios.limit=1", "capture.listener=false", "capture.observer=false", "max_turns=2"]
    old, _ = _simulate(tmp_path / "old", *args)
    manifest = json.loads((old / "manifest.json").read_text())
    del manifest["identity"]["turn_taking"]
    manifest["config_hash"] = "0" * 16
    (old / "manifest.json").write_text(json.dumps(manifest))
    assert _simulate(tmp_path / "old", *args)[1].runs == 0
    with pytest.raises(NsyncError, match="differs in: turn_taking"):
        _simulate(tmp_path / "old", *args, "turn_taking.policy=addressed")


# -- cache, pairs and splits ----------------------------------------------------------------------


def test_cache_answers_by_agent(group_cache):
    cache = ActivationCache.open(group_cache)
    t = cache.turns
    inter = t[t.condition == "interactive"]
    assert (cache.utterances(2)["agent"] == 2).all() and len(cache.utterances(2)) == int((inter.agent == 2).sum())
    run = inter.sort_values("utterance").groupby("run_id").get_group(inter.run_id.iloc[0])
    for t0 in range(len(run)):
        for agent in range(3):
            later = run[(run.utterance > t0) & (run.agent == agent)]["utterance"].tolist()
            for lag in (1, 2):
                got = cache.next_utterance(run.run_id.iloc[0], t0, agent, lag)
                assert (got is None) == (len(later) < lag)
                if got is not None:
                    assert got["utterance"] == later[lag - 1] and got["agent"] == agent


def test_agent_pairs_follow_the_rule_and_dyads_keep_theirs(group_cache):
    turns = ActivationCache.open(group_cache).turns
    pairs = build_pairs(turns, "tiny-llama", "tiny-llama", "2->0", lag=2)
    inter = turns[turns.condition == "interactive"].set_index(["run_id", "utterance"])
    for p in pairs.itertuples():
        assert inter.loc[(p.run_id, p.t), "agent"] == 2 and inter.loc[(p.target_run_id, p.target_utterance), "agent"] == 0
        between = inter.loc[p.run_id].loc[p.t + 1 : p.target_utterance]
        assert (between["agent"] == 0).sum() == 2  # agent 0's second utterance after t
    same_time = build_pairs(turns, "tiny-llama", "tiny-llama", "0->2", pairing="same_time")
    assert (same_time["t"] == same_time["target_utterance"]).all() and len(same_time)
    assert resolve_directions(["all"], [0, 1, 2, 3])[:3] == ["0->1", "0->2", "0->3"]
    dyads = ActivationCache.open(write_synthetic_cache(str(group_cache) + "-dyad", n_episodes=6, turns=6)).turns
    pd.testing.assert_frame_equal(build_pairs(dyads, "synthetic", "synthetic", "A->B").drop(columns=["target_agent"]),
                                  build_pairs(dyads, "synthetic", "synthetic", "0->1").drop(columns=["target_agent"]))
    with pytest.raises(NsyncError, match="'1->1' is not one of"):
        Direction.parse("1->1")


def test_controls_pair_agents_across_runs():
    """cross_interaction: the same episode's other seed; shuffled_partner: another episode; observer
    sources: the same rows' observer states. Targets are always the target agent's."""
    turns = ActivationCache.open(write_synthetic_cache(
        __import__("tempfile").mkdtemp() + "/c", n_episodes=10, turns=7, n_agents=3, seeds=2, observer_share=0.5)).turns
    agent_of = turns[turns.condition == "interactive"].set_index(["run_id", "utterance"])["agent"]
    main = build_pairs(turns, "synthetic", "synthetic", "1->2")
    for pairing in ("cross_interaction", "shuffled_partner"):
        pairs = build_pairs(turns, "synthetic", "synthetic", "1->2", pairing=pairing)
        assert len(pairs) and (pairs["run_id"] != pairs["target_run_id"]).all()
        assert all(agent_of[(r, u)] == 2 for r, u in zip(pairs["target_run_id"], pairs["target_utterance"]))
        same_episode = pairs["run_id"].str.split("|").str[0] == pairs["target_run_id"].str.split("|").str[0]
        assert same_episode.all() if pairing == "cross_interaction" else not same_episode.any()
    observer = build_pairs(turns, "synthetic", "synthetic", "1->2", source_condition="observer")
    assert observer[["run_id", "t", "target_utterance"]].equals(main[["run_id", "t", "target_utterance"]])


def test_persona_split_holds_every_participant_out():
    turns = ActivationCache.open(write_synthetic_cache(
        __import__("tempfile").mkdtemp() + "/c", n_episodes=120, turns=6, n_agents=3, n_characters=14)).turns
    pairs = build_pairs(turns, "synthetic", "synthetic", "0->1")
    for seed in range(3):
        split = make_split(pairs, "persona", 0.2, seed)
        cast = lambda m: {c for cs in pairs.loc[m, "characters"] for c in cs.split("|")}  # noqa: E731
        assert not cast(split.train) & cast(split.test) and split.test.sum() > 0 and split.train.sum() > split.test.sum()


def test_caches_written_before_groups_open_unchanged(tmp_path):
    """A cache whose turns table predates the characters and n_agents columns."""
    path = write_synthetic_cache(tmp_path / "old", n_episodes=20, turns=6)
    for shard in (path / "shards").iterdir():
        table = pd.read_parquet(shard / "turns.parquet").drop(columns=["characters", "n_agents"])
        table.to_parquet(shard / "turns.parquet", index=False)
    cache = ActivationCache.open(path)
    assert cache.agents == [0, 1] and (cache.turns["characters"] == cache.turns["character_a"] + "|" + cache.turns["character_b"]).all()
    assert len(build_pairs(cache.turns, "synthetic", "synthetic", "A->B")) == 60
    make_split(build_pairs(cache.turns, "synthetic", "synthetic", "A->B"), "persona", 0.2, 0)


# -- fits -----------------------------------------------------------------------------------------


def test_planted_relation_from_agent_2_to_agent_0_only(tmp_path):
    cache = write_synthetic_cache(tmp_path / "c", n_episodes=300, turns=12, hidden=4, n_agents=3, plant=(2, 0))
    cfg = load_config(FitConfig, [f"out={tmp_path / 'fit'}", f"data.cache={cache}", "data.directions=[all]", "data.split_seeds=[0]",
                                  "logger.kind=none", "progress=false", "bootstrap=50"], prog="test")
    result = run_fit(cfg)
    matrix = result.agent_matrix()
    assert matrix.shape == (3, 3) and np.isnan(np.diag(matrix.to_numpy())).all()
    assert matrix.loc[2, 0] == pytest.approx(planted_r2(1, 1), abs=0.05)
    others = [matrix.loc[i, j] for i in range(3) for j in range(3) if i != j and (i, j) != (2, 0)]
    assert max(others) < 0.03
    assert result.sync_r2 == pytest.approx(np.nanmean(matrix.to_numpy()), abs=1e-9)  # the average over pairs
    assert (tmp_path / "fit" / "agent_pairs.png").is_file()
    assert FitResult.load(tmp_path / "fit").agent_matrix().equals(matrix)


def test_group_cache_fits_every_ordered_pair(tmp_path, group_cache):
    cfg = load_config(FitConfig, [f"out={tmp_path / 'fit'}", f"data.cache={group_cache}", "data.directions=[all]", "data.split_seeds=[0]",
                                  "data.test_size=0.5", "logger.kind=none", "progress=false", "bootstrap=20"], prog="test")
    result = run_fit(cfg)
    assert set(result.directions) | set(result.skipped_directions) == set(resolve_directions(["all"], [0, 1, 2]))
    assert (tmp_path / "fit" / "agent_pairs.png").is_file() and result.config["data"]["directions"][0] == "0->1"


# -- judge ----------------------------------------------------------------------------------------


def test_judge_scores_every_agent(group_cache, tiny_llama):
    from nsync.judge.backends import LocalJudge
    from nsync.judge.rubric import json_request
    from nsync.judge.run import JudgeConfig, judge_cache
    from nsync.judge.schema import parse_answer

    cfg = load_config(JudgeConfig, [f"cache={group_cache}", "backend=local", "model=tiny-llama", "progress=false"], prog="test")
    _, table = judge_cache(cfg, judge=LocalJudge(tiny_llama))
    lib = {e.id: e for e in load_builtin_groups().episodes}
    per_run = table.groupby("run_id")["agent"].apply(sorted)
    for run_id, agents in per_run.items():
        assert agents == list(range(lib[run_id.split("|")[0]].n_agents))
    assert (table.status == "ok").all() and table.overall.notna().all()
    episode = lib[table.run_id.iloc[0].split("|")[0]]
    request = json_request(episode, [])
    assert '"agent_c": {' in request and f"agent C is {episode.characters[2].name}" in request
    scores = {"believability": 5, "relationship": 0, "knowledge": 1, "secret": 0, "social_rules": 0,
              "financial_and_material_benefits": 0, "goal": 3}
    answer = json.dumps({"agent_a": scores, "agent_b": scores, "agent_c": scores | {"goal": 9}})
    assert parse_answer(answer, 3).agent_c.goal == 9
    with pytest.raises(ValueError, match="agent_c"):
        parse_answer(json.dumps({"agent_a": scores, "agent_b": scores}), 3)


@pytest.mark.real_model
def test_smollm2_three_agent_episodes_simulate_and_fit(tmp_path, smollm2):
    """The whole path with the bundled model: three agents, listener states, every ordered pair."""
    cfg = load_config(SimulateConfig, [f"out={tmp_path / 'c'}", "scenarios.source=builtin-groups", "scenarios.ids=[group_dinner_bill]",
                                       "max_turns=7", "sampling.max_new_tokens=12", "capture.listener=true", "progress=false"], prog="test")
    out, stats = simulate(cfg, {"smollm2-135m": smollm2})
    cache = ActivationCache.open(out)
    t = cache.turns
    assert cache.agents == [0, 1, 2] and stats.runs == 3
    # every agent present but the speaker listens (two, or one after someone left)
    assert stats.utterances <= int((t.condition == "listener").sum()) <= 2 * stats.utterances
    names = {c.name for e in load_builtin_groups().select(["group_dinner_bill"]) for c in e.characters}
    assert not t.loc[t.condition == "interactive", "text"].isin(names).any()
    fit = load_config(FitConfig, [f"out={tmp_path / 'fit'}", f"data.cache={out}", "data.directions=[all]", "data.split_seeds=[0]",
                                  "data.test_size=0.34", "data.source_layer_step=10", "logger.kind=none", "progress=false",
                                  "bootstrap=0", "cka=false"], prog="test")
    result = run_fit(fit)
    assert result.agent_matrix().shape == (3, 3) and (tmp_path / "fit" / "agent_pairs.png").is_file()
