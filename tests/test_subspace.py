"""What is synchronised, on planted caches with a known answer: the dimensionality of the
communication subspace, who leads, and whether the predictive dimensions lie along the source's
dominant ones."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from nsync.analysis.leader import leader_between
from nsync.config import load_config
from nsync.errors import NsyncError
from nsync.fit import FitConfig, run_fit
from nsync.stats.subspace import alignment, dominant_dimensions, predictive_directions
from nsync.testing.synthetic import write_synthetic_cache


def _fit(cache, out, *overrides):
    args = [f"data.cache={cache}", f"out={out}", "logger.kind=none", "progress=false", "surrogates.n=0", "time_bins=-1",
            "cka=false", "save_weights=false", "bootstrap=300", *overrides]  # fmt: skip
    return run_fit(load_config(FitConfig, args, prog="test"))


@pytest.mark.parametrize("rank", [1, 3, 8])
def test_the_dimensionality_of_synchrony_recovers_a_planted_rank(tmp_path, rank):
    """A coupling of rank k between 16-dimensional states: the smallest rank reaching 90% of the
    full map's SyncR² is k, inside its interval; below k the reduced maps fall short."""
    cache = write_synthetic_cache(tmp_path / "c", "linear", n_episodes=150, turns=8, n_layers=1, hidden=16, coupling_rank=rank, noise=0.7)
    result = _fit(cache, tmp_path / "fit", "data.directions=[A->B]", "data.split_seeds=[0]")
    s = result.subspace
    assert s is not None and s.ranks[-1] == 16 and s.sync_r2_by_rank[-1] == pytest.approx(result.sync_r2, abs=1e-6)  # the full map is the fit's (float32 weights)
    assert s.dimensionality == rank, (s.sync_r2_by_rank, s.dimensionality)
    lo, hi = s.dimensionality_ci95
    assert lo <= rank <= hi and hi - lo <= 1
    assert all(d == rank for d in result.directions["A->B"].subspace.dimensionality_by_source_layer)


def test_a_one_way_coupling_names_its_leader_and_a_two_way_one_none(tmp_path):
    """A->B coupled, B->A not: the paired difference excludes 0 and A leads; coupled both ways
    alike, the difference is near 0 and its interval holds it."""
    one_way = _fit(write_synthetic_cache(tmp_path / "a", "linear", n_episodes=100, turns=9, hidden=8), tmp_path / "fa")
    (asym,) = one_way.asymmetry
    assert (asym.first, asym.second, asym.leader) == ("A->B", "B->A", "A")
    assert asym.ci95[0] > 0.2 and asym.episodes_first_higher > 0.7
    assert asym.difference == pytest.approx(one_way.directions["A->B"].sync_r2 - one_way.directions["B->A"].sync_r2)
    for d in one_way.directions.values():  # over 3 split seeds each direction's full-rank map is its SyncR²
        assert d.subspace.sync_r2_by_rank[-1] == pytest.approx(d.sync_r2, abs=1e-6)
    # Fitted one direction at a time (as a pair of two models is), the runs pair by episode: the same answer
    for d in ("A->B", "B->A"):
        _fit(tmp_path / "a", tmp_path / d.replace("->", "_to_"), f"data.directions=[{d}]")
    apart = leader_between(tmp_path / "A_to_B", tmp_path / "B_to_A")
    assert apart.leader == "A" and apart.difference == pytest.approx(asym.difference, abs=1e-6)
    assert apart.ci95 == pytest.approx(asym.ci95, abs=1e-6) and apart.episodes_first_higher == pytest.approx(asym.episodes_first_higher)
    with pytest.raises(NsyncError, match="not each other's reverse"):
        leader_between(tmp_path / "A_to_B", tmp_path / "A_to_B")
    with pytest.raises(NsyncError, match="leader_between pairs two runs of one direction each"):
        leader_between(tmp_path / "fa", tmp_path / "B_to_A")
    both = _fit(write_synthetic_cache(tmp_path / "b", "linear", n_episodes=100, turns=9, hidden=8, both_directions=True), tmp_path / "fb")
    (sym,) = both.asymmetry
    assert sym.ci95[0] <= 0 <= sym.ci95[1] and sym.leader is None
    assert both.directions["B->A"].sync_r2 > 0.2  # coupled both ways


@pytest.mark.slow
def test_the_paired_difference_holds_zero_at_its_nominal_rate_when_both_directions_couple_alike(tmp_path):
    """40 caches coupled alike both ways (population difference 0), one split seed each: the 95%
    interval of A->B minus B->A holds 0 in at least 34 (nominal 38; 34 is 2.6 binomial sd below)."""
    held = 0
    for seed in range(40):
        cache = write_synthetic_cache(tmp_path / f"c{seed}", "linear", n_episodes=60, turns=9, hidden=6, n_layers=1, both_directions=True, seed=seed)
        (sym,) = _fit(cache, tmp_path / f"f{seed}", "data.split_seeds=[0]", "data.test_size=0.34", "bootstrap=400", "subspace.max_rank=0").asymmetry
        held += sym.ci95[0] <= 0 <= sym.ci95[1]
    assert held >= 34, held


def test_alignment_tells_a_subspace_along_the_dominant_dimensions_from_one_across_them():
    """A source whose variance falls over its dimensions; a target predicted from its top two
    principal components, or from two of its weakest: the first lies inside the source's top-2
    components, the second almost wholly outside (a random 2-dimensional subspace: 2/12)."""
    rng = np.random.default_rng(0)
    d, n = 12, 4000
    basis = np.linalg.qr(rng.normal(size=(d, d)))[0]
    x = (rng.normal(size=(n, d)) * np.linspace(3.0, 0.5, d)) @ basis.T  # principal components: basis' columns
    shares = {}
    for name, dims in (("dominant", [0, 1]), ("weak", [d - 2, d - 1])):
        y = x @ basis[:, dims] @ rng.normal(size=(2, 6)) + rng.normal(size=(n, 6))
        xc, yc = x - x.mean(0), y - y.mean(0)
        w = torch.from_numpy(np.linalg.solve(xc.T @ xc + np.eye(d), xc.T @ yc))
        xt, scale = torch.from_numpy(x), torch.ones(d, dtype=torch.float64)  # the source's space as it is (the fit's: unit variance per dimension)
        directions = predictive_directions(xt @ w, 6)
        shares[name], random = alignment(w, directions, scale, dominant_dimensions(xt, scale, 6), 2)
    assert random == pytest.approx(2 / 12)
    assert shares["dominant"] > 0.8 and shares["weak"] < random < shares["dominant"], shares


def test_the_shared_dimensions_follow_the_conversations_shape_where_it_is_planted(tmp_path):
    """Every state carries a vector per utterance index (the conversation's shape, sd 2): the
    partner's state in the shared dimensions is mostly that, and the context features explain it;
    without a shape they explain nothing."""
    tracks = {}
    for shape in (0.0, 2.0):
        cache = write_synthetic_cache(tmp_path / f"c{shape}", "linear", n_episodes=100, turns=8, hidden=8, shape=shape)
        tracks[shape] = _fit(cache, tmp_path / f"f{shape}", "data.directions=[A->B]", "bootstrap=0").subspace.tracks
    assert tracks[2.0]["shape"] > 0.5 and tracks[2.0]["all"] > 0.5 and tracks[2.0]["topic"] is None  # no text embedding in the cache
    assert abs(tracks[0.0]["shape"]) < 0.1 and abs(tracks[0.0]["speaker"]) < 0.1
