"""House rules: importing nsync changes nothing in the process, figures choose their backend only
where none was chosen, and the fit config and the probe types import each other one way only."""

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


def test_the_fit_config_and_the_probe_types_import_one_way():
    assert "nsync.fit.probe_types" in _imports(NSYNC / "fit" / "config.py")  # probe= is checked against the registry
    assert not any(m.startswith("nsync.fit.config") for m in _imports(NSYNC / "fit" / "probe_types.py"))
    for module in ("nsync.fit.config", "nsync.fit.probe_types"):  # each imports on its own
        _run(f"import {module}")


def test_an_unknown_probe_type_is_refused_when_the_config_is_loaded(tmp_path):
    with pytest.raises(NsyncError, match=r"probe must be one of \['affine', 'mlp'.*got 'ridge'"):
        load_config(FitConfig, [f"out={tmp_path}", f"data.cache={tmp_path}", "probe=ridge"], prog="test")
