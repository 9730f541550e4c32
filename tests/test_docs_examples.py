"""The Python examples the documentation presents as runnable run: each page's ```python blocks,
in order, in one namespace, against a small synthetic cache where they name the quickstart's.
(docs/how-to/extending.md has its own test, tests/test_extending.py.)"""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from nsync.testing.synthetic import write_synthetic_cache

DOCS = Path(__file__).resolve().parents[1] / "docs"
#: Pages whose Python blocks are runnable, and the cache path they use.
PAGES = ["getting-started.md", "how-to/fit.md"]
QUICKSTART_CACHE = "runs/quickstart/cache"


def _blocks(page: str) -> list[str]:
    return re.findall(r"```python\n(.*?)```", (DOCS / page).read_text(), flags=re.S)


@pytest.fixture(scope="module")
def quickstart_like(tmp_path_factory) -> Path:
    """A cache shaped as the examples expect: SmolLM2's name, 16 layers (they index 10, 14, 15), dyads."""
    root = tmp_path_factory.mktemp("docs_examples")
    write_synthetic_cache(root / QUICKSTART_CACHE, "linear", n_episodes=30, turns=8, hidden=8, n_layers=16, model="smollm2-135m")
    return root


@pytest.mark.parametrize("page", PAGES)
def test_page_examples_run(page, quickstart_like, monkeypatch):
    blocks = _blocks(page)
    assert blocks, f"{page} has no python examples any more: update PAGES"
    monkeypatch.chdir(quickstart_like)
    namespace: dict = {}
    for block in blocks:
        assert QUICKSTART_CACHE in block or namespace, "an example outside the quickstart's cache needs its own fixture"
        exec(compile(block, f"{page}:python-block", "exec"), namespace)
    if page == "how-to/fit.md":  # what the example says it gives
        assert tuple(namespace["probe"].results.test_r2.shape) == (2, len(namespace["dm"].target_layers))
        assert namespace["w"].shape == (namespace["dm"].d_in, namespace["dm"].d_out)


#: Hand-written settings tables (how-to pages) and the config class their keys belong to; the
#: complete reference is generated from the classes, these explain a setting in context.
SETTINGS_TABLES = {
    "how-to/simulate.md": {"key": "nsync.simulation.config:SimulateConfig"},
    "how-to/fit.md": {"key": "nsync.fit.config:FitConfig"},
    "how-to/controls.md": {"key (`nsync.controls`)": "nsync.analysis.controls:ControlsConfig",
                           "key (`nsync.reread`)": "nsync.simulation.reread:RereadConfig"},
}


def _table_keys(text: str, header: str) -> list[str]:
    """The config keys named in the first column of the table whose first header cell is ``header``
    (``a`` / ``.b`` continues the previous key's parent: ``sampling.temperature`` / ``.top_p``)."""
    keys, inside = [], False
    for line in text.splitlines():
        cells = [c.strip() for c in line.strip().strip("|").split("|")] if line.startswith("|") else None
        if cells is None:
            inside = False
            continue
        if cells[0] == header:
            inside = True
            continue
        if inside and not set(cells[0]) <= set("-: "):
            previous = ""
            for token in re.findall(r"`([^`]+)`", cells[0]):
                key = previous.rsplit(".", 1)[0] + token if token.startswith(".") else token
                keys.append(key)
                previous = key
    return keys


@pytest.mark.parametrize("page", list(SETTINGS_TABLES))
def test_settings_tables_name_real_keys(page):
    import importlib

    from nsync.config import config_keys

    text = (DOCS / page).read_text()
    for header, path in SETTINGS_TABLES[page].items():
        module, name = path.split(":")
        valid = {k for k, _, _ in config_keys(getattr(importlib.import_module(module), name))}
        named = _table_keys(text, header)
        assert named, f"no settings table headed '{header}' in {page}"
        unknown = [k for k in named if k not in valid]
        assert not unknown, f"{page} describes keys that {name} does not have: {unknown}"


def test_results_page_names_every_field_of_fit_result():
    """docs/reference/results.md's top-level table and FitResult's fields agree both ways."""
    from nsync.fit.results import FitResult

    text = (DOCS / "reference" / "results.md").read_text()
    table = text.split("| field | meaning |", 1)[1].split("\n\n", 1)[0]
    named = {name for line in table.splitlines()[2:] for name in re.findall(r"`([a-z_0-9]+)`", line.split("|")[1])}
    fields = set(FitResult.model_fields)
    assert not fields - named, f"results.md does not describe {sorted(fields - named)}"
    assert not named - fields, f"results.md describes fields FitResult does not have: {sorted(named - fields)}"
