"""Ridge math and probes against independent references (scikit-learn, float64 solves, analytic R²)."""

import numpy as np
import pytest
import torch
from sklearn.linear_model import Ridge
from sklearn.metrics import r2_score
from torch.utils.data import DataLoader, TensorDataset

from nsync.errors import warnings_once_per_run
from nsync.probes import AffineProbe, LayerR2, RidgeSolution, RidgeStatistics, fit_ridge
from nsync.probes.ridge import band_scales, choose_on_validation


def _massive_data(n=3000, d=12, k=4, seed=0):
    """One input dimension with mean 3000 and std 1: float32 X^T X on raw states fails here."""
    rng = np.random.default_rng(seed)
    x = rng.normal(size=(n, d))
    x[:, 0] += 3000.0
    w = rng.normal(size=(d, k)) * 0.5
    y = (x - x.mean(0)) @ w + rng.normal(size=(n, k))
    return x.astype(np.float32), y.astype(np.float32)


def test_streamed_ridge_matches_sklearn_with_massive_dimension():
    x, y = _massive_data()
    stats = RidgeStatistics(torch.tensor(x[:500]).double().mean(0), torch.tensor(y[:500]).double().mean(0), torch.float32)
    for i in range(0, len(x), 256):  # streamed in batches, float32 products of centred data
        stats.update(torch.tensor(x[i : i + 256]), torch.tensor(y[i : i + 256]))
    w, b = RidgeSolution(stats).weights(0.1)
    ref = Ridge(alpha=0.1).fit(x.astype(np.float64), y.astype(np.float64))
    np.testing.assert_allclose(x @ w.numpy() + b.numpy(), ref.predict(x.astype(np.float64)), atol=1e-4)


def test_raw_float32_normal_equations_fail_where_ours_do_not():
    """The paper's algorithm (X^T X on raw float32 states) loses the massive dimension."""
    x, y = _massive_data(n=4000, d=6, k=2, seed=1)
    tr, te = slice(0, 3200), slice(3200, None)
    xa = np.hstack([x, np.ones((len(x), 1), np.float32)])
    xt = torch.tensor(xa[tr])
    naive = torch.linalg.solve(xt.T @ xt + 0.1 * torch.eye(xa.shape[1]), xt.T @ torch.tensor(y[tr]))
    naive_r2 = r2_score(y[te], xa[te] @ naive.numpy())
    w, b = fit_ridge(torch.tensor(x[tr]), torch.tensor(y[tr]))
    ours = r2_score(y[te], x[te] @ w.numpy() + b.numpy())
    ref = r2_score(y[te], Ridge(alpha=0.1).fit(x[tr].astype(np.float64), y[tr]).predict(x[te].astype(np.float64)))
    assert abs(ours - ref) < 1e-4
    assert naive_r2 < ref - 0.01


def test_eigendecomposition_serves_every_alpha():
    x, y = _massive_data(n=400, d=8, k=3)
    stats = RidgeStatistics(torch.tensor(x).double().mean(0), torch.tensor(y).double().mean(0))
    stats.update(torch.tensor(x), torch.tensor(y))
    sol = RidgeSolution(stats)
    for alpha in (0.01, 1.0, 100.0):
        w, _ = sol.weights(alpha)
        ref = Ridge(alpha=alpha).fit(x.astype(np.float64), y)
        np.testing.assert_allclose(w.numpy(), ref.coef_.T, atol=1e-6)
        # predictions without forming W (the alpha grid's validation path)
        np.testing.assert_allclose(sol.predict(torch.tensor(x[:20]), alpha).numpy(), ref.predict(x[:20].astype(np.float64)), rtol=1e-5, atol=1e-3)


def test_layer_r2_matches_sklearn():
    rng = np.random.default_rng(0)
    y = rng.normal(size=(200, 2, 5)) + 1000.0
    p = y + rng.normal(size=y.shape) * np.linspace(0.1, 2, 5)
    metric = LayerR2(2, 5, torch.full((2, 5), 1000.0, dtype=torch.float64))
    metric.update(torch.tensor(p[:120]), torch.tensor(y[:120]))
    metric.update(torch.tensor(p[120:]), torch.tensor(y[120:]))
    uniform, weighted = metric.compute()
    for i in range(2):
        assert uniform[i].item() == pytest.approx(r2_score(y[:, i], p[:, i]), abs=1e-10)
        assert weighted[i].item() == pytest.approx(r2_score(y[:, i], p[:, i], multioutput="variance_weighted"), abs=1e-10)


def _fit_probe(probe, x, y, tr, va, te):
    import lightning as L

    loaders = {k: DataLoader(TensorDataset(torch.tensor(x[s]), torch.tensor(y[s])), batch_size=256) for k, s in dict(tr=tr, va=va, te=te).items()}
    trainer = L.Trainer(max_epochs=1, logger=False, enable_checkpointing=False, enable_progress_bar=False, enable_model_summary=False, num_sanity_val_steps=0)
    trainer.fit(probe, loaders["tr"], loaders["va"])
    trainer.test(probe, loaders["te"], verbose=False)
    return probe


def test_affine_probe_lightning_matches_sklearn_per_target_layer():
    rng = np.random.default_rng(3)
    x = rng.normal(size=(1500, 10)).astype(np.float32)
    x[:, 2] += 3000.0
    y = np.stack([x @ rng.normal(size=(10, 6)) + rng.normal(size=(1500, 6)) * s for s in (0.5, 2.0, 8.0)], 1).astype(np.float32)
    tr, va, te = slice(0, 1000), slice(1000, 1200), slice(1200, None)
    probe = AffineProbe(10, 6, 3, x_shift=torch.tensor(x[tr]).double().mean(0), y_shift=torch.tensor(y[tr]).double().mean(0))
    _fit_probe(probe, x, y, tr, va, te)
    for i in range(3):
        # Validation rows are scored with the fit on the training rows (what the target layer is chosen
        # on), then the probe is refitted on training plus validation rows.
        first = Ridge(alpha=0.1).fit(x[tr].astype(np.float64), y[tr, i])
        assert probe.results.val_r2[0, i].item() == pytest.approx(r2_score(y[va, i], first.predict(x[va].astype(np.float64))), abs=1e-4)
        ref = Ridge(alpha=0.1).fit(x[:1200].astype(np.float64), y[:1200, i])
        want = r2_score(y[te, i], ref.predict(x[te].astype(np.float64)))
        assert probe.results.test_r2[i].item() == pytest.approx(want, abs=1e-4)


def test_affine_probe_alpha_grid_picks_on_validation():
    rng = np.random.default_rng(4)
    x = rng.normal(size=(300, 60)).astype(np.float32)
    y = (x[:, :2] @ rng.normal(size=(2, 3)) + rng.normal(size=(300, 3)) * 2).astype(np.float32)[:, None]
    probe = AffineProbe(60, 3, 1, alphas=[1e-3, 1.0, 100.0, 1e5], x_shift=torch.zeros(60), y_shift=torch.zeros(3))
    _fit_probe(probe, x, y, slice(0, 150), slice(150, 220), slice(220, None))
    scores = probe.results.val_r2_by_alpha
    assert probe.alpha.item() == [1e-3, 1.0, 100.0, 1e5][int(scores.argmax())]
    assert probe.alpha.item() > 1e-3  # 60 inputs, 150 rows: the least regularised is not best


def test_constant_target_dimensions_have_no_r2():
    """The embedding at the last prompt token is the same for every row: no R², not 1.0."""
    rng = np.random.default_rng(5)
    y = np.zeros((50, 2, 3))
    y[:, 0] = rng.normal(size=(50, 3))
    y[:, 1, 0] = 7.0  # target layer 1: dimension 0 constant, others vary
    y[:, 1, 1:] = rng.normal(size=(50, 2))
    y_const = y.copy()
    y_const[:, 0] = 4.0  # target layer 0 entirely constant
    metric = LayerR2(2, 3, torch.zeros(6, dtype=torch.float64))
    metric.update(torch.tensor(y_const + 0.0), torch.tensor(y_const))
    uniform, weighted = metric.compute()
    assert torch.isnan(uniform[0]) and torch.isnan(weighted[0])
    assert uniform[1].item() == pytest.approx(1.0)  # only the varying dimensions count
    from nsync.stats.r2 import sync_r2

    assert sync_r2(np.array([[np.nan, 0.3], [np.nan, -0.2]])) == pytest.approx(0.15)


def test_affine_probe_over_several_source_layers_matches_sklearn_per_cell():
    """One probe fits two source layers to two target layers at once, each cell as its own ridge;
    an alpha grid picks per cell; forward and weights agree with scikit-learn."""
    rng = np.random.default_rng(6)
    n = 900
    x = rng.normal(size=(n, 2, 8)).astype(np.float32)
    x[:, :, 1] += 3000.0
    y = np.stack([x[:, 0] @ rng.normal(size=(8, 5)) + rng.normal(size=(n, 5)), x[:, 1, :3] @ rng.normal(size=(3, 5)) + 4 * rng.normal(size=(n, 5))], 1)
    y = y.astype(np.float32)
    probe = AffineProbe(8, 5, n_targets=2, n_sources=2, alphas=[0.1, 30.0], x_shift=torch.tensor(x[:500]).double().mean(0),
                        y_shift=torch.tensor(y[:500]).double().mean(0))
    tr, va, te = slice(0, 500), slice(500, 700), slice(700, None)
    _fit_probe(probe, x, y, tr, va, te)
    train = slice(0, 700)  # the grid refits on training plus validation rows
    for s in range(2):
        for t in range(2):
            alpha = probe.alpha[s, t].item()
            assert alpha in (0.1, 30.0)
            ref = Ridge(alpha=alpha).fit(x[train, s].astype(np.float64), y[train, t].astype(np.float64))
            want = r2_score(y[te, t], ref.predict(x[te, s].astype(np.float64)))
            assert probe.results.test_r2[s, t].item() == pytest.approx(want, abs=1e-4)
            w, b = probe.weights(s, t)
            np.testing.assert_allclose(w.numpy(), ref.coef_.T, atol=1e-4)
            np.testing.assert_allclose(probe(torch.tensor(x[te]))[:, s, t].numpy(), ref.predict(x[te, s].astype(np.float64)), atol=1e-2)


def test_an_alpha_chosen_at_the_grid_edge_is_warned_about(caplog):
    """States on a large scale (Gemma 3's reach ~3e4) need far larger alphas: when the grid's
    largest value wins most cells, the grid is too short and the fit says so, counting over the
    whole run (one chunk may be a single layer: the embedding layer alone at the edge is no sign)."""
    from nsync.probes import ridge

    grid = [1.0, 10.0, 100.0]
    rising = torch.arange(3.0)[:, None, None].expand(3, 2, 4)  # validation R² rises with alpha in every cell
    interior = torch.tensor([0.0, 1.0, 0.5])[:, None, None].expand(3, 2, 4)
    with caplog.at_level("WARNING", logger=ridge.log.name):
        with warnings_once_per_run():
            ridge.choose_alpha(rising, grid)
            ridge.choose_alpha(-rising, grid)
            ridge.choose_alpha(rising, grid)
            assert not caplog.records  # said at the run's end, over all its cells
        assert [r.getMessage() for r in caplog.records] == [
            "the alpha grid's largest value (100) was chosen in 67% of the cells, with the validation R² still rising there: the best alpha may lie beyond the grid; "
            "extend affine.alphas upward (or set affine.scale=true)",
            "the alpha grid's smallest value (1) was chosen in 33% of the cells, with the validation R² still rising there: the best alpha may lie beyond the grid; "
            "extend affine.alphas downward",
        ]
        caplog.clear()
        with warnings_once_per_run():  # a one-layer chunk at the edge among interior chunks: 8 of 40 cells
            ridge.choose_alpha(-rising[:, :1], grid)
            for _ in range(4):
                ridge.choose_alpha(interior, grid)
        assert not caplog.records
        ridge.choose_alpha(-rising[:, :1], grid)  # outside a run: this call's cells, at once
        assert [r.getMessage().split(")")[0] for r in caplog.records] == ["the alpha grid's smallest value (1"]
        caplog.clear()
        ridge.choose_alpha(interior, grid)
        assert not caplog.records
        with pytest.raises(RuntimeError), warnings_once_per_run():  # a run that fails still says it
            ridge.choose_alpha(rising, grid, per="source")  # one choice per source layer
            raise RuntimeError
        assert [r.getMessage().split(" of the")[0] for r in caplog.records] == ["the alpha grid's largest value (100) was chosen in 100%"]
        caplog.clear()
        ridge.choose_alpha(rising - 3.0, grid)  # R² rises towards 0 from below (no relation): the largest alpha wins, no warning
        flat = torch.tensor([0.500, 0.501, 0.502])[:, None, None].expand(3, 2, 4)
        ridge.choose_alpha(flat, grid)  # the largest wins by a hair (R² flat at the edge): no sign of a short grid
        assert not caplog.records


def test_alpha_and_band_ratio_are_chosen_on_validation_r2_without_a_trainer():
    """The choice AffineProbe makes at the end of validation, as a plain function of validation R²."""
    nan = float("nan")
    # [ratios 2, alphas 3, sources 1, targets 3]; target 2 has no R² at all (constant on the validation side)
    by_ratio = torch.tensor([[[0.1, 0.6, nan], [0.4, 0.2, nan], [0.3, 0.1, nan]],
                             [[0.5, 0.1, nan], [0.2, 0.3, nan], [0.1, 0.7, nan]]], dtype=torch.float64)[:, :, None, :]
    choice = choose_on_validation(by_ratio, [1.0, 10.0, 100.0])
    # target 0: alpha 1 at its best ratio (0.5) beats 10 (0.4) and 100 (0.3); target 1: alpha 100 at ratio 2 (0.7)
    torch.testing.assert_close(choice.val_r2_by_alpha[:, 0, :2], torch.tensor([[0.5, 0.6], [0.4, 0.3], [0.3, 0.7]], dtype=torch.float64))
    assert choice.alpha[0, :2].tolist() == [1.0, 100.0] and torch.isnan(choice.alpha[0, 2])
    assert choice.ratio_index[0, :2].tolist() == [1, 1]
    assert choice.val_r2[0, :2].tolist() == [0.5, 0.7] and torch.isnan(choice.val_r2[0, 2])
    # one alpha per source layer: the best mean over target layers (0.55 for alpha 1, 0.5 for 100)
    assert choose_on_validation(by_ratio, [1.0, 10.0, 100.0], per="source").alpha[0].tolist() == [1.0, 1.0, 1.0]


def _banded_reference(x, b, y, alpha, band_penalty):
    """float64 ridge on centred data with penalty ``alpha`` on x's weights and ``band_penalty`` on b's."""
    z = np.concatenate([x, b], 1).astype(np.float64)
    zm, ym = z.mean(0), y.mean(0)
    pen = np.r_[np.full(x.shape[1], alpha), np.full(b.shape[1], band_penalty)]
    w = np.linalg.solve((z - zm).T @ (z - zm) + np.diag(pen), (z - zm).T @ (y - ym))
    return w, ym - zm @ w


def _equalise(x, b):
    """What the probe does before the band ratio: the band brought to the source band's total variance."""
    return ((x - x.mean(0)) ** 2).sum() / ((b - b.mean(0)) ** 2).sum()


def test_banded_affine_probe_matches_a_float64_solve_and_himalaya():
    rng = np.random.default_rng(7)
    n, d, k = 900, 6, 4
    x = rng.normal(size=(n, d)).astype(np.float32)
    b = (100.0 * rng.normal(size=(n, k)) + 5000.0).astype(np.float32)  # another scale, a huge mean
    y = np.stack([x @ rng.normal(size=(d, 3)) + 0.01 * b @ rng.normal(size=(k, 3)) * s + rng.normal(size=(n, 3)) for s in (0.1, 3.0)], 1)
    y = y.astype(np.float32)
    z = np.concatenate([x, b], 1)
    tr, va, te = slice(0, 500), slice(500, 700), slice(700, None)
    ratios, alphas = [0.01, 1.0, 100.0], [1.0, 100.0]
    probe = AffineProbe(d + k, 3, 2, alphas=alphas, x_shift=torch.tensor(z[tr]).double().mean(0), y_shift=torch.tensor(y[tr]).double().mean(0),
                        matmul_dtype="float64", band_start=d, band_ratios=ratios)
    _fit_probe(probe, z, y, tr, va, te)
    g2 = _equalise(x[tr].astype(np.float64), b[tr].astype(np.float64))
    for t in range(2):
        # the (ratio, alpha) with the best validation R² of a float64 solve on the fitting rows
        val = {(r, a): r2_score(y[va, t], np.concatenate([x[va], b[va]], 1) @ w + c)
               for r in ratios for a in alphas for w, c in [_banded_reference(x[tr], b[tr], y[tr, t], a, a * r / g2)]}
        best_r, best_a = max(val, key=val.get)
        assert probe.results.ratio[0, t].item() == best_r and probe.alpha[0, t].item() == best_a
        # refitted on fitting plus validation rows with those penalties
        g2_all = _equalise(x[:700].astype(np.float64), b[:700].astype(np.float64))
        w, c = _banded_reference(x[:700], b[:700], y[:700, t], best_a, best_a * best_r / g2_all)
        assert probe.results.test_r2[t].item() == pytest.approx(r2_score(y[te, t], z[te] @ w + c), abs=1e-6)  # float32 targets
        pw, pb = probe.weights(0, t)
        np.testing.assert_allclose(pw.numpy(), w, rtol=1e-6, atol=1e-8)
        # himalaya's banded ridge (feature spaces scaled by gamma, unit penalty: penalty alpha / gamma) agrees
        from himalaya.backend import set_backend
        from himalaya.ridge import solve_banded_ridge_random_search

        set_backend("numpy", on_error="raise")
        gammas = np.array([[1.0, g2_all / best_r]])
        _, hw, _, _ = solve_banded_ridge_random_search([x[:700].astype(np.float64), b[:700].astype(np.float64)], y[:700, t].astype(np.float64),
                                                       n_iter=gammas, alphas=np.array([best_a]), fit_intercept=True, return_weights=True,
                                                       progress_bar=False, cv=2)
        np.testing.assert_allclose(np.asarray(hw), w, rtol=1e-5, atol=1e-7)


def test_every_band_gets_its_own_penalty_as_in_a_float64_solve_and_himalaya():
    """Three bands (the source and a baseline of two features at scales 1e-3 and 1e2), penalty
    ratio combinations one per band: the probe chooses the combination and alpha a float64 solve
    validates best, refits with them, and its weights match that solve's and himalaya's banded
    ridge. The first feature carries signal in all its columns and the second is noise of the same
    width, so no penalty shared by the two serves both: the chosen combination tells them apart."""
    rng = np.random.default_rng(11)
    n, d, k1, k2 = 900, 5, 40, 40
    x = rng.normal(size=(n, d))
    f1 = 1e-3 * rng.normal(size=(n, k1))  # small-scale and informative (a text embedding beside residual states)
    f2 = 1e2 * rng.normal(size=(n, k2)) + 7000.0  # large-scale noise with a huge mean
    y = np.stack([x @ rng.normal(size=(d, 2)) + f1 @ rng.normal(size=(k1, 2)) * 1e3 * s / k1**0.5 + rng.normal(size=(n, 2))
                  for s in (1.0, 2.0)], 1)
    z = np.concatenate([x, f1, f2], 1)
    tr, va, te = slice(0, 150), slice(150, 450), slice(450, None)
    combos, alphas = [(1.0, 1.0), (0.1, 0.1), (10.0, 10.0), (1.0, 100.0), (0.1, 10.0), (100.0, 1.0)], [1.0, 10.0, 100.0]
    starts = [d, d + k1]
    probe = AffineProbe(z.shape[1], 2, 2, alphas=alphas, x_shift=torch.tensor(z[tr]).mean(0), y_shift=torch.tensor(y[tr]).mean(0),
                        matmul_dtype="float64", band_start=starts, band_ratios=combos)
    _fit_probe(probe, z.astype(np.float32), y.astype(np.float32), tr, va, te)

    def ss(a):
        return ((a - a.mean(0)) ** 2).sum()

    def penalties(rows, alpha, combo):  # each band brought to the source's total variance, then its ratio
        zr = z[rows].astype(np.float32).astype(np.float64)
        source = ss(zr[:, :d])
        return np.r_[np.full(d, alpha), np.full(k1, alpha * combo[0] * ss(zr[:, d:d + k1]) / source),
                     np.full(k2, alpha * combo[1] * ss(zr[:, d + k1:]) / source)]

    def solve(rows, t, pen):
        zr, yr = z[rows].astype(np.float32).astype(np.float64), y[rows, t].astype(np.float32).astype(np.float64)
        zc, yc = zr - zr.mean(0), yr - yr.mean(0)
        w = np.linalg.solve(zc.T @ zc + np.diag(pen), zc.T @ yc)
        return w, yr.mean(0) - zr.mean(0) @ w

    zf = z.astype(np.float32).astype(np.float64)
    chosen = set()
    for t in range(2):
        val = {(c, a): r2_score(y[va, t], zf[va] @ w + b) for c in range(len(combos)) for a in alphas
               for w, b in [solve(tr, t, penalties(tr, a, combos[c]))]}
        best_c, best_a = max(val, key=val.get)
        chosen.add(best_c)
        assert tuple(probe.results.ratio[0, t].tolist()) == combos[best_c] and probe.alpha[0, t].item() == best_a
        w, b = solve(slice(0, 450), t, penalties(slice(0, 450), best_a, combos[best_c]))
        pw, pb = probe.weights(0, t)
        np.testing.assert_allclose(pw.numpy(), w, rtol=1e-5, atol=1e-9)
        assert probe.results.test_r2[t].item() == pytest.approx(r2_score(y[te, t].astype(np.float32), zf[te] @ w + b), abs=1e-5)
        # himalaya: feature spaces scaled by gamma under one penalty alpha (a band's penalty alpha / gamma)
        from himalaya.backend import set_backend
        from himalaya.ridge import solve_banded_ridge_random_search

        set_backend("numpy", on_error="raise")
        pen = penalties(slice(0, 450), best_a, combos[best_c])
        gammas = np.array([[best_a / pen[0], best_a / pen[d], best_a / pen[-1]]])
        spaces = [zf[:450, :d], zf[:450, d:d + k1], zf[:450, d + k1:]]
        _, hw, _, _ = solve_banded_ridge_random_search(spaces, y[:450, t].astype(np.float32).astype(np.float64), n_iter=gammas,
                                                       alphas=np.array([best_a]), fit_intercept=True, return_weights=True, progress_bar=False, cv=2)
        np.testing.assert_allclose(np.asarray(hw), w, rtol=1e-4, atol=1e-9)
        # one penalty for the baseline (the same ratio for both features) validates worse here
        one = max(v for (c, _), v in val.items() if combos[c][0] == combos[c][1])
        assert combos[best_c][0] < combos[best_c][1] and val[(best_c, best_a)] > one + 0.01, (val, combos[best_c])
    # the refit keeps only the chosen combinations' solutions
    assert set(probe._solutions) == chosen and len(chosen) < len(combos)


def test_band_allowed_limits_each_cell_to_its_combinations():
    """Cells limited to one combination each (``band_allowed``) get what a probe with only that
    combination gives them: validation R², alpha and test R² (their predictions are computed for
    the allowed target layers only)."""
    rng = np.random.default_rng(5)
    n, d = 400, 12
    z = rng.normal(size=(n, d)).astype(np.float32)
    z[:, 8:] *= 30.0
    y = np.stack([z[:, :4] @ rng.normal(size=(4, 3)) + z[:, 8:] @ rng.normal(size=(4, 3)) * s + rng.normal(size=(n, 3)) for s in (0.01, 0.1, 0.03)], 1)
    y = y.astype(np.float32)
    tr, va, te = slice(0, 250), slice(250, 320), slice(320, None)
    combos = [(0.1, 10.0), (10.0, 0.1)]
    common = dict(alphas=[0.1, 10.0, 1000.0], x_shift=torch.tensor(z[tr]).double().mean(0), y_shift=torch.tensor(y[tr]).double().mean(0),
                  matmul_dtype="float64", band_start=[4, 8])
    allowed = torch.tensor([[False, True, False], [True, False, True]])[:, None, :]  # [combinations, 1 source, 3 targets]
    masked = _fit_probe(AffineProbe(d, 3, 3, band_ratios=combos, band_allowed=allowed, **common), z, y, tr, va, te)
    for c, combo in enumerate(combos):
        alone = _fit_probe(AffineProbe(d, 3, 3, band_ratios=[combo], **common), z, y, tr, va, te)
        for t in torch.nonzero(allowed[c, 0]).flatten().tolist():
            assert masked.ratio_index[0, t].item() == c and masked.alpha[0, t] == alone.alpha[0, t]
            assert masked.results.val_r2[0, t].item() == pytest.approx(alone.results.val_r2[0, t].item(), abs=1e-9)
            assert masked.results.test_r2[t].item() == pytest.approx(alone.results.test_r2[t].item(), abs=1e-9)


@pytest.mark.parametrize("scale", [False, True])
def test_banded_probe_with_one_target_layer_and_standardised_inputs(scale):
    rng = np.random.default_rng(8)
    z = np.concatenate([rng.normal(size=(400, 5)), 50 * rng.normal(size=(400, 3))], 1).astype(np.float32)
    y = (z[:, :5] @ rng.normal(size=(5, 2)) + rng.normal(size=(400, 2)))[:, None].astype(np.float32)
    probe = AffineProbe(8, 2, 1, alphas=[1.0, 10.0], scale=scale, x_shift=torch.tensor(z[:250]).double().mean(0),
                        y_shift=torch.tensor(y[:250]).double().mean(0), band_start=5, band_ratios=[0.1, 10.0])
    _fit_probe(probe, z, y, slice(0, 250), slice(250, 320), slice(320, None))
    assert probe.results.test_r2.item() > 0.5 and probe.results.ratio.shape == (1, 1)
    if scale:  # standardised columns: the band's total variance is its width, 3 against the source's 5
        stats = RidgeStatistics(torch.tensor(z[:250]).double().mean(0), torch.zeros(2, dtype=torch.float64))
        stats.update(torch.tensor(z[:250]), torch.tensor(y[:250, 0]))
        scales = band_scales(stats, 5, probe.ratios, standardised=True)
        assert scales[0][0, 5].item() == pytest.approx((5 / 3) ** 0.5 / 0.1**0.5)



def _solver_data(d: int, seed: int = 7):
    """260 rows (160 to fit, 40 to validate, 60 to test), 2 source layers of ``d`` dimensions (a
    massive one among them), 3 target layers of 5 that the first source's first 4 dimensions drive."""
    rng = np.random.default_rng(seed)
    n, k, targets, sources = 260, 5, 3, 2
    x = rng.normal(size=(n, sources, d)).astype(np.float32)
    x[:, :, 0] += 3000.0
    y = np.stack([x[:, 0, 1:5] @ rng.normal(size=(4, k)) + rng.normal(size=(n, k)) for _ in range(targets)], 1).astype(np.float32)
    return x, y, (slice(0, 160), slice(160, 200), slice(200, None))


def _solver_probe(x, y, tr, solver, matmul_dtype="float64", banded=False, alphas=(0.1, 10.0, 1000.0)):
    d, k = x.shape[2], y.shape[2]
    kwargs = dict(n_targets=y.shape[1], n_sources=x.shape[1], alphas=list(alphas), matmul_dtype=matmul_dtype,
                  x_shift=torch.tensor(x[tr]).double().mean(0), y_shift=torch.tensor(y[tr]).double().mean(0))
    if banded:
        kwargs |= dict(band_start=2 * d // 3, band_ratios=[0.1, 1.0, 10.0])
    return AffineProbe(d, k, solver=solver, **kwargs)


@pytest.mark.parametrize("alphas", [(0.1, 10.0, 1000.0), (0.1, 1.0, 10.0, 100.0, 1000.0)], ids=["inverse", "eigh"])
@pytest.mark.parametrize("d", [90, 180, 300], ids=["rows>dims", "fit<dims<refit", "dims>rows"])
@pytest.mark.parametrize("banded", [False, True])
def test_dual_solver_gives_the_primal_numbers(banded, d, alphas, monkeypatch):
    """The dual form (predictions through the training rows; in the kernel form where the rows to fit
    are fewer than the dimensions) against the primal one, both with float64 products, over an
    alpha grid with validation (3 alphas: a Cholesky factor per alpha; 5: one eigendecomposition), several source and target layers, a massive dimension, and (banded)
    a second band with its penalty ratios: R², validation R², alphas, per-episode sums and weights
    agree to 1e-6; the weights also against scikit-learn's float64 ridge. The dual's predictions
    run in blocks of 7 output columns here (4,096 by default), so blocks end inside target layers
    and the columns of one alpha's target layers span several blocks."""
    import nsync.probes.ridge as ridge

    monkeypatch.setattr(ridge.statistics, "COLUMN_BLOCK", 7)  # where TrainingRows reads it
    x, y, (tr, va, te) = _solver_data(d)
    primal_probe = _fit_probe(_solver_probe(x, y, tr, "primal", banded=banded, alphas=alphas), x, y, tr, va, te)
    dual_probe = _fit_probe(_solver_probe(x, y, tr, "dual", banded=banded, alphas=alphas), x, y, tr, va, te)
    assert dual_probe._solution.kernel == (d > 200)  # the refit fits 200 rows
    primal, dual = primal_probe.results, dual_probe.results
    for name in ("test_r2", "test_r2_weighted", "val_r2", "alpha"):
        torch.testing.assert_close(getattr(dual, name), getattr(primal, name), atol=1e-6, rtol=0, msg=name)
    torch.testing.assert_close(dual.episode_sums["sse"], primal.episode_sums["sse"], rtol=1e-6, atol=1e-6)
    if banded:
        torch.testing.assert_close(dual.ratio, primal.ratio)
    w_dual, b_dual = dual_probe.weights(source=1, target=2)
    w_primal, b_primal = primal_probe.weights(source=1, target=2)
    torch.testing.assert_close(w_dual, w_primal, rtol=1e-6, atol=1e-8)
    torch.testing.assert_close(b_dual, b_primal, rtol=1e-6, atol=1e-6)
    if not banded:  # the refit on training plus validation rows is plain ridge at the chosen alpha
        rows = slice(0, 200)
        alpha = dual_probe.alpha[1, 2].item()
        reference = Ridge(alpha=alpha).fit(x[rows, 1].astype(np.float64), y[rows, 2].astype(np.float64))
        np.testing.assert_allclose(w_dual.numpy(), reference.coef_.T, rtol=1e-6, atol=1e-8)


@pytest.mark.parametrize("d", [90, 300], ids=["rows>dims", "dims>rows"])
def test_float32_products_are_enough_for_the_dual_solver(d, caplog):
    """Float32 products against float64 ones at the paper's alpha (0.1): the dual solver stays
    within 1e-5 in every target layer's R² at both shapes. The primal one does too where the rows
    outnumber the dimensions; with fewer rows it warns (its d x d form amplifies float32 rounding
    in X^T X's null space by 1 / alpha) and is indeed off by more than 1e-4 here."""
    x, y, (tr, va, te) = _solver_data(d)
    exact = _fit_probe(_solver_probe(x, y, tr, "dual", alphas=[0.1]), x, y, tr, va, te).results.test_r2
    dual = _fit_probe(_solver_probe(x, y, tr, "dual", "float32", alphas=[0.1]), x, y, tr, va, te).results.test_r2
    torch.testing.assert_close(dual, exact, atol=1e-5, rtol=0)
    with warnings_once_per_run(), caplog.at_level("WARNING", logger="nsync.probes"):
        primal = _fit_probe(_solver_probe(x, y, tr, "primal", "float32", alphas=[0.1]), x, y, tr, va, te).results.test_r2
    warned = any("primal ridge with" in r.getMessage() for r in caplog.records)
    assert warned == (d > 200)
    if d > 200:
        assert float((primal - exact).abs().max()) > 1e-4
    else:
        torch.testing.assert_close(primal, exact, atol=1e-5, rtol=0)


@pytest.mark.parametrize("keep_rows", [False, True], ids=["primal", "dual"])
@pytest.mark.parametrize("n", [300, 40], ids=["rows>dims", "dims>rows"])
def test_one_eigendecomposition_and_an_inverse_per_alpha_agree(n, keep_rows):
    """``decomposition="inverse"`` (a Cholesky inverse per alpha, for one or a few alphas) gives the
    eigendecomposition's predictions and weights, in the d x d and the kernel form (alpha 0, plain
    least squares, where the rows outnumber the dimensions)."""
    rng = np.random.default_rng(2)
    d = 60
    x = torch.tensor(rng.normal(size=(n + 20, d)))
    x[:, 0] += 3000.0
    y = x[:, 1:4] @ torch.tensor(rng.normal(size=(3, 4))) + torch.tensor(rng.normal(size=(n + 20, 4)))
    stats = RidgeStatistics(x[:n].mean(0), y[:n].mean(0), torch.float64, keep_rows=keep_rows)
    stats.update(x[:n], y[:n])
    alphas = [0.0, 0.1, 10.0] if n > d else [0.1, 10.0]
    eigh = RidgeSolution(stats, scale=True, decomposition="eigh")
    inverse = RidgeSolution(stats, scale=True, decomposition="inverse", alphas=alphas)
    assert eigh.kernel == inverse.kernel == (keep_rows and n < d)
    with pytest.raises(ValueError, match="factors for alphas"):
        inverse.predict(x[n:], 1.0)
    for alpha in alphas:
        torch.testing.assert_close(inverse.predict(x[n:], alpha), eigh.predict(x[n:], alpha), rtol=1e-9, atol=1e-8)
        for a, b in zip(inverse.weights(alpha), eigh.weights(alpha)):
            torch.testing.assert_close(a, b, rtol=1e-8, atol=1e-10)


def test_the_dual_solver_keeps_rows_in_blocks_and_forms_no_cross_products():
    """What bounds the dual's memory: no X^T X or X^T Y, rows in blocks of about ROW_BLOCK, and
    products with the centred targets through a rank-one correction instead of a centred copy; the
    covariance and the products equal explicit float64 ones on the centred data."""
    from nsync.probes.ridge import ROW_BLOCK, TrainingRows

    gen = torch.Generator().manual_seed(0)
    x, y = torch.randn(3000, 2, 5, generator=gen) + 50.0, torch.randn(3000, 3, generator=gen) - 20.0
    stats = RidgeStatistics(torch.zeros(2, 5), torch.zeros(3), torch.float64, keep_rows=True)
    for i in range(0, 3000, 300):
        stats.update(x[i : i + 300], y[i : i + 300])
    assert stats.sxx is None and stats.sxy is None
    assert [b.shape[0] for b in stats.y_rows] == [1200, 1200, 600] and ROW_BLOCK == 1024
    xc, yc = x.double() - x.double().mean(0), y.double() - y.double().mean(0)
    torch.testing.assert_close(stats.covariance()[1], xc[:, 1].T @ xc[:, 1])
    rows = TrainingRows(stats, torch.float64)
    h = torch.randn(4, 3000, dtype=torch.float64, generator=gen)
    torch.testing.assert_close(rows.times(h), h @ yc)
    torch.testing.assert_close(rows.times(h, torch.tensor([2])), h @ yc[:, [2]])
    torch.testing.assert_close(rows.x(1), xc[:, 1])


def test_the_solver_is_chosen_by_shape():
    from nsync.probes.ridge import choose_solver

    # more hidden dimensions than rows to fit and to predict: the dual does less arithmetic
    assert choose_solver(n_train=5200, d=4096, n_outputs=33 * 4096, n_predicted=1300, n_products=1) == "dual"
    assert choose_solver(n_train=1140, d=2112, n_outputs=31 * 576, n_predicted=460, n_products=35) == "dual"  # a partition's joint fit, SmolLM2
    assert choose_solver(n_train=5200, d=576, n_outputs=31 * 576, n_predicted=1300, n_products=1) == "primal"
    assert choose_solver(n_train=300, d=8, n_outputs=16, n_predicted=100, n_products=7) == "primal"  # the tests' tiny shapes
    # fewer rows than dimensions: the dual's kernel form, whatever the number of predictions (accuracy, and n^3 < d^3)
    assert choose_solver(n_train=800, d=4096, n_outputs=33 * 4096, n_predicted=5000, n_products=35) == "dual"
    # ... also where only the fit before validation has fewer rows than dimensions (SmolLM2's partition with the observer)
    assert choose_solver(n_train=1760, d=1152, n_outputs=31 * 576, n_predicted=1100, n_products=49) == "primal"
    assert choose_solver(n_train=1760, d=1152, n_outputs=31 * 576, n_predicted=1100, n_products=49, n_fewest=1106) == "dual"


def test_layer_r2_keeps_no_full_default_copies_and_resets_to_zeros():
    """The per-episode states' defaults are broadcast zeros (no memory); reset() still gives full
    zero states, and sums() hands out the states themselves (no copies)."""
    metric = LayerR2(n_targets=3, d_out=4, n_sources=2, n_groups=5)
    assert all(d.stride() == (0,) * d.dim() for d in metric._defaults.values())
    y = torch.randn(20, 3, 4)
    metric.update(y + 0.1, y, torch.arange(20) % 5, source=1)
    assert metric.sums()["sse"] is metric.sse and float(metric.sse[:, 1].sum()) > 0
    before = metric.sse
    metric.reset()
    assert metric.sse.shape == (5, 2, 3, 4) and metric.sse.is_contiguous() and float(metric.sse.abs().sum()) == 0
    assert float(before[:, 1].sum()) > 0  # what sums() handed out is not zeroed by reset()
    metric.update(y + 0.1, y, torch.arange(20) % 5)
    torch.testing.assert_close(metric.sse[:, 0], before[:, 1])
