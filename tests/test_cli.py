"""``nsync <command>``: one command for every stage, the same arguments as ``python -m``."""

import shutil
import subprocess
import sys

import pytest

from nsync.cli import COMMANDS, main
from nsync.testing.synthetic import write_synthetic_cache


def test_usage_lists_every_command(capsys):
    with pytest.raises(SystemExit) as exit_:
        main(["--help"])
    assert exit_.value.code == 0
    out = capsys.readouterr().out
    assert all(name in out for name in COMMANDS)


def test_version_is_the_installed_distribution(capsys):
    from importlib.metadata import version

    with pytest.raises(SystemExit) as exit_:
        main(["--version"])
    assert exit_.value.code == 0
    assert capsys.readouterr().out.strip() == f"nsync {version('nsync')}"


def test_unknown_command_is_a_clear_error(capsys):
    with pytest.raises(SystemExit) as exit_:
        main(["fitt"])
    assert exit_.value.code == 2 and "unknown command 'fitt'" in capsys.readouterr().err


def test_every_command_has_a_main():
    import importlib

    for module, _ in COMMANDS.values():
        assert callable(importlib.import_module(module).main)


def test_cache_info_and_print_config(tmp_path, capsys):
    cache = write_synthetic_cache(tmp_path / "c", "linear", n_episodes=4, turns=4, hidden=4, n_layers=1)
    main(["cache", "info", str(cache)])
    # the pairs it reports, counted independently from the turns table: every utterance but a run's last has a next one
    from nsync.cache import ActivationCache

    turns = ActivationCache.open(cache).turns
    speakers = turns[turns.condition == "interactive"].sort_values(["run_id", "utterance"])
    last = speakers.groupby("run_id")["utterance"].transform("max")
    counts = speakers[speakers.utterance < last].groupby("agent").size()
    assert f"pairs at lag 1 per direction: A->B {counts[0]}, B->A {counts[1]}" in capsys.readouterr().out
    with pytest.raises(SystemExit) as exit_:
        main(["fit", "--print_config", f"data.cache={cache}", "out=x", "data.lag=2"])
    assert exit_.value.code == 0 and "lag: 2" in capsys.readouterr().out


def test_user_errors_exit_2_without_traceback(tmp_path, capsys):
    with pytest.raises(SystemExit) as exit_:
        main(["fit", f"data.cache={tmp_path / 'missing'}", "out=x", "data.lagg=2"])
    err = capsys.readouterr().err
    assert exit_.value.code == 2 and err.startswith("error:") and "Traceback" not in err
    assert "data.lagg" in err and "data.lag" in err.split("did you mean", 1)[1]  # names the key and the nearest valid one


EXE = shutil.which("nsync", path=f"{sys.prefix}/bin") or shutil.which("nsync")


@pytest.mark.skipif(EXE is None, reason="the nsync console script is not installed (pip install -e . installs it)")
@pytest.mark.slow  # subprocesses
def test_console_script_is_installed():
    exe = EXE
    out = subprocess.run([exe, "--help"], capture_output=True, text=True, check=True).stdout
    assert all(f"  {name}" in out for name in COMMANDS)
    fit_help = subprocess.run([exe, "fit", "--help"], capture_output=True, text=True, check=True).stdout
    assert "data.exclude_flags" in fit_help and "usage: nsync fit" in fit_help


def test_cache_export_and_import_hf_commands(tmp_path, capsys):
    cache = write_synthetic_cache(tmp_path / "c", "linear", n_episodes=3, turns=4, hidden=4, n_layers=1)
    main(["cache", "export", str(cache), str(tmp_path / "hf"), "--format", "hf"])
    main(["cache", "import-hf", str(tmp_path / "hf"), str(tmp_path / "back")])
    out = capsys.readouterr().out
    assert "load_from_disk" in out and f"wrote {tmp_path / 'back'}" in out
    # the round trip gives the same cache, row for row
    import numpy as np

    from nsync.cache import ActivationCache

    a, b = ActivationCache.open(cache), ActivationCache.open(tmp_path / "back")
    columns = ["run_id", "utterance", "agent", "condition", "text"]
    assert a.turns[columns].sort_values(columns[:4]).reset_index(drop=True).equals(b.turns[columns].sort_values(columns[:4]).reset_index(drop=True))
    for layer in range(2):
        rows_a = a.turns.sort_values(columns[:4])["row"].to_numpy()
        rows_b = b.turns.sort_values(columns[:4])["row"].to_numpy()
        model = a.simulated_models[0]
        np.testing.assert_array_equal(a.states(model, layer=layer)[rows_a], b.states(model, layer=layer)[rows_b])


def test_citation_file_names_this_version_and_the_paper():
    import yaml
    from importlib.metadata import version

    from conftest import ROOT

    cff = yaml.safe_load((ROOT / "CITATION.cff").read_text())
    assert cff["version"] == version("nsync") and cff["cff-version"] == "1.2.0"
    assert any("arXiv:2602.17815" in i["value"] for ref in cff["references"] for i in ref["identifiers"])


def test_console_logging_follows_the_current_stderr(monkeypatch, capsys):
    """A command run in-process (a test, a notebook) configures logging; records after it go to the
    stderr of the moment, never to the one it started with (closed since: 'Logging error')."""
    import io
    import logging

    from nsync.errors import configure_logging

    first = io.StringIO()
    monkeypatch.setattr("sys.stderr", first)
    configure_logging()
    logging.getLogger("nsync.test").warning("one")
    first.close()
    second = io.StringIO()
    monkeypatch.setattr("sys.stderr", second)
    logging.getLogger("nsync.test").warning("two")
    assert second.getvalue() == "warning: two\n"
