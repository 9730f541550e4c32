"""The fit stage's numbers, pinned: every golden fit of ``tests/golden/fits.py`` (main fit, a
control, a partition with a joined baseline, surrogates, time course, CKA, weights, the MLP, two
split seeds, both directions, agent pairs) must reproduce its stored results.json, bootstrap
replicates, weights and per-episode SyncR² to 1e-9 (the MLP, trained in float32, to 1e-5)."""

import json

import pytest

from tests.golden.fits import FITS, HERE, MLP_TOLERANCE, TOLERANCE, differences, numbers, run


@pytest.fixture(scope="module")
def workdir(tmp_path_factory):
    return tmp_path_factory.mktemp("golden")


@pytest.mark.parametrize("name", list(FITS))
def test_a_golden_fit_reproduces_its_numbers(name, workdir):
    expected = json.loads((HERE / f"{name}.json").read_text())
    actual = json.loads(json.dumps(numbers(run(name, workdir))))  # through JSON, as stored
    wrong = differences(expected, actual, MLP_TOLERANCE if name == "mlp" else TOLERANCE)
    assert not wrong, f"{len(wrong)} numbers of golden fit '{name}' moved (first 20):\n" + "\n".join(wrong[:20])


@pytest.mark.parametrize("name", ["main", "partition"])
def test_one_source_layer_per_chunk_gives_the_same_numbers(name, workdir):
    """memory_gb only decides how many source layers are fitted together (a run-only key): with one
    per chunk every collector sees several chunks, and each number must stay as stored."""
    expected = json.loads((HERE / f"{name}.json").read_text())
    actual = json.loads(json.dumps(numbers(run(name, workdir, "memory_gb=1e-9"))))
    wrong = differences(expected, actual, TOLERANCE)
    assert not wrong, f"{len(wrong)} numbers of golden fit '{name}' moved with one source layer per chunk:\n" + "\n".join(wrong[:20])


def test_the_comparison_can_fail():
    assert differences({"a": 0.5, "b": "x"}, {"a": 0.5 + 2e-9, "b": "x"}, TOLERANCE) == ["a: 0.5 -> 0.500000002"]
    assert differences({"a": 1}, {"c": 1}, TOLERANCE) == ["a: missing", "c: new"]
