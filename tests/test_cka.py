"""Debiased linear CKA against a direct implementation of the unbiased HSIC, and in a fit."""

import numpy as np
import pytest
import torch

from nsync.probes.cka import debiased_cka


def _hsic_unbiased(k: np.ndarray, l: np.ndarray) -> float:
    """Song et al. (2012), eq. 5, written out term by term."""
    n = len(k)
    k, l = k.copy(), l.copy()
    np.fill_diagonal(k, 0)
    np.fill_diagonal(l, 0)
    one = np.ones(n)
    return float((np.trace(k @ l) + (one @ k @ one) * (one @ l @ one) / ((n - 1) * (n - 2)) - 2 / (n - 2) * one @ k @ l @ one) / (n * (n - 3)))


def _reference(x: np.ndarray, y: np.ndarray) -> float:
    k, l = x @ x.T, y @ y.T
    return _hsic_unbiased(k, l) / np.sqrt(_hsic_unbiased(k, k) * _hsic_unbiased(l, l))


def test_matches_the_unbiased_hsic_formula():
    rng = np.random.default_rng(0)
    x = rng.normal(size=(40, 2, 7))
    y = np.concatenate([x[:, :1, :5] @ rng.normal(size=(5, 6)), rng.normal(size=(40, 1, 6))], axis=1) + 0.5 * rng.normal(size=(40, 2, 6))
    got = debiased_cka(torch.from_numpy(x), torch.from_numpy(y), max_gram_gb=1e-9).numpy()  # one target kernel at a time
    want = np.array([[_reference(x[:, s], y[:, t]) for t in range(2)] for s in range(2)])
    np.testing.assert_allclose(got, want, rtol=1e-9)


def test_invariant_to_rotation_scale_and_shift_and_zero_for_independent_states():
    g = torch.Generator().manual_seed(1)
    x = torch.randn(300, 1, 20, generator=g, dtype=torch.float64)
    q = torch.linalg.qr(torch.randn(20, 20, generator=g, dtype=torch.float64))[0]
    assert debiased_cka(x, 3 * x @ q + 5).item() == pytest.approx(1.0, abs=1e-9)
    massive = x.clone()
    massive[..., 0] += 3000.0  # a constant massive dimension changes nothing
    assert debiased_cka(massive, x @ q).item() == pytest.approx(1.0, abs=1e-9)
    # the biased estimator gives independent 300 x 200 matrices about 0.6; the debiased one about 0
    assert abs(debiased_cka(torch.randn(300, 1, 200, generator=g), torch.randn(300, 1, 200, generator=g)).item()) < 0.02


def test_a_constant_layer_has_no_cka():
    g = torch.Generator().manual_seed(2)
    x = torch.randn(50, 1, 8, generator=g)
    y = torch.cat([torch.ones(50, 1, 8), x], dim=1)
    cka = debiased_cka(x, y)
    assert torch.isnan(cka[0, 0]) and cka[0, 1].item() == pytest.approx(1.0)


def test_a_fit_reports_cka_and_the_layer_profile(tmp_path):
    from nsync.config import load_config
    from nsync.testing.synthetic import write_synthetic_cache
    from nsync.fit import FitConfig, run_fit
    from nsync.fit.results import layer_profile

    cache = write_synthetic_cache(tmp_path / "c", "linear", n_episodes=60, turns=6, hidden=4, n_layers=2)
    cfg = load_config(FitConfig, [f"out={tmp_path / 'fit'}", f"data.cache={cache}", "logger.kind=none", "progress=false",
                                  "data.split_seeds=[0]", "bootstrap=0"], prog="test")
    result = run_fit(cfg)
    assert result.source_depth == [0.0, 0.5, 1.0] and result.target_depth == [0.0, 0.5, 1.0]
    ab, ba = result.directions["A->B"], result.directions["B->A"]
    assert np.array(ab.cka).shape == (3, 3)
    assert ab.sync_cka > 0.3 and abs(ba.sync_cka) < 0.1  # the planted direction only
    profile = layer_profile(result)
    assert len(profile) == 6 and set(profile["direction"]) == {"A->B", "B->A"}
    assert (tmp_path / "fit" / "layer_profile.png").is_file()
