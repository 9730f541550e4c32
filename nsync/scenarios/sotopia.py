"""Read SOTOPIA's JSON export (``agents.json``, ``envs.json``, ``env_agent_combos.json``).

Every problem is reported with the file, the record and the field, so a hand-edited export
can be fixed without guesswork.
"""

from __future__ import annotations

import json
from importlib.resources import files
from pathlib import Path
from typing import Any

from nsync.errors import NsyncError
from nsync.scenarios.schema import RELATIONSHIPS, Character, Episode, Scenario, ScenarioLibrary

FILES = ("agents.json", "envs.json", "env_agent_combos.json")


def _read_json(path: Path) -> Any:
    if not path.is_file():
        raise NsyncError(f"{path}: file not found (a SOTOPIA export has {', '.join(FILES)})")
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as err:
        raise NsyncError(f"{path}: malformed JSON at line {err.lineno} column {err.colno}: {err.msg}") from None


def _records(data: Any, path: Path, what: str) -> list[tuple[str, dict]]:
    """SOTOPIA exports are either an object keyed by pk or a list of objects with a pk; an empty
    one is an error here (``what``: what a record is), before a simulation creates its cache."""
    if isinstance(data, dict):
        items = list(data.items())
    elif isinstance(data, list):
        items = [(str(r.get("pk", i)) if isinstance(r, dict) else str(i), r) for i, r in enumerate(data)]
    else:
        raise NsyncError(f"{path}: expected a JSON object or list of records, got {type(data).__name__}")
    if not items:
        raise NsyncError(f"{path}: holds no {what} records (the file is {json.dumps(data)}); a SOTOPIA export needs at least one")
    for key, rec in items:
        if not isinstance(rec, dict):
            raise NsyncError(f"{path}: record '{key}' is a {type(rec).__name__}, expected an object")
    return items


class _Fields:
    """Typed access to one record's fields with errors that name file, record and field."""

    def __init__(self, path: Path, key: str, rec: dict):
        self.path, self.key, self.rec = path, key, rec

    def fail(self, field: str, why: str) -> NsyncError:
        return NsyncError(f"{self.path}: record '{self.key}', field '{field}': {why}")

    def get(self, field: str, kind: type | tuple = str, default: Any = ...) -> Any:
        if field not in self.rec or self.rec[field] is None:
            if default is ...:
                raise self.fail(field, "missing")
            return default
        value = self.rec[field]
        if not isinstance(value, kind) or isinstance(value, bool) and kind is not bool:
            names = kind.__name__ if isinstance(kind, type) else " or ".join(k.__name__ for k in kind)
            raise self.fail(field, f"expected {names}, got {type(value).__name__} {value!r}")
        return value

    def strings(self, field: str) -> tuple[str, ...]:
        value = self.get(field, (list, str), default=[])
        return (value,) if isinstance(value, str) else tuple(str(v) for v in value)


def _character(path: Path, key: str, rec: dict) -> Character:
    f = _Fields(path, key, rec)
    return Character(
        id=str(f.get("pk", str, default=key)),
        first_name=f.get("first_name"),
        last_name=f.get("last_name", default=""),
        age=f.get("age", int),
        occupation=f.get("occupation", default=""),
        gender=f.get("gender", default=""),
        gender_pronoun=f.get("gender_pronoun", default=""),
        public_info=f.get("public_info", default=""),
        big_five=f.get("big_five", default=""),
        moral_values=f.strings("moral_values"),
        schwartz_values=f.strings("schwartz_personal_values"),
        personality_and_values=f.get("personality_and_values", default=""),
        decision_making_style=f.get("decision_making_style", default=""),
        secret=f.get("secret", default=""),
        mbti=f.get("mbti", default=""),
    )


def _relationship(f: _Fields, field: str, rel: Any) -> int:
    if isinstance(rel, str):
        if rel not in RELATIONSHIPS:
            raise f.fail(field, f"unknown relationship '{rel}'; use 0-5 or one of {', '.join(RELATIONSHIPS)}")
        rel = RELATIONSHIPS.index(rel)
    if isinstance(rel, bool) or not isinstance(rel, int) or not 0 <= rel < len(RELATIONSHIPS):
        raise f.fail(field, f"unknown relationship {rel!r}; use 0-5 ({', '.join(RELATIONSHIPS)})")
    return rel


def _scenario(path: Path, key: str, rec: dict) -> Scenario:
    f = _Fields(path, key, rec)
    goals = f.get("agent_goals", list)
    if len(goals) < 2 or not all(isinstance(g, str) for g in goals):
        raise f.fail("agent_goals", f"expected a list of at least two goal strings (one per agent), got {goals!r}")
    rel = _relationship(f, "relationship", f.get("relationship", (int, str)))
    # nsync's extension for groups: {"i->j": level} where agent i knows agent j differently
    pairwise = {}
    for pair, level in f.get("relationships", dict, default={}).items():
        parts = str(pair).replace(" ", "").split("->")
        if len(parts) != 2 or not all(p.isdigit() and int(p) < len(goals) for p in parts) or parts[0] == parts[1]:
            raise f.fail("relationships", f"key '{pair}' must be 'i->j' with two different agent indices below {len(goals)}")
        pairwise[(int(parts[0]), int(parts[1]))] = _relationship(f, f"relationships.{pair}", level)

    def opt(name: str) -> str | None:
        value = rec.get(name)
        return None if value is None else str(value)

    return Scenario(
        id=str(f.get("pk", str, default=key)),
        codename=f.get("codename", default=key),
        source=f.get("source", default=""),
        scenario=f.get("scenario"),
        goals=tuple(goals),
        relationship=rel,
        age_constraint=opt("age_constraint"),
        occupation_constraint=opt("occupation_constraint"),
        agent_constraint=opt("agent_constraint"),
        relationships=pairwise,
    )


def load_sotopia(path: str | Path, agents: str | Path | None = None) -> ScenarioLibrary:
    """Load a SOTOPIA export folder (``agents``: read the characters from this file instead of the
    folder's ``agents.json``).

    >>> lib = load_sotopia("../shared/data/sotopia")  # doctest: +SKIP
    >>> len(lib.scenarios), len(lib.characters), len(lib.episodes)  # doctest: +SKIP
    (90, 40, 450)
    """
    root = Path(path)
    if not root.is_dir():
        raise NsyncError(f"SOTOPIA export folder not found: {root}")
    agents_path, envs_path, combos_path = (root / name for name in FILES)
    agents_path = Path(agents) if agents is not None else agents_path
    characters = {}
    for key, rec in _records(_read_json(agents_path), agents_path, "character"):
        c = _character(agents_path, key, rec)
        characters[c.id] = c
    scenarios = {}
    for key, rec in _records(_read_json(envs_path), envs_path, "scenario"):
        s = _scenario(envs_path, key, rec)
        scenarios[s.id] = s
    episodes = []
    for key, rec in _records(_read_json(combos_path), combos_path, "episode"):
        f = _Fields(combos_path, key, rec)
        env_id = f.get("env_id")
        if env_id not in scenarios:
            raise f.fail("env_id", f"names scenario '{env_id}', which is not in {envs_path.name}")
        agent_ids = f.get("agent_ids", list)
        n_goals = len(scenarios[env_id].goals)
        if len(agent_ids) != n_goals:
            raise f.fail(
                "agent_ids",
                f"scenario '{env_id}' has {n_goals} goals, so the episode needs {n_goals} character ids "
                f"(one per goal, in order), got {len(agent_ids)}",
            )
        if len(set(agent_ids)) != len(agent_ids):
            raise f.fail("agent_ids", f"names the same character twice: {agent_ids}")
        for agent_id in agent_ids:
            if agent_id not in characters:
                raise f.fail("agent_ids", f"names character '{agent_id}', which is not in {agents_path.name}")
        episodes.append(
            Episode(
                id=str(f.get("pk", str, default=key)),
                scenario=scenarios[env_id],
                characters=tuple(characters[a] for a in agent_ids),
            )
        )
    return ScenarioLibrary(characters, scenarios, episodes, origin=str(root))


def load_builtin() -> ScenarioLibrary:
    """nsync's own scenario pack: 40 scenarios, 24 characters, 5 pairings each (200 episodes)."""
    lib = load_sotopia(Path(str(files("nsync.scenarios").joinpath("pack"))))
    lib.origin = "builtin"
    return lib


def load_builtin_groups() -> ScenarioLibrary:
    """nsync's pack of three- and four-agent scenarios, cast from the built-in characters."""
    pack = files("nsync.scenarios")
    lib = load_sotopia(Path(str(pack.joinpath("pack_groups"))), agents=Path(str(pack.joinpath("pack", "agents.json"))))
    lib.origin = "builtin-groups"
    return lib


#: Scenario sources that ship with nsync (anything else is a SOTOPIA export folder).
BUILTIN_SOURCES = {"builtin": load_builtin, "builtin-groups": load_builtin_groups}


def load_scenarios(source: str) -> ScenarioLibrary:
    """``builtin`` (dyads), ``builtin-groups`` (three and four agents) or the path of a SOTOPIA export folder."""
    return BUILTIN_SOURCES[source]() if source in BUILTIN_SOURCES else load_sotopia(source)
