import collections
import json
import shutil

import pytest

from nsync.errors import NsyncError
from nsync.scenarios import RELATIONSHIPS, load_builtin, load_sotopia, own_background, visible_background


def test_builtin_pack_is_complete():
    lib = load_builtin()
    assert len(lib.scenarios) >= 40 and len(lib.characters) >= 24
    assert {s.relationship for s in lib.scenarios.values()} == set(range(len(RELATIONSHIPS)))
    categories = {s.source.split(":")[-1] for s in lib.scenarios.values()}
    assert categories >= {"negotiation", "persuasion", "cooperation", "conflict", "favours", "disclosure", "small_talk"}
    per_scenario = collections.Counter(e.scenario.id for e in lib.episodes)
    assert set(per_scenario.values()) == {5}
    per_character = collections.Counter(c.id for e in lib.episodes for c in e.characters)
    assert min(per_character.values()) >= 10  # persona-level splits need many episodes per character
    assert all(e.characters[0].id != e.characters[1].id for e in lib.episodes)


def test_sotopia_export_counts(sotopia_dir):
    lib = load_sotopia(sotopia_dir)
    assert (len(lib.scenarios), len(lib.characters), len(lib.episodes)) == (90, 40, 450)


def test_select_by_codename_and_limit():
    lib = load_builtin()
    eps = lib.select(["train_small_talk"])
    assert len(eps) == 5 and all(e.scenario.codename == "train_small_talk" for e in eps)
    assert len(lib.select(limit=3)) == 3
    with pytest.raises(NsyncError, match="no episode or scenario matches"):
        lib.select(["no_such_scenario"])


def _copy_pack(tmp_path):
    lib_dir = tmp_path / "export"
    from importlib.resources import files

    shutil.copytree(str(files("nsync.scenarios").joinpath("pack")), lib_dir)
    return lib_dir


def _edit(path, fn):
    data = json.loads(path.read_text())
    fn(data)
    path.write_text(json.dumps(data))


@pytest.mark.parametrize(
    "file,edit,message",
    [
        ("envs.json", lambda d: d["nsync-env-01"].update(agent_goals=["only one"]), r"envs.json: record 'nsync-env-01', field 'agent_goals': expected a list of at least two goal"),
        ("envs.json", lambda d: d["nsync-env-01"].update(relationships={"0->0": 1}), r"field 'relationships': key '0->0' must be 'i->j'"),
        ("env_agent_combos.json", lambda d: d[0].update(agent_ids=d[0]["agent_ids"] + ["nsync-char-03"]),
         r"scenario 'nsync-env-01' has 2 goals, so the episode needs 2 character ids \(one per goal, in order\), got 3"),
        ("envs.json", lambda d: d["nsync-env-02"].update(relationship=9), r"record 'nsync-env-02', field 'relationship': unknown relationship 9"),
        ("envs.json", lambda d: d["nsync-env-03"].update(relationship="enemies"), r"unknown relationship 'enemies'"),
        ("envs.json", lambda d: d["nsync-env-04"].pop("scenario"), r"record 'nsync-env-04', field 'scenario': missing"),
        ("agents.json", lambda d: d["nsync-char-01"].update(age="old"), r"agents.json: record 'nsync-char-01', field 'age': expected int"),
        ("env_agent_combos.json", lambda d: d[0].update(agent_ids=["nsync-char-01", "ghost"]), r"field 'agent_ids': names character 'ghost'"),
        ("env_agent_combos.json", lambda d: d[1].update(env_id="nowhere"), r"field 'env_id': names scenario 'nowhere'"),
    ],
)
def test_bad_records_name_file_record_and_field(tmp_path, file, edit, message):
    root = _copy_pack(tmp_path)
    _edit(root / file, edit)
    with pytest.raises(NsyncError, match=message):
        load_sotopia(root)


def test_malformed_json_and_missing_file(tmp_path):
    root = _copy_pack(tmp_path)
    (root / "agents.json").write_text('{"a": ')
    with pytest.raises(NsyncError, match=r"agents.json: malformed JSON at line 1"):
        load_sotopia(root)
    (root / "envs.json").unlink()
    with pytest.raises(NsyncError, match="not found"):
        load_sotopia(tmp_path / "missing")


def test_visibility_by_relationship():
    c = load_builtin().characters["nsync-char-01"]
    assert visible_background(c, 0) == "Unknown"
    assert visible_background(c, 1) == f"{c.name}."
    acquaintance = visible_background(c, 2)
    assert c.occupation.lower() in acquaintance and c.public_info in acquaintance
    assert c.personality_and_values not in acquaintance
    for rel in (3, 4, 5):
        friend = visible_background(c, rel)
        assert c.personality_and_values in friend and c.mbti in friend
        assert c.secret not in friend
    assert c.secret in own_background(c)


def test_the_documented_minimal_folder_loads_and_simulates(tmp_path, tiny_llama):
    """docs/how-to/models-and-scenarios.md's example folder is a scenario source as it stands."""
    from pathlib import Path

    from nsync.cache import ActivationCache
    from nsync.config import load_config
    from nsync.simulation.config import SimulateConfig
    from nsync.simulation.run import simulate

    folder = Path(__file__).resolve().parents[1] / "docs" / "examples" / "own_scenarios"
    lib = load_sotopia(folder)
    assert (len(lib.characters), len(lib.scenarios), len(lib.episodes)) == (2, 1, 2)
    assert lib.episodes[0].scenario.relationship == RELATIONSHIPS.index("acquaintance")
    cfg = load_config(SimulateConfig, [f"out={tmp_path / 'c'}", "models=[tiny]", f"scenarios.source={folder}", "max_turns=4",
                                       "sampling.max_new_tokens=8", "progress=false"], prog="test")  # fmt: skip
    simulate(cfg, models={"tiny": tiny_llama})
    turns = ActivationCache.open(tmp_path / "c").turns
    assert set(turns["episode_id"]) == {"lab-ep-1", "lab-ep-2"} and set(turns["character_id"]) == {"lab-char-ada", "lab-char-ben"}
