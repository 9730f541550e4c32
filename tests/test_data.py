import numpy as np
import pandas as pd
import pytest
import torch

from nsync.cache import ActivationCache
from nsync.data import DataConfig, SynchronyDataModule, build_pairs, make_split
from nsync.testing.synthetic import write_synthetic_cache
from nsync.errors import NsyncError
from nsync.scenarios import load_sotopia


@pytest.fixture(scope="module")
def cache(tmp_path_factory):
    return write_synthetic_cache(tmp_path_factory.mktemp("c") / "cache", "linear", n_episodes=30, turns=6, hidden=4)


def test_pairs_follow_lag_and_direction(cache):
    turns = ActivationCache.open(cache).turns
    ab = build_pairs(turns, "synthetic", "synthetic", "A->B", lag=1)
    assert set(ab["t"]) == {0, 2, 4}  # agent 0 speaks at even utterances; the last has no partner reply
    ba = build_pairs(turns, "synthetic", "synthetic", "B->A", lag=1)
    assert set(ba["t"]) == {1, 3}
    lag3 = build_pairs(turns, "synthetic", "synthetic", "A->B", lag=3)
    assert set(lag3["t"]) == {0, 2}
    inter = turns[turns.condition == "interactive"].set_index(["run_id", "utterance"])
    for _, p in ab.head(5).iterrows():
        assert inter.loc[(p.run_id, p.t + 1), "row"] == p.target_row
        assert inter.loc[(p.run_id, p.t), "row"] == p.source_row
    with pytest.raises(NsyncError, match="no 'observer' utterances"):
        build_pairs(turns, "synthetic", "synthetic", "A->B", 1, "observer")


def _sotopia_pairs(sotopia_dir):
    lib = load_sotopia(sotopia_dir)
    rows = []
    for e in lib.episodes:
        for t in range(4):
            rows.append(dict(run_id=e.id, episode_id=e.id, scenario_id=e.scenario.id, character_a=e.characters[0].id,
                             character_b=e.characters[1].id, seed=0, order=0, t=t, source_row=0, target_row=0))
    return pd.DataFrame(rows)


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_persona_split_holds_characters_out_on_sotopia(sotopia_dir, seed):
    pairs = _sotopia_pairs(sotopia_dir)
    split = make_split(pairs, "persona", 0.2, seed)
    chars = lambda m: set(pairs.loc[m, "character_a"]) | set(pairs.loc[m, "character_b"])
    assert not chars(split.train) & chars(split.test)
    assert split.test.sum() > 0.05 * len(pairs) and split.train.sum() > 0.3 * len(pairs)


@pytest.mark.parametrize("kind,column", [("interaction", "episode_id"), ("scenario", "scenario_id")])
def test_grouped_splits_keep_groups_whole(sotopia_dir, kind, column):
    pairs = _sotopia_pairs(sotopia_dir)
    split = make_split(pairs, kind, 0.2, 0)
    assert not set(pairs.loc[split.train, column]) & set(pairs.loc[split.test, column])
    assert abs(split.test.mean() - 0.2) < 0.05
    assert (split.train | split.test).all()


def test_datamodule_shapes_stats_and_no_leakage(cache):
    dm = SynchronyDataModule(DataConfig(cache=str(cache), split="interaction", val_size=0.2, max_pairs=60), direction="A->B")
    dm.setup()
    x, y, episode = next(iter(dm.for_sources([1]).test_dataloader()))  # test rows also carry their episode's index
    assert x.shape[1:] == (1, 4) and y.shape[1:] == (3, 4)
    assert torch.equal(x[:, 0], dm.x[torch.from_numpy(dm.index["test"][: len(x)]), 1])
    assert (dm.test_episodes[episode.numpy()] == dm.pairs["episode_id"].to_numpy()[dm.index["test"]][: len(x)]).all()
    eps = {part: set(dm.pairs["episode_id"].iloc[dm.index[part]]) for part in ("fit", "val", "test")}
    assert not eps["fit"] & eps["test"] and not eps["val"] & eps["test"] and not eps["fit"] & eps["val"]
    assert 60 <= len(dm.pairs) < 63  # whole episodes up to the budget
    fit = dm.x[:, 1][dm.index["fit"]].double()
    np.testing.assert_allclose(dm.x_mean[1].numpy(), fit.mean(0).numpy())
    with pytest.raises(NsyncError, match="out of range"):
        SynchronyDataModule(DataConfig(cache=str(cache), source_layers=[7])).setup()
    every_other = SynchronyDataModule(DataConfig(cache=str(cache), source_layer_step=2))
    every_other.setup()
    assert every_other.source_layers == [0, 2] and every_other.target_layers == [0, 1, 2]


def test_states_stay_as_stored_and_batches_are_float32(tmp_path):
    """A float16 cache (as nsync.simulate writes, here in several shards) is held in float16 (half
    the memory of a float32 copy) and served in float32 batches equal to the stored values."""
    path = write_synthetic_cache(tmp_path / "c16", n_episodes=12, hidden=8, n_layers=2, massive=300.0, dtype="float16", shard_rows=40)
    cache = ActivationCache.open(path)
    assert cache.manifest["dtype"] == "float16"
    dm = SynchronyDataModule(DataConfig(cache=str(path), batch_size=7), "A->B", 0)
    dm.setup()
    assert dm.x.dtype == dm.y.dtype == torch.float16
    x, y = next(iter(dm.for_sources([1]).train_dataloader()))
    assert x.dtype == y.dtype == torch.float32
    rows = dm.pairs.iloc[dm.index["fit"]]
    stored = np.asarray(cache.states("synthetic", 1, "interactive"))[rows["source_row"].to_numpy()]
    batch = {tuple(r) for r in x[:, 0].numpy()}
    assert batch <= {tuple(r) for r in stored.astype(np.float32)}
    # the means are float64 over the stored values
    np.testing.assert_allclose(dm.x_mean[1].numpy(), stored.astype(np.float64).mean(0), rtol=1e-12, atol=1e-9)
