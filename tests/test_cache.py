import json

import numpy as np
import pandas as pd
import pytest

from nsync.cache import ActivationCache, CacheWriter, ModelInfo
from nsync.cache.importer import import_reference
from nsync.cache.layout import TURN_COLUMNS
from nsync.errors import NsyncError

INFO = ModelInfo("m", "test", None, n_layers=3, hidden_size=8)


def _rows(run_id, n, condition="interactive"):
    return [
        {c: 0 for c in TURN_COLUMNS}
        | dict(run_id=run_id, episode_id=run_id.split("|")[0], model="m", condition=condition, utterance=k, agent=k % 2, text=f"u{k}")
        for k in range(n)
    ]


def _writer(path, identity=None, **kw):
    return CacheWriter(path, config={}, identity=identity or {"a": 1}, models=[INFO], **kw)


def test_round_trip_layer_major(tmp_path):
    w = _writer(tmp_path / "c", dtype="float32")
    rng = np.random.default_rng(0)
    s1, s2 = rng.normal(size=(3, 4, 8)), rng.normal(size=(2, 4, 8))
    w.write_shard(_rows("e1|o0|s0", 3), {("m", "interactive"): s1})
    w.write_shard(_rows("e2|o0|s0", 2), {("m", "interactive"): s2})
    cache = ActivationCache.open(tmp_path / "c")  # readable before finalize, from two shards
    np.testing.assert_allclose(cache.states("m", 2), np.concatenate([s1, s2])[:, 2], rtol=1e-6)
    manifest = w.finalize()
    assert manifest["rows"] == {"m": {"interactive": 5}} and manifest["complete"]
    cache = ActivationCache.open(tmp_path / "c")
    assert len(cache.shards) == 1  # merged: one .npy per layer, memory-mapped
    layer = cache.states("m", 1)
    assert isinstance(layer, np.memmap) and layer.shape == (5, 8)
    np.testing.assert_allclose(layer, np.concatenate([s1, s2])[:, 1], rtol=1e-6)
    assert list(cache.turns["text"]) == ["u0", "u1", "u2", "u0", "u1"]
    assert list(cache.turns["row"]) == [0, 1, 2, 3, 4]


def test_float16_storage_and_layer_range(tmp_path):
    w = _writer(tmp_path / "c")
    w.write_shard(_rows("e1|o0|s0", 2), {("m", "interactive"): np.ones((2, 4, 8))})
    w.finalize()
    cache = ActivationCache.open(tmp_path / "c")
    assert cache.states("m", 0).dtype == np.float16
    with pytest.raises(NsyncError, match="layer 4 out of range"):
        cache.states("m", 4)
    with pytest.raises(NsyncError, match="not in cache"):
        cache.states("other", 0)


def test_refuses_other_config_and_foreign_folder(tmp_path):
    _writer(tmp_path / "c", identity={"a": 1})
    with pytest.raises(NsyncError, match=r"different config \(differs in: a\)"):
        _writer(tmp_path / "c", identity={"a": 2})
    with pytest.raises(NsyncError, match="resume=true"):
        _writer(tmp_path / "c", identity={"a": 1}, resume=False)
    (tmp_path / "other").mkdir()
    (tmp_path / "other" / "file.txt").write_text("x")
    with pytest.raises(NsyncError, match="not an nsync cache"):
        _writer(tmp_path / "other")


def test_resume_knows_done_runs_and_drops_temp_leftovers(tmp_path):
    w = _writer(tmp_path / "c")
    w.write_shard(_rows("e1|o0|s0", 2), {("m", "interactive"): np.zeros((2, 4, 8))})
    (tmp_path / "c" / "shards" / ".tmp-0-crashed").mkdir()  # a write killed half-way
    w.close()  # the writer's process ends
    again = _writer(tmp_path / "c")
    assert again.done_runs() == {"e1|o0|s0"}
    assert not (tmp_path / "c" / "shards" / ".tmp-0-crashed").exists()


def test_a_run_is_written_once_and_a_doubled_cache_is_refused_on_reading(tmp_path):
    w = _writer(tmp_path / "c", dtype="float32")
    w.write_shard(_rows("e1|o0|s0", 2), {("m", "interactive"): np.zeros((2, 4, 8))})
    w.write_shard(_rows("e1|o0|s0", 2, "observer"), {("m", "observer"): np.zeros((2, 4, 8))})  # another condition: fine
    with pytest.raises(NsyncError, match=r"already holds 1 of these runs' rows \(e.g. run e1\|o0\|s0, m/interactive\)"):
        w.write_shard(_rows("e1|o0|s0", 2) + _rows("e2|o0|s0", 2), {("m", "interactive"): np.zeros((4, 4, 8))})
    w.close()
    with _writer(tmp_path / "c") as again:  # a writer reopened on the folder
        with pytest.raises(NsyncError, match=r"already holds 1 of these runs' rows \(e.g. run e1\|o0\|s0, m/interactive\)"):
            again.write_shard(_rows("e1|o0|s0", 2) + _rows("e2|o0|s0", 2), {("m", "interactive"): np.zeros((4, 4, 8))})
        assert again.done_runs("m", "observer") == {"e1|o0|s0"}
    with pytest.raises(NsyncError, match=r"the rows to write hold 2 rows twice \(e.g. run e3\|o0\|s0, utterance 0, m/interactive\)"):
        w.write_shard(_rows("e3|o0|s0", 2) * 2, {("m", "interactive"): np.zeros((4, 4, 8))})  # one run id for two runs
    assert len(ActivationCache.open(tmp_path / "c").turns) == 4
    # A cache doubled by a writer that did not yet refuse: its second shard copied by hand.
    shards = tmp_path / "c" / "shards"
    first = sorted(shards.iterdir())[0]
    (shards / "r0-00009").mkdir()
    (shards / "r0-00009" / "turns.parquet").write_bytes((first / "turns.parquet").read_bytes())
    with pytest.raises(NsyncError, match=r"holds 2 rows twice \(e.g. run e1\|o0\|s0, utterance 0, m/interactive\); `nsync cache repair"):
        ActivationCache.open(tmp_path / "c").turns


def test_planted_cache_writers_run_twice_into_one_folder_write_nothing_twice(tmp_path):
    from nsync.testing.synthetic import write_partition_cache, write_synthetic_cache

    for write in (
        lambda: write_synthetic_cache(tmp_path / "s", n_episodes=6, turns=4, observer_share=0.5, shard_rows=10),
        lambda: write_partition_cache(tmp_path / "p", n_episodes=6)[0],
    ):
        first = ActivationCache.open(write()).turns
        again = ActivationCache.open(write()).turns
        pd.testing.assert_frame_equal(first, again)
    # A crash after the first of several shards: the rest is written, nothing twice.
    shards = sorted((tmp_path / "s" / "shards").iterdir())
    cut = tmp_path / "cut"
    (cut / "shards").mkdir(parents=True)
    (cut / "manifest.json").write_text((tmp_path / "s" / "manifest.json").read_text())
    merged = ActivationCache.open(tmp_path / "s")
    keep = merged.turns[merged.turns["run_id"] == merged.turns["run_id"].iloc[0]]
    w = CacheWriter(cut, config={}, identity=merged.manifest["identity"], models=[ModelInfo(**merged.manifest["models"]["synthetic"])], dtype="float32")
    w.write_shard(keep.drop(columns="row").to_dict("records"), {
        ("synthetic", c): np.stack([merged.states("synthetic", layer, c)[keep[keep["condition"] == c]["row"]] for layer in range(3)], 1)
        for c in ("interactive", "observer")
    })
    w.close()  # the crash
    resumed = ActivationCache.open(write_synthetic_cache(cut, n_episodes=6, turns=4, observer_share=0.5, shard_rows=10))
    key = ["run_id", "utterance", "condition"]
    a, b = merged.turns.sort_values(key).reset_index(drop=True), resumed.turns.sort_values(key).reset_index(drop=True)
    pd.testing.assert_frame_equal(a.drop(columns="row"), b.drop(columns="row"))
    for c in ("interactive", "observer"):
        np.testing.assert_array_equal(merged.states("synthetic", 2, c)[a[a.condition == c]["row"]], resumed.states("synthetic", 2, c)[b[b.condition == c]["row"]])
    assert len(shards) == 1  # the first folder's shards were merged


def test_nan_names_run_utterance_and_layer(tmp_path):
    w = _writer(tmp_path / "c", dtype="float32")
    states = np.zeros((2, 4, 8))
    states[1, 2, 5] = np.nan
    with pytest.raises(NsyncError, match=r"NaN or inf .* run e1\|o0\|s0 \(episode e1\), utterance 1, layer 2"):
        w.write_shard(_rows("e1|o0|s0", 2), {("m", "interactive"): states})
    assert not any((tmp_path / "c" / "shards").iterdir())  # nothing half-written


def test_float16_overflow_is_reported(tmp_path):
    w = _writer(tmp_path / "c", dtype="float16")
    with pytest.raises(NsyncError, match="float16 range"):
        w.write_shard(_rows("e1|o0|s0", 1), {("m", "interactive"): np.full((1, 4, 8), 1e6)})


def test_damaged_cache_reports_shape(tmp_path):
    w = _writer(tmp_path / "c", dtype="float32")
    w.write_shard(_rows("e1|o0|s0", 2), {("m", "interactive"): np.zeros((2, 4, 8))})
    w.finalize()
    shard = ActivationCache.open(tmp_path / "c").shards[0]
    np.save(shard / "states" / "m" / "interactive" / "layer_01.npy", np.zeros((3, 8), np.float32))
    with pytest.raises(NsyncError, match="damaged"):
        ActivationCache.open(tmp_path / "c").states("m", 1)


def _reference_tree(root, n_layers=4, hidden=6, episodes=(0, 2), seeds=(1, 2), turns=5):
    rng = np.random.default_rng(0)
    arrays = {}
    for e in episodes:
        for s in seeds:
            run = root / "pairA" / "modelX" / f"episode_{e}" / f"t0.7_seed{s}"
            for k in range(turns):
                d = run / f"agent_{k % 2 + 1}_turn_{k}"
                d.mkdir(parents=True)
                a = rng.normal(size=(n_layers, 1, hidden)).astype(np.float32)
                np.save(d / "states.npy", a)
                arrays[(e, s, k)] = a
    return arrays


def test_import_reference_layout(tmp_path, sotopia_dir):
    arrays = _reference_tree(tmp_path / "ref")
    import_reference(tmp_path / "ref", tmp_path / "out", sotopia=sotopia_dir)
    cache = ActivationCache.open(tmp_path / "out")
    assert cache.models == ["pairA/modelX"]
    t = cache.turns
    assert len(t) == 2 * 2 * 5
    combos = json.loads((sotopia_dir / "env_agent_combos.json").read_text())
    first = t[t["run_id"].str.contains("episode_2/t0.7_seed1")]
    assert set(first["episode_id"]) == {combos[2]["pk"]}
    assert list(first["agent"]) == [0, 1, 0, 1, 0]
    assert list(first["character_id"])[:2] == combos[2]["agent_ids"]
    for layer in (0, 3):
        x = cache.states("pairA/modelX", layer)
        for _, row in t.iterrows():
            e = int(row["run_id"].split("episode_")[1].split("/")[0])
            np.testing.assert_array_equal(x[row["row"]], arrays[(e, row["seed"], row["utterance"])][layer, 0])


def test_import_reference_without_sotopia_and_bad_trees(tmp_path):
    _reference_tree(tmp_path / "ref", episodes=(0,), seeds=(0,), turns=2)
    import_reference(tmp_path / "ref", tmp_path / "out")
    assert set(ActivationCache.open(tmp_path / "out").turns["episode_id"]) == {"episode_0"}
    (tmp_path / "empty").mkdir()
    with pytest.raises(NsyncError, match="no runs in the reference layout"):
        import_reference(tmp_path / "empty", tmp_path / "out2")
    gap = tmp_path / "gap" / "p" / "s" / "episode_0" / "t0.7_seed0"
    for k in (0, 2):
        (gap / f"agent_{k % 2 + 1}_turn_{k}").mkdir(parents=True)
        np.save(gap / f"agent_{k % 2 + 1}_turn_{k}" / "states.npy", np.zeros((2, 1, 3), np.float32))
    with pytest.raises(NsyncError, match="not consecutive"):
        import_reference(tmp_path / "gap", tmp_path / "out3")


def test_a_cache_round_trips_through_a_hugging_face_dataset(tmp_path):
    from datasets import load_from_disk

    from nsync.cache.hf import export_hf, import_hf
    from nsync.testing.synthetic import write_synthetic_cache

    cache = write_synthetic_cache(tmp_path / "c", "linear", n_episodes=5, turns=4, hidden=6, n_layers=2, observer_share=0.5)
    exported = export_hf(cache, tmp_path / "hf")
    data = load_from_disk(str(exported))
    assert set(data) == {"synthetic__interactive", "synthetic__observer"}
    assert len(data["synthetic__interactive"]) == 20 and len(data["synthetic__interactive"][0]["layer_2"]) == 6
    back = ActivationCache.open(import_hf(exported, tmp_path / "back"))
    original = ActivationCache.open(cache)
    key = ["model", "condition", "row"]
    a = original.turns.sort_values(key).reset_index(drop=True)
    b = back.turns.sort_values(key).reset_index(drop=True)[a.columns]
    pd.testing.assert_frame_equal(a, b, check_dtype=False)
    for condition in ("interactive", "observer"):
        for layer in range(3):
            np.testing.assert_array_equal(back.states("synthetic", layer, condition), original.states("synthetic", layer, condition))
    assert back.manifest["identity"] == original.manifest["identity"]
    with pytest.raises(NsyncError, match="exists"):
        export_hf(cache, exported)
    with pytest.raises(NsyncError, match="not a dataset exported by nsync"):
        import_hf(tmp_path / "c", tmp_path / "x")
