"""The import budget: ``--help`` of every command imports no heavy library, a fit imports none of
nsync's model or simulation code, and every lazily exported name resolves."""

from __future__ import annotations

import importlib
import json
import subprocess
import sys

import pytest

from nsync.cli import COMMANDS

#: Libraries a --help must not import (each costs from a few tenths of a second to seconds; numpy,
#: pandas and the pyarrow that pandas loads stay: the configs validate with them, ~0.4 s together).
HEAVY = ("torch", "lightning", "transformers", "torchmetrics", "scipy", "sklearn", "matplotlib", "wandb", "datasets")

#: Packages whose names load on first use (lazy_loader.attach).
LAZY_PACKAGES = ("nsync.cache", "nsync.data", "nsync.fit", "nsync.judge", "nsync.probes", "nsync.simulation")


def _modules_after(code: str) -> set[str]:
    """The modules a fresh interpreter holds after running ``code`` (SystemExit is expected: --help)."""
    probe = f"import json, sys\ntry:\n    {code}\nexcept SystemExit:\n    pass\nprint(json.dumps(sorted(sys.modules)))"
    done = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    return set(json.loads(done.stdout.strip().splitlines()[-1]))


def _heavy(modules: set[str]) -> list[str]:
    return sorted(m for m in modules if m.split(".")[0] in HEAVY)


@pytest.mark.slow  # a fresh interpreter
@pytest.mark.parametrize("command", [None, *COMMANDS])
def test_help_imports_no_heavy_module(command):
    argv = ["--help"] if command is None else [command, "--help"]
    loaded = _modules_after(f"from nsync.cli import main; main({argv!r})")
    assert not _heavy(loaded), f"nsync {' '.join(argv)} imports {_heavy(loaded)[:8]}: move the import into the function that needs it"


@pytest.mark.slow  # a fresh interpreter
def test_python_m_fit_help_imports_no_heavy_module():
    loaded = _modules_after("import runpy; sys.argv = ['nsync.fit', '--help']; runpy.run_module('nsync.fit', run_name='__main__')")
    assert not _heavy(loaded)


@pytest.mark.slow  # a fresh interpreter
def test_a_fit_imports_no_model_or_simulation_code():
    # Lightning itself brings torch, torchmetrics and (through torchmetrics) transformers; nsync's
    # own model zoo, generation and judge code must not come on top.
    loaded = _modules_after("import nsync.fit.loop")
    ours = sorted(m for m in loaded if m.split(".")[:2] in (["nsync", "models"], ["nsync", "simulation"], ["nsync", "judge"]))
    assert not ours, ours
    assert "wandb" not in loaded  # only when logger.kind=wandb


@pytest.mark.parametrize("package", LAZY_PACKAGES)
def test_every_lazy_name_resolves(package):
    module = importlib.import_module(package)
    for name in module.__all__:
        assert getattr(module, name) is not None, f"{package}.{name}"
    assert sorted(module.__all__) == sorted(set(module.__all__))
