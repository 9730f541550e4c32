"""Fault injection: what a user who makes mistakes (or has bad luck) does to a cache or a run
folder, and what nsync does about it.

Each test's docstring is one row of the Reliability page (docs/reference/reliability.md): its first line is
the fault, its second the outcome. ``python tests/test_faults.py`` prints the table;
``test_the_reliability_page_lists_every_fault`` keeps the page equal to it.
"""

from __future__ import annotations

import inspect
import json
import os
import shutil
import signal
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest

from nsync.cache import ActivationCache, CacheWriter, ModelInfo
from nsync.cache.layout import TURN_COLUMNS, layer_file
from nsync.errors import NsyncError, run_cli
from nsync.fit.run_folder import RunFolder
from nsync.storage import FolderLock
from nsync.testing.synthetic import write_synthetic_cache

ROOT = Path(__file__).resolve().parents[1]


# -- helpers --------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def pristine(tmp_path_factory) -> Path:
    """A small finished cache (float16, as simulations store them); each test damages a copy."""
    return write_synthetic_cache(tmp_path_factory.mktemp("faults") / "c", "linear", n_episodes=24, turns=6, hidden=8, dtype="float16")


@pytest.fixture
def cache(pristine, tmp_path) -> Path:
    return Path(shutil.copytree(pristine, tmp_path / "cache"))


def _run(main, argv: list[str], capsys) -> tuple[int, str, str]:
    """A command's exit code, stdout and stderr (as ``nsync <command>`` would give them)."""
    capsys.readouterr()
    try:
        run_cli(main, argv)
        code = 0
    except SystemExit as exit_:
        code = int(exit_.code or 0)
    out, err = capsys.readouterr()
    return code, out, err


def _fit(cache: Path, out: Path, capsys, *overrides: str) -> tuple[int, str, str]:
    from nsync.fit.__main__ import main

    argv = [f"data.cache={cache}", f"out={out}", "logger.kind=none", "progress=false", "bootstrap=0", "surrogates.n=0", "time_bins=-1"]
    return _run(main, argv + list(overrides), capsys)


def _cache_cli(capsys, *argv: str) -> tuple[int, str, str]:
    from nsync.cache.__main__ import main

    return _run(main, list(argv), capsys)


def _one_line_error(code: int, err: str, *needles: str) -> str:
    """The command failed with exit 2 and one ``error:`` line (no traceback) that holds ``needles``."""
    assert code == 2, err
    assert "Traceback" not in err, err
    line = err.strip().splitlines()[-1]
    assert line.startswith("error: "), err
    for needle in needles:
        assert needle in line, line
    return line


def _states_file(cache: Path, layer: int = 1) -> Path:
    (shard,) = ActivationCache.open(cache).shards
    return shard / "states" / "synthetic" / "interactive" / layer_file(layer)


def _holder_process(folder: Path) -> subprocess.Popen:
    """Another process that takes ``folder``'s lock and keeps it until killed."""
    code = f"from nsync.storage import FolderLock; import sys, time; held = FolderLock({str(folder)!r}, 'x').acquire(); print('held', flush=True); time.sleep(600)"
    proc = subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE, text=True)
    assert proc.stdout is not None and proc.stdout.readline().strip() == "held"
    return proc


def _writer(path: Path, **kw) -> CacheWriter:
    return CacheWriter(path, config={}, identity={"a": 1}, models=[ModelInfo("m", "toy", None, 1, 4)], dtype="float32", **kw)


def _rows(run_id: str, n: int = 2) -> list[dict]:
    return [
        {c: 0 for c in TURN_COLUMNS} | dict(run_id=run_id, episode_id=run_id, model="m", condition="interactive", utterance=k, agent=k % 2)
        for k in range(n)
    ]


# -- one writer per folder ------------------------------------------------------------------------


def test_second_writer_of_a_cache_is_refused(cache, capsys):
    """Two commands write one cache at once (simulate, reread, repair or merge, either order).
    The second stops at once: `error: the cache ... is being written by pid N on host H (since T)`, exit 2; the first goes on."""
    proc = _holder_process(cache)
    try:
        code, _, err = _cache_cli(capsys, "repair", str(cache))
        _one_line_error(code, err, f"the cache {cache} is being written by pid {proc.pid} on host")
        with pytest.raises(NsyncError, match=f"being written by pid {proc.pid}"):
            CacheWriter.extend(cache, [ModelInfo("other", "toy", None, 1, 8)])
    finally:
        proc.kill()
        proc.wait()
    first = _writer(cache.parent / "c2")  # this process first, then another writer
    with pytest.raises(NsyncError, match=r"being written by this process \(an earlier writer in it was not closed"):
        _writer(cache.parent / "c2")
    first.write_shard(_rows("e1"), {("m", "interactive"): np.ones((2, 2, 4))})
    first.finalize()  # the first writer's work is whole
    assert len(ActivationCache.open(cache.parent / "c2").turns) == 2


def test_paused_writer_then_resumed_loses_nothing(tmp_path):
    """A writer is paused (Ctrl-Z) while a second command tries the same cache, then resumed.
    The second is refused while the first holds the folder; the first resumes and finishes; no row is written twice."""
    first = _writer(tmp_path / "c")
    first.write_shard(_rows("e1"), {("m", "interactive"): np.ones((2, 2, 4))})
    with pytest.raises(NsyncError, match="is being written by"):  # while the first is paused
        _writer(tmp_path / "c")
    first.write_shard(_rows("e2"), {("m", "interactive"): np.ones((2, 2, 4))})
    first.finalize()
    second = _writer(tmp_path / "c")  # once the first finished: it resumes, with nothing left to do
    assert second.done_runs() == {"e1", "e2"}
    second.finalize()
    turns = ActivationCache.open(tmp_path / "c").turns
    assert len(turns) == 4 and not turns.duplicated(["run_id", "utterance"]).any()


def test_a_killed_writers_lock_is_taken_over(cache, caplog):
    """A writer is killed (SIGKILL) while it holds a cache.
    The kernel frees its lock; the next writer takes it and says whose stale lock it took over."""
    proc = _holder_process(cache)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    with caplog.at_level("WARNING"):
        CacheWriter.open_existing(cache).finalize()
    assert f"taking over the lock on {cache}: pid {proc.pid} on host" in caplog.text


def test_a_cache_with_rows_twice_is_repaired(cache, capsys):
    """A cache holds rows twice (two writers mixed their work before caches were locked).
    Reading it says so and names the fix; `nsync cache repair` keeps each row's first copy, says what it dropped, and the cache reads again."""
    shard = ActivationCache.open(cache).shards[0]
    original = ActivationCache.open(cache)
    expected = np.asarray(original.states("synthetic", 1))
    shutil.copytree(shard, shard.parent / "r9-99999")  # the second writer's copy of the same rows
    (shard.parent / "r9-99999" / "merged_from.json").unlink(missing_ok=True)
    with pytest.raises(NsyncError, match=r"rows twice .*`nsync cache repair"):
        ActivationCache.open(cache).turns
    code, out, err = _cache_cli(capsys, "repair", str(cache))
    assert code == 0, err
    assert f"dropped {len(original.turns)} rows of synthetic/interactive written twice (kept the first copy)" in out
    repaired = ActivationCache.open(cache)
    assert len(repaired.turns) == len(original.turns)
    np.testing.assert_array_equal(repaired.states("synthetic", 1), expected)
    code, out, _ = _cache_cli(capsys, "verify", str(cache))
    assert code == 0 and "no problem found" in out


def test_a_growing_cache_reads_as_in_progress(tmp_path):
    """A finished cache grows (a simulation resumed with more episodes) and is read, or repaired, before that run finishes or after it is killed.
    It reads as incomplete (never as damaged); repair keeps it incomplete; the final merge counts its rows again."""
    first = _writer(tmp_path / "c")
    first.write_shard(_rows("e1"), {("m", "interactive"): np.ones((2, 2, 4))})
    first.finalize()
    grower = _writer(tmp_path / "c")
    grower.write_shard(_rows("e2"), {("m", "interactive"): np.ones((2, 2, 4))})
    grower.close()  # killed before its merge
    cache = ActivationCache.open(tmp_path / "c")
    assert len(cache.turns) == 4 and "2 runs in 2 shard(s) so far" in cache.incomplete()
    assert CacheWriter.open_existing(tmp_path / "c").repair() == []
    assert not ActivationCache.open(tmp_path / "c").manifest["complete"]
    manifest = _writer(tmp_path / "c").finalize()
    assert manifest["complete"] and manifest["rows"] == {"m": {"interactive": 4}}


def test_second_fit_into_one_run_folder_is_refused(cache, tmp_path, capsys):
    """Two fits write one run folder at once.
    The second stops at once naming the first (pid, host, start), exit 2; the first's results stand."""
    proc = _holder_process(tmp_path / "run")
    try:
        code, _, err = _fit(cache, tmp_path / "run", capsys)
        _one_line_error(code, err, f"the run folder {tmp_path / 'run'} is being written by pid {proc.pid} on host")
    finally:
        proc.kill()
        proc.wait()
    code, _, err = _fit(cache, tmp_path / "run", capsys)
    assert code == 0, err


# -- checked states -------------------------------------------------------------------------------


def _flip_bytes(f: Path) -> None:
    data = bytearray(f.read_bytes())
    middle = len(data) // 2
    data[middle : middle + 64] = bytes(b ^ 0xFF for b in data[middle : middle + 64])
    f.write_bytes(bytes(data))


def _flip_low_bits(f: Path) -> None:
    states = np.load(f)
    bits = states.view(np.uint16)
    bits[::5, ::3] ^= 1  # the lowest mantissa bit of some float16 values: a plausible-looking number
    np.save(f, states)


def _shuffle_rows(f: Path) -> None:
    states = np.load(f)
    np.save(f, states[np.random.default_rng(0).permutation(len(states))])


@pytest.mark.parametrize(
    "damage", [_flip_bytes, _flip_low_bits, _shuffle_rows], ids=["64 bytes flipped", "float16 low bits flipped", "rows of one layer shuffled"]
)
def test_verify_finds_changed_states(cache, capsys, damage):
    """A state file's bytes change after it was written (64 bytes flipped, float16 low bits flipped, rows of one layer shuffled).
    `nsync cache verify` names the file (checksum mismatch), exit 1; `nsync cache info` says the cache changed since it was verified."""
    code, out, _ = _cache_cli(capsys, "verify", str(cache))
    assert code == 0 and "no problem found" in out
    f = _states_file(cache)
    damage(f)
    code, out, _ = _cache_cli(capsys, "verify", str(cache))
    assert code == 1 and f"{f}: its content changed since it was written (checksum mismatch)" in out
    _cache_cli(capsys, "verify", str(cache))
    code, out, _ = _cache_cli(capsys, "info", str(cache))
    assert code == 0 and "problem(s) found" in out


def test_info_says_a_cache_was_never_verified(cache, capsys):
    """A cache is used without ever being verified.
    `nsync cache info` says it was never verified and how to verify it."""
    code, out, _ = _cache_cli(capsys, "info", str(cache))
    assert code == 0 and f"never verified (`nsync cache verify {cache}`" in out


@pytest.mark.parametrize("where", ["one value", "a whole layer"])
def test_nan_in_a_cache_stops_the_fit_naming_file_and_rows(cache, tmp_path, capsys, where):
    """NaN or inf in a stored state (one value, or a whole layer).
    The fit stops before fitting, naming the file and the rows, exit 2; `nsync cache verify` names them too."""
    f = _states_file(cache)
    states = np.load(f)
    if where == "one value":
        states[3, 0] = np.nan
    else:
        states[:] = np.inf
    np.save(f, states)
    code, _, err = _fit(cache, tmp_path / "run", capsys)
    rows = "1 row(s) read hold NaN or inf (rows 3 of this file" if where == "one value" else "72 row(s) read hold NaN or inf (rows 0, 2, 4, 6, 8, ..."
    _one_line_error(code, err, str(f), rows)
    assert RunFolder(tmp_path / "run").read_status()["state"] == "failed"
    code, out, _ = _cache_cli(capsys, "verify", str(cache))
    assert code == 1 and f"{f}: " in out and "hold NaN or inf" in out


def test_the_writer_refuses_nan_states(tmp_path):
    """A model's hidden state holds NaN or inf at capture time.
    The writer refuses it, naming the run, the utterance, the layer and the model; nothing is committed."""
    w = _writer(tmp_path / "c")
    states = np.ones((2, 2, 4))
    states[1, 1, 2] = np.nan
    with pytest.raises(
        NsyncError, match=r"NaN or inf in the hidden state of run e1 \(episode e1\), utterance 1, layer 1 \(blocks.0.resid_post\) of model m"
    ):
        w.write_shard(_rows("e1"), {("m", "interactive"): states})
    assert w.done_runs() == set()


# -- damaged files --------------------------------------------------------------------------------


def _truncate(f: Path) -> None:
    f.write_bytes(f.read_bytes()[: f.stat().st_size // 2])


def _garble_header(f: Path) -> None:
    f.write_bytes(f.read_bytes().replace(b"'descr'", b"'dxscr'", 1))


def _drop_manifest_key(cache: Path) -> None:
    manifest = json.loads((cache / "manifest.json").read_text())
    del manifest["models"]
    (cache / "manifest.json").write_text(json.dumps(manifest))


def _truncate_manifest(cache: Path) -> None:
    _truncate(cache / "manifest.json")


def _delete_turns(cache: Path) -> None:
    (ActivationCache.open(cache).shards[0] / "turns.parquet").unlink()


def _corrupt_turns(cache: Path) -> None:
    _truncate(ActivationCache.open(cache).shards[0] / "turns.parquet")


def _drop_layer_name(cache: Path) -> None:
    manifest = json.loads((cache / "manifest.json").read_text())
    manifest["models"]["synthetic"]["layer_names"].pop()
    (cache / "manifest.json").write_text(json.dumps(manifest))


def _wrong_row_count(cache: Path) -> None:
    manifest = json.loads((cache / "manifest.json").read_text())
    manifest["rows"]["synthetic"]["interactive"] = 999
    (cache / "manifest.json").write_text(json.dumps(manifest))


DAMAGE = {
    "truncated .npy": (lambda c: _truncate(_states_file(c)), "layer_01.npy is damaged: it cannot be read as a .npy array"),
    "garbled .npy header": (lambda c: _garble_header(_states_file(c)), "layer_01.npy is damaged: it cannot be read as a .npy array"),
    "manifest key removed": (_drop_manifest_key, "manifest.json is damaged: it lacks the key(s) ['models']"),
    "truncated manifest": (_truncate_manifest, "manifest.json is damaged: it is not valid JSON"),
    "turns table deleted": (_delete_turns, "is damaged: its turns table turns.parquet is missing"),
    "turns table truncated": (_corrupt_turns, "turns.parquet is damaged: it cannot be read as a parquet table"),
    "layer name removed from the manifest": (_drop_layer_name, "manifest.json is damaged: it names 2 layers of synthetic, but"),
    "manifest row count wrong": (
        _wrong_row_count,
        "manifest.json is damaged: it records 999 rows of synthetic/interactive, the turns tables hold 144",
    ),
}


@pytest.mark.parametrize("name", list(DAMAGE))
def test_a_damaged_file_is_named(cache, tmp_path, capsys, name):
    """A cache file is damaged (truncated or garbled .npy, manifest key removed or manifest truncated, turns table deleted or truncated, a layer name removed from the manifest, a wrong row count).
    The fit and `nsync cache info` stop with one line naming the damaged file, what is wrong with it, and `nsync cache verify`; exit 2."""
    damage, message = DAMAGE[name]
    damage(cache)
    code, _, err = _fit(cache, tmp_path / "run", capsys)
    line = _one_line_error(code, err, message)
    assert f"`nsync cache verify {cache}`" in line
    if name not in ("truncated .npy", "garbled .npy header", "layer name removed from the manifest"):  # info reads no states
        code, _, err = _cache_cli(capsys, "info", str(cache))
        _one_line_error(code, err, message)


def test_a_fit_on_an_unfinished_cache_warns(tmp_path, caplog, capsys):
    """A fit reads a cache whose simulation was killed (never finished).
    It warns once with what the cache holds so far and how to resume; `nsync cache info` says the same."""
    full = ActivationCache.open(write_synthetic_cache(tmp_path / "full", n_episodes=24, turns=6, hidden=8))
    w = CacheWriter(tmp_path / "cut", config={}, identity={"cut": 1}, models=[ModelInfo(**full.manifest["models"]["synthetic"])], dtype="float32")
    keep = full.turns[full.turns["episode_id"].isin(sorted(full.turns["episode_id"].unique())[:20])]
    w.write_shard(
        keep.drop(columns="row").to_dict("records"),
        {("synthetic", "interactive"): np.stack([full.states("synthetic", i)[keep["row"]] for i in range(3)], 1)},
    )
    w.close()  # killed before finalize
    with caplog.at_level("WARNING"):
        code, _, err = _fit(tmp_path / "cut", tmp_path / "run", capsys)
    assert code == 0, err
    assert "fitting an incomplete cache" in caplog.text and "20 runs in 1 shard(s) so far" in caplog.text
    code, out, _ = _cache_cli(capsys, "info", str(tmp_path / "cut"))
    assert "incomplete: its writer has not finished (or was stopped): 20 runs" in out


# -- run folders ----------------------------------------------------------------------------------


def test_overwrite_leaves_no_stale_artefact(cache, tmp_path, capsys):
    """`overwrite=true bootstrap=0 save_weights=false` over a fit that saved a bootstrap and weights.
    The earlier run's artefacts are removed first; the folder holds this run's files alone."""
    assert _fit(cache, tmp_path / "run", capsys, "bootstrap=20", "save_weights=true")[0] == 0
    assert RunFolder(tmp_path / "run").read_bootstrap() is not None
    assert _fit(cache, tmp_path / "run", capsys, "save_weights=false", "overwrite=true")[0] == 0
    folder = RunFolder(tmp_path / "run")
    assert folder.read_bootstrap() is None and not folder.weights.exists()


def test_a_failed_or_killed_fit_leaves_a_folder_that_says_so(cache, tmp_path, capsys, monkeypatch):
    """A fit fails half-way, or is killed, after writing some artefacts.
    Its status.json says failed (with the error) or running (pid, host, start); every reader refuses its artefacts with that reason; the next fit clears them."""
    import nsync.fit.loop as loop

    def boom(*args, **kwargs):
        raise RuntimeError("out of memory (planted)")

    monkeypatch.setattr(loop, "fit_direction", boom)
    with pytest.raises(RuntimeError):
        _fit(cache, tmp_path / "run", capsys)
    folder = RunFolder(tmp_path / "run")
    assert folder.read_status()["state"] == "failed"
    with pytest.raises(NsyncError, match=r"the fit in .* failed \(RuntimeError: out of memory \(planted\)\)"):
        folder.read_bootstrap()
    monkeypatch.undo()
    killed = RunFolder(tmp_path / "killed")
    killed.mark_running()  # what a SIGKILL leaves: running, and a half set of artefacts
    np.save(killed.bootstrap, np.zeros(3))
    with pytest.raises(NsyncError, match=rf"pid {os.getpid()} on .* has not finished: it is still running, or was stopped"):
        killed.read_bootstrap()
    assert _fit(cache, tmp_path / "killed", capsys)[0] == 0  # bootstrap=0: the stale bootstrap.npy is gone
    assert killed.read_bootstrap() is None and not killed.status.exists()


# -- the disk and the out folder --------------------------------------------------------------------


@pytest.fixture
def small_disk(tmp_path):
    """A 1 MiB tmpfs (root only)."""
    mount = tmp_path / "disk"
    mount.mkdir()
    if os.geteuid() != 0 or subprocess.run(["mount", "-t", "tmpfs", "-o", "size=1m", "tmpfs", str(mount)], capture_output=True).returncode:
        pytest.skip("needs root and tmpfs to fill a disk")
    yield mount
    subprocess.run(["umount", "-l", str(mount)], check=False)  # lazy: a failed test may still hold a file there


def test_disk_full_during_the_final_merge(small_disk):
    """The disk fills up during the final merge of a simulation's shards.
    `error: no space left on <mount> while writing <file>`; the shards stay whole, and the merge succeeds once space is freed."""
    w = _writer(small_disk / "c")
    for i in range(8):
        w.write_shard(_rows(f"e{i}", 500), {("m", "interactive"): np.ones((500, 2, 4))})
    filler = small_disk / "filler"
    free = shutil.disk_usage(small_disk).free
    filler.write_bytes(b"\0" * max(free - 20_000, 0))
    with pytest.raises(NsyncError, match=rf"no space left on {small_disk} while writing"):
        w.finalize()
    assert len(ActivationCache.open(small_disk / "c").turns) == 4000  # nothing lost
    filler.unlink()
    w.finalize()
    assert len(ActivationCache.open(small_disk / "c").shards) == 1


def test_out_is_a_file_or_not_writable(cache, tmp_path, capsys):
    """The out folder is a file, or on a read-only disk.
    `error:` naming the path and what is wrong (a file in the way, read-only), exit 2."""
    (tmp_path / "file").write_text("x")
    code, _, err = _fit(cache, tmp_path / "file", capsys)
    _one_line_error(code, err, f"cannot be a folder: {tmp_path / 'file'} is a file")
    with pytest.raises(NsyncError, match="is a file; choose another path"):
        _writer(tmp_path / "file" / "c")
    ro = tmp_path / "ro"
    ro.mkdir()
    if os.geteuid() != 0 or subprocess.run(["mount", "-t", "tmpfs", "-o", "ro,size=64k", "tmpfs", str(ro)], capture_output=True).returncode:
        pytest.skip("needs root to mount a read-only disk")
    try:
        code, _, err = _fit(cache, ro / "run", capsys)
        _one_line_error(code, err, f"cannot write {ro / 'run'}", "read-only")
    finally:
        subprocess.run(["umount", "-l", str(ro)], check=False)


def test_files_follow_the_users_umask(tmp_path, capsys):
    """A cache or a fit is written under umask 022 (a lab's shared disk).
    Every folder is 0755 and every file 0644 (not the 0700/0600 of temporary files), so the lab's other users can read them."""
    old = os.umask(0o022)
    try:
        cache = write_synthetic_cache(tmp_path / "c", n_episodes=24, turns=6, hidden=8)
        assert _fit(cache, tmp_path / "run", capsys)[0] == 0
    finally:
        os.umask(old)
    for path in [*cache.rglob("*"), *(tmp_path / "run").rglob("*")]:
        if path.name == ".nsync.lock":
            continue
        assert path.stat().st_mode & 0o777 == (0o755 if path.is_dir() else 0o644), path


# -- the Reliability page ---------------------------------------------------------------------------


def fault_table() -> str:
    """The Markdown table of faults and outcomes: one row per test of this file (its docstring)."""
    rows = ["| fault | what nsync does | test |", "|---|---|---|"]
    tests = [(name, f) for name, f in inspect.getmembers(sys.modules[__name__], inspect.isfunction) if name.startswith("test_") and f.__doc__]
    for name, test in sorted(tests, key=lambda t: inspect.getsourcelines(t[1])[1]):
        if test.__module__ == __name__:
            fault, outcome = (" ".join(line.split()) for line in textwrap.dedent(test.__doc__).strip().split("\n", 1))
            rows.append(f"| {fault} | {outcome} | `{name}` |")
    return "\n".join(rows)


def test_the_reliability_page_lists_every_fault():
    page = (ROOT / "docs" / "reference" / "reliability.md").read_text()
    assert fault_table() in page, "docs/reference/reliability.md's table is out of date: python tests/test_faults.py prints it"


if __name__ == "__main__":
    print(fault_table())
