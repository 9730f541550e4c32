"""SOTOPIA-format characters, scenarios and episodes: the built-in pack and a loader for exports."""

from nsync.scenarios.schema import (
    RELATIONSHIPS,
    Character,
    Episode,
    Scenario,
    ScenarioLibrary,
    own_background,
    visible_background,
)
from nsync.scenarios.sotopia import BUILTIN_SOURCES, load_builtin, load_builtin_groups, load_scenarios, load_sotopia

__all__ = [
    "BUILTIN_SOURCES",
    "RELATIONSHIPS",
    "Character",
    "Episode",
    "Scenario",
    "ScenarioLibrary",
    "load_builtin",
    "load_builtin_groups",
    "load_scenarios",
    "load_sotopia",
    "own_background",
    "visible_background",
]
