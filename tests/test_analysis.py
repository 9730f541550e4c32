"""Synchrony vs social performance across pairs and episodes, and the report page."""


from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from nsync.analysis.performance import AnalysisConfig, analyse, correlations, partial_correlation
from nsync.analysis.report import main as report_main
from nsync.config import load_config
from nsync.testing.synthetic import write_synthetic_cache
from nsync.fit import FitConfig, FitResult, run_fit
from nsync.judge.rubric import DIMENSION_NAMES


def test_correlations_match_numpy_and_ranks():
    rng = np.random.default_rng(0)
    x = rng.normal(size=30)
    y = x + 0.7 * rng.normal(size=30)
    c = correlations(x, y, n_boot=300)
    assert c["pearson"] == pytest.approx(np.corrcoef(x, y)[0, 1])
    ranks = lambda a: np.argsort(np.argsort(a))
    assert c["spearman"] == pytest.approx(np.corrcoef(ranks(x), ranks(y))[0, 1])
    lo, hi = c["pearson_ci95"]
    assert lo < c["pearson"] < hi and 0 < c["pearson_p"] < 0.05
    assert correlations([1, 2], [3, 4])["pearson"] is None  # too few points: said, not faked


def test_partial_correlation_matches_the_textbook_formula():
    rng = np.random.default_rng(1)
    z = rng.normal(size=40)
    x = z + rng.normal(size=40)
    y = z + 0.5 * x + rng.normal(size=40)
    r = lambda a, b: np.corrcoef(a, b)[0, 1]
    expected = (r(x, y) - r(x, z) * r(y, z)) / np.sqrt((1 - r(x, z) ** 2) * (1 - r(y, z) ** 2))
    assert partial_correlation(x, y, z)["r"] == pytest.approx(expected)


@pytest.fixture(scope="module")
def pairs(tmp_path_factory):
    """Four model pairs with planted synchrony 0.2..0.8 and judge scores that rise with it."""
    root = tmp_path_factory.mktemp("pairs")
    fits = []
    for i, scale in enumerate([0.5, 0.8, 1.2, 2.0]):
        model = f"m{i}"
        cache = write_synthetic_cache(root / f"cache{i}", "linear", n_episodes=30, turns=6, hidden=4, n_layers=1, scale=scale, model=model, seed=i)
        cfg = load_config(FitConfig, [f"out={root / f'fit{i}'}", f"data.cache={cache}", "logger.kind=none", "progress=false",
                                      "data.split_seeds=[0]", "bootstrap=100"], prog="test")
        run_fit(cfg)
        turns = pd.read_parquet(next((cache / "shards").glob("*/turns.parquet")))
        rows = []
        for run_id, g in turns.groupby("run_id"):
            for agent in (0, 1):
                scores = {d: 1.0 for d in DIMENSION_NAMES}
                row = dict(run_id=run_id, episode_id=g.episode_id.iloc[0], agent=agent, model=model, status="ok", **scores, overall=2.0 * scale)
                rows.append(row)
        rows[0] |= {"status": "failed", "overall": None}
        (cache / "judge" / "j").mkdir(parents=True)
        pd.DataFrame(rows).to_csv(cache / "judge" / "j" / "scores.csv", index=False)
        fits.append(str(root / f"fit{i}"))
    return root, fits


@pytest.mark.pipeline
def test_analysis_across_pairs_and_episodes(pairs, tmp_path):
    root, fits = pairs
    cov = tmp_path / "cov.csv"
    pd.DataFrame({"model": ["m0", "m1", "m2", "m3"], "ifeval": [1.0, 3.0, 2.0, 5.0]}).to_csv(cov, index=False)
    cfg = load_config(AnalysisConfig, [f"fits=[{','.join(fits)}]", "judge=j", f"out={tmp_path / 'a'}", f"covariates={cov}",
                                       "covariate=ifeval", "bootstrap=200"], prog="test")
    result = analyse(cfg)
    table = pd.read_csv(tmp_path / "a" / "pairs.csv")
    assert list(table.sync_r2) == sorted(table.sync_r2)  # the planted order
    assert table.runs_failed.tolist() == [1, 1, 1, 1]
    assert result["across_pairs"]["spearman"] == pytest.approx(1.0)
    # each pair's SyncR² is its fit's, its social score the judge's mean overall over the runs that did not fail
    for fit, row in zip(fits, table.itertuples(), strict=True):
        assert row.sync_r2 == pytest.approx(FitResult.load(fit).sync_r2)
        scores = pd.read_csv(Path(fit).parent / f"cache{fits.index(fit)}" / "judge" / "j" / "scores.csv")
        assert row.social == pytest.approx(scores.loc[scores.status == "ok", "overall"].mean())
    # the partial correlation against the textbook formula on the same three columns (a pair's covariate: its model's)
    z = np.array([1.0, 3.0, 2.0, 5.0])
    r = lambda a, b: np.corrcoef(a, b)[0, 1]
    x, y = table.sync_r2.to_numpy(), table.social.to_numpy()
    expected = (r(x, y) - r(x, z) * r(y, z)) / np.sqrt((1 - r(x, z) ** 2) * (1 - r(y, z) ** 2))
    assert result["partial"]["covariate"] == "ifeval" and result["partial"]["r"] == pytest.approx(expected)
    assert result["across_episodes"]["n"] > 10
    for f in ("analysis.json", "sync_vs_social.png", "r2_by_layer_pairs.png", "episodes_sync_vs_social.png", "episodes.csv"):
        assert (tmp_path / "a" / f).exists()


def test_report_html_and_markdown(pairs, tmp_path):
    root, fits = pairs
    cfg = load_config(AnalysisConfig, [f"fits=[{fits[0]},{fits[1]},{fits[2]}]", "judge=j", f"out={tmp_path / 'a'}", "bootstrap=50"], prog="test")
    analyse(cfg)
    out = tmp_path / "r.html"
    report_main([fits[0], str(tmp_path / "a"), str(root / "cache0" / "judge" / "j"), "--out", str(out)])
    page = out.read_text()
    assert page.count("data:image/png;base64,") >= 4 and "Synchrony and social performance" in page and "Judge scores" in page
    md = tmp_path / "r.md"
    report_main([fits[0], "--out", str(md)])
    assert "![r2_by_layer.png]" in md.read_text() and (tmp_path / "r_files").is_dir()


def test_report_rejects_unknown_folder(tmp_path):
    from nsync.errors import NsyncError

    with pytest.raises(NsyncError, match="not a fit"):
        report_main([str(tmp_path)])
