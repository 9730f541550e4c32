"""House rules: importing nsync changes nothing in the process, figures choose their backend only
where none was chosen, no import cycle (function-level imports included), the fit config is a
leaf and the statistics import no framework."""

from __future__ import annotations

import ast
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from nsync.config import load_config
from nsync.errors import NsyncError
from nsync.fit.config import FitConfig

NSYNC = Path(__file__).resolve().parents[1] / "nsync"


def _run(code: str, **env: str) -> str:
    """The last line ``code`` prints in a fresh interpreter (no matplotlib backend chosen unless ``env`` does)."""
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300, env={**os.environ, "MPLBACKEND": "", **env})
    assert done.returncode == 0, done.stderr
    return (done.stdout.strip().splitlines() or [""])[-1]


@pytest.mark.slow  # a fresh interpreter
def test_importing_nsync_changes_no_warning_filter_environment_logger_or_backend():
    code = """
import json, logging, os, warnings
import lightning  # its own import changes some of these: compare from after it
def state():
    return [repr(warnings.filters), dict(os.environ), logging.getLogger("lightning.pytorch").level]
before = state()
import nsync.fit.loop, nsync.fit.tracking, nsync.fit.plots, nsync.stats.surrogates, nsync.analysis.controls, nsync.analysis.performance
import matplotlib
print(json.dumps([before == state(), matplotlib.rcParams._get_backend_or_none()]))
"""
    assert json.loads(_run(code)) == [True, None]


@pytest.mark.slow  # a fresh interpreter each
@pytest.mark.parametrize(("setup", "env", "backend"), [
    ("", {}, "agg"),  # nothing chosen: Agg
    ("", {"MPLBACKEND": "svg"}, "svg"),
    ("import matplotlib; matplotlib.use('pdf')", {}, "pdf"),
    ("import matplotlib.pyplot as plt; plt.switch_backend('svg')", {}, "svg"),
])
def test_figures_use_agg_only_where_no_backend_was_chosen(setup, env, backend):
    assert _run(f"{setup}\nfrom nsync.plotting import pyplot\nprint(pyplot().get_backend().lower())", **env) == backend


def _imports(path: Path) -> set[str]:
    """Every module a file imports, wherever the import is (module level, function, TYPE_CHECKING)."""
    names = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            names |= {a.name for a in node.names}
        elif isinstance(node, ast.ImportFrom) and node.module:
            names |= {node.module} | {f"{node.module}.{a.name}" for a in node.names}
    return names


def _module_graph() -> dict[str, set[str]]:
    """nsync's modules and the nsync modules each imports (any import, function-level and
    TYPE_CHECKING ones included; ``from package import name`` counts as the submodule where one
    is so named)."""
    modules = {}
    for path in NSYNC.rglob("*.py"):
        parts = path.relative_to(NSYNC.parent).with_suffix("").parts
        modules[".".join(parts[:-1] if parts[-1] == "__init__" else parts)] = path
    lazy = {f"{package}.{attr}": f"{package}.{sub}" for package, path in modules.items() if path.name == "__init__.py"
            for sub, attrs in _lazy_attrs(path).items() for attr in attrs}  # fmt: skip
    graph = {}
    for name, path in modules.items():
        graph[name] = {lazy.get(m, m) for m in _imports(path)} & set(modules) - {name}
    return graph


def _lazy_attrs(init: Path) -> dict[str, list[str]]:
    """A package's names that load a submodule on first use (``lazy_loader.attach(submod_attrs=...)``)."""
    for node in ast.walk(ast.parse(init.read_text())):
        if isinstance(node, ast.keyword) and node.arg == "submod_attrs" and isinstance(node.value, ast.Dict):
            return {ast.literal_eval(k): ast.literal_eval(v) for k, v in zip(node.value.keys, node.value.values, strict=True) if k is not None}
    return {}


def _cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components of more than one module (Tarjan), each a list of modules."""
    index, low, stack, on, out = {}, {}, [], set(), []

    def visit(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        on.add(v)
        for w in graph.get(v, ()):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            component = []
            while True:
                w = stack.pop()
                on.discard(w)
                component.append(w)
                if w == v:
                    break
            if len(component) > 1:
                out.append(sorted(component))

    for v in sorted(graph):
        if v not in index:
            visit(v)
    return out


def test_no_import_cycle_in_nsync():
    """No circle among nsync's modules, counting every import: a function-level import that hides a cycle is a cycle."""
    assert _cycles(_module_graph()) == []


def test_the_cycle_test_finds_a_hidden_cycle():
    assert _cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c"]]
    assert _cycles({"a": {"b"}, "b": set()}) == []


def test_the_fit_config_is_a_leaf_and_statistics_import_no_framework():
    assert not any(m.startswith("nsync.fit") for m in _imports(NSYNC / "fit" / "config.py"))
    graph = _module_graph()
    for module, imports in graph.items():
        if module.startswith("nsync.stats"):  # plain functions: no Lightning, config, cache or fit objects
            assert all(m.startswith(("nsync.stats", "nsync.errors")) for m in imports), (module, imports)
        if module.startswith(("nsync.stats", "nsync.fit")):
            assert not any(m.startswith("nsync.testing") for m in imports), (module, imports)


def test_an_unknown_probe_type_is_refused_before_any_data_is_read(tmp_path):
    from nsync.fit import run_fit

    cfg = load_config(FitConfig, [f"out={tmp_path}", f"data.cache={tmp_path / 'no-cache'}", "probe=ridge"], prog="test")
    with pytest.raises(NsyncError, match=r"probe must be one of \['affine', 'mlp'.*got 'ridge'"):
        run_fit(cfg)
