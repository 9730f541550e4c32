"""Bad config values give one line, ``error: ...`` and exit status 2, before any data is read
(issue 44). Each case's id is the command and the values given: the documentation's table of
bad values is generated from these ids."""

import re
import shutil
from importlib.resources import files

import pytest

from nsync.cache import ActivationCache
from nsync.config import load_config
from nsync.errors import NsyncError, run_cli
from nsync.fit import __main__ as fit_cli
from nsync.fit.config import FitConfig
from nsync.scenarios import load_sotopia
from nsync.simulation import run as simulate_cli
from nsync.simulation.config import SimulateConfig
from nsync.testing.synthetic import write_synthetic_cache

MAINS = {"fit": fit_cli.main, "simulate": simulate_cli.main}
EMPTY_EXPORT = "<empty export>"  # replaced by a SOTOPIA export folder whose three files hold []


def case(command: str, *values: str, names: str, given: str):
    """One bad-value case: ``values`` are the overrides, ``names`` must appear in the message (the
    key, or the file at fault), and ``given`` too (the value as the message repeats it)."""
    return pytest.param(command, list(values), names, given, id=f"{command}:{','.join(values)}")


CASES = [
    # data.*: shares, budgets, lags, seeds and layers
    case("fit", "data.val_size=1", names="data.val_size", given="got 1.0"),
    case("fit", "data.val_size=-0.1", names="data.val_size", given="got -0.1"),
    case("fit", "data.val_size=0", names="data.val_size", given="data.val_size=0.0 holds out no validation episodes, but target_choice=validation"),
    case("fit", "data.val_size=0", "target_choice=test", "affine.alphas=[1,10]", names="data.val_size", given="affine.alphas"),
    case("fit", "data.val_size=0", "target_choice=test", "probe=mlp", names="data.val_size", given="probe=mlp"),
    case("fit", "data.test_size=0", names="data.test_size", given="got 0.0"),
    case("fit", "data.test_size=1", names="data.test_size", given="got 1.0"),
    case("fit", "data.test_size=20", names="data.test_size", given="got 20.0"),
    case("fit", "data.max_pairs=-3", names="data.max_pairs", given="got -3"),
    case("fit", "data.max_pairs=0", names="data.max_pairs", given="got 0"),
    case("fit", "data.lag=0", names="data.lag", given="got 0"),
    case("fit", "data.split_seeds=[0,-1]", names="data.split_seeds", given="got [0, -1]"),
    case("fit", "data.source_layers=[-1]", names="data.source_layers", given="got [-1]"),
    case("fit", "data.target_layers=[0,-2]", names="data.target_layers", given="got [0, -2]"),
    # the fit's own keys
    case("fit", "seed=-1", names="seed", given="got -1"),
    case("fit", "devices=0", names="devices", given="got 0"),
    case("fit", "logger.kind=tensorboard", names="logger.kind", given="got 'tensorboard'"),
    case("fit", "logger.mode=sometimes", names="logger.mode", given="got 'sometimes'"),
    case("fit", "mlp.hidden=0", names="mlp.hidden", given="got 0"),
    case("fit", "mlp.depth=-1", names="mlp.depth", given="got -1"),
    case("fit", "mlp.batch_size=0", names="mlp.batch_size", given="got 0"),
    case("fit", "mlp.max_epochs=0", names="mlp.max_epochs", given="got 0"),
    case("fit", "mlp.patience=-1", names="mlp.patience", given="got -1"),
    case("fit", "mlp.dropout=1", names="mlp.dropout", given="got 1.0"),
    case("fit", "mlp.lr=0", names="mlp.lr", given="got 0.0"),
    case("fit", "mlp.weight_decay=-0.1", names="mlp.weight_decay", given="got -0.1"),
    # simulate
    case("simulate", f"scenarios.source={EMPTY_EXPORT}", names="agents.json", given="holds no character records (the file is [])"),
    case("simulate", "scenarios.limit=0", names="scenarios.limit", given="got 0"),
    case("simulate", "min_utterances=-1", names="min_utterances", given="got -1"),
    case("simulate", "max_resamples=-1", names="max_resamples", given="got -1"),
    case("simulate", "episodes_in_flight=0", names="episodes_in_flight", given="got 0"),
    case("simulate", "flush_every=0", names="flush_every", given="got 0"),
    case("simulate", "capture.max_batch_tokens=0", names="capture.max_batch_tokens", given="got 0"),
    case("simulate", "sampling.max_new_tokens=0", names="sampling.max_new_tokens", given="got 0"),
    case("simulate", "sampling.top_p=0", names="sampling.top_p", given="got 0.0"),
    case("simulate", "sampling.temperature=-1", names="sampling.temperature", given="got -1.0"),
    case("simulate", "sampling.no_repeat_ngram=-1", names="sampling.no_repeat_ngram", given="got -1"),
    case("simulate", "sampling.repetition_penalty=0", names="sampling.repetition_penalty", given="got 0.0"),
    case(
        "simulate",
        "generation.backend=openai",
        "sampling.no_repeat_ngram=0",
        "generation.concurrency=0",
        names="generation.concurrency",
        given="got 0",
    ),
    case("simulate", "generation.backend=openai", "sampling.no_repeat_ngram=0", "generation.timeout=0", names="generation.timeout", given="got 0.0"),
]


@pytest.fixture(scope="module")
def cache(tmp_path_factory):
    return write_synthetic_cache(tmp_path_factory.mktemp("bad_values") / "cache", "linear", n_episodes=12, turns=4, n_layers=1, hidden=4)


def _empty_export(root):
    root.mkdir()
    for name in ("agents.json", "envs.json", "env_agent_combos.json"):
        (root / name).write_text("[]")
    return root


@pytest.mark.parametrize("command,values,names,given", CASES)
def test_bad_value_is_a_one_line_error(command, values, names, given, cache, tmp_path, capsys, monkeypatch):
    def no_reading(*args, **kwargs):
        raise AssertionError("a bad value must be refused before the cache is read")

    monkeypatch.setattr(ActivationCache, "open", no_reading)
    out = tmp_path / "out"
    if any(EMPTY_EXPORT in v for v in values):
        values = [v.replace(EMPTY_EXPORT, str(_empty_export(tmp_path / "export"))) for v in values]
    if command == "fit":
        argv = [f"out={out}", f"data.cache={cache}", "logger.kind=none", "progress=false", *values]
    else:
        argv = [f"out={out}", "models=[tiny-llama]", "progress=false", *values]
    with pytest.raises(SystemExit) as exit_:
        run_cli(MAINS[command], argv)
    err = capsys.readouterr().err
    assert exit_.value.code == 2
    assert err.startswith("error: ") and err.count("\n") == 1 and "Traceback" not in err, err
    assert names in err and given in err, err
    assert not out.exists()  # refused before a run folder or cache folder was made


@pytest.mark.parametrize("empty", ["[]", "{}"], ids=["list", "object"])
@pytest.mark.parametrize("name", ["agents.json", "envs.json", "env_agent_combos.json"])
def test_empty_export_file_is_named(tmp_path, name, empty):
    root = tmp_path / "export"
    shutil.copytree(str(files("nsync.scenarios").joinpath("pack")), root)
    (root / name).write_text(empty)
    with pytest.raises(NsyncError, match=rf"{name}: holds no \w+ records \(the file is {re.escape(empty)}\); a SOTOPIA export needs at least one"):
        load_sotopia(root)


@pytest.mark.parametrize(
    "schema,values",
    [
        pytest.param(FitConfig, [], id="fit:defaults"),
        pytest.param(FitConfig, ["data.val_size=0", "target_choice=test"], id="fit:data.val_size=0,target_choice=test"),
        pytest.param(FitConfig, ["data.max_pairs=1"], id="fit:data.max_pairs=1"),
        pytest.param(FitConfig, ["mlp.depth=0", "mlp.max_epochs=-1", "mlp.patience=0", "mlp.dropout=0"], id="fit:mlp_edges"),
        pytest.param(FitConfig, ["seed=4294967295", "data.split_seeds=[0]", "data.source_layers=[0]"], id="fit:seed_edges"),
        pytest.param(SimulateConfig, [], id="simulate:defaults"),
        pytest.param(
            SimulateConfig, ["scenarios.limit=1", "sampling.no_repeat_ngram=0", "sampling.temperature=0", "min_utterances=0"], id="simulate:edges"
        ),
    ],
)
def test_edge_values_stay_valid(schema, values):
    load_config(schema, ["out=x", *(["data.cache=c"] if schema is FitConfig else []), *values], prog="test")
