"""docs/how-to/extending.md runs: each worked example registers a plug-in, which then works end to end."""

import re
from pathlib import Path

import numpy as np
import pytest

from nsync.config import load_config
from nsync.data.pairs import PAIRINGS
from nsync.testing.synthetic import planted_r2, write_synthetic_cache
from nsync.fit import FitConfig, FitResult, run_fit
from nsync.fit.analyses import ANALYSES
from nsync.fit.probe_types import PROBE_TYPES
from nsync.judge.backends import JUDGE_BACKENDS
from nsync.models.zoo import MODEL_SOURCES

DOC = Path(__file__).resolve().parents[1] / "docs" / "how-to" / "extending.md"
REGISTRIES = (PROBE_TYPES, ANALYSES, PAIRINGS, JUDGE_BACKENDS, MODEL_SOURCES)


@pytest.fixture(scope="module")
def examples():
    """Execute every python block of the document, then take the registrations back out."""
    before = {id(r): r.names() for r in REGISTRIES}
    namespace: dict = {}
    for block in re.findall(r"```python\n(.*?)```", DOC.read_text(), flags=re.S):
        exec(compile(block, str(DOC), "exec"), namespace)
    yield namespace
    for registry in REGISTRIES:
        for name in set(registry.names()) - set(before[id(registry)]):
            registry.unregister(name)


def test_the_document_registers_one_of_each_kind(examples):
    assert "mean_baseline" in PROBE_TYPES and "partner_before" in PAIRINGS and "median_sync" in ANALYSES
    assert "length" in JUDGE_BACKENDS and "toy" in MODEL_SOURCES


@pytest.fixture(scope="module")
def planted(tmp_path_factory):
    return write_synthetic_cache(tmp_path_factory.mktemp("x") / "c", "linear", n_episodes=60, turns=6, hidden=4, n_layers=1)


def _fit(cache, out, *extra):
    args = [f"out={out}", f"data.cache={cache}", "logger.kind=none", "progress=false", "data.directions=[A->B]",
            "data.split_seeds=[0]", "bootstrap=50", *extra]
    return run_fit(load_config(FitConfig, args, prog="test"))


def test_probe_type_example(examples, planted, tmp_path):
    result = _fit(planted, tmp_path / "f", "probe=mean_baseline")
    r2 = np.array(result.directions["A->B"].r2, dtype=float)
    assert result.probe == "mean_baseline" and np.nanmax(r2) <= 1e-9 and result.sync_r2 == 0.0
    assert (tmp_path / "f" / "results.json").is_file()


def test_analysis_example(examples, planted, tmp_path):
    result = _fit(planted, tmp_path / "f")  # one split seed, A->B
    median = result.analyses["median_sync"]
    assert abs(median - planted_r2(1, 1)) < 0.15  # every layer pair carries the planted relation
    # the median over source layers of the clipped test R² at each one's chosen target, from the result's own figures
    assert median == pytest.approx(np.median(np.clip(result.directions["A->B"].r2_by_source_layer, 0, None)), abs=1e-12)
    assert FitResult.load(tmp_path / "f").analyses == {"median_sync": median}


def test_pairing_example(examples, planted, tmp_path):
    assert _fit(planted, tmp_path / "main").sync_r2 > planted_r2(1, 1) - 0.1
    assert _fit(planted, tmp_path / "before", "data.pairing=partner_before").sync_r2 < 0.05  # the relation runs forward only


def test_judge_backend_example(examples, tmp_path):
    from nsync.judge.run import JudgeConfig, judge_cache
    from nsync.simulation.config import SimulateConfig
    from nsync.simulation.run import simulate

    cache, _ = simulate(load_config(SimulateConfig, [f"out={tmp_path / 'c'}", "models=[toy:3]", "scenarios.limit=2", "max_turns=4",
                                                     "sampling.max_new_tokens=4", "capture.observer=false", "progress=false"], prog="test"))
    _, table = judge_cache(load_config(JudgeConfig, [f"cache={cache}", "backend=length", "options.min_utterances=3",
                                                     "progress=false"], prog="test"))
    assert len(table) == 4 and (table["status"] == "ok").all()  # two runs x two agents


def test_model_source_example(examples):
    from nsync.models import load_model

    a, b = load_model("toy:3"), load_model("toy:4")
    assert a.name == "toy:3" and a.n_layers == 2
    wa, wb = (next(m.model.parameters()).detach() for m in (a, b))
    assert not np.allclose(wa.numpy(), wb.numpy())  # the seed is the name's
