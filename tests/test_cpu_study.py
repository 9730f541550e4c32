"""experiments/cpu_study/study.py end to end on a tiny model: every stage, the report, resuming."""

import json
import sys
import shutil
from pathlib import Path

import pytest
from conftest import load_script

ROOT = Path(__file__).resolve().parents[1]


def _study():
    return load_script("experiments/cpu_study/study.py", "study")


@pytest.mark.pipeline
def test_study_runs_reports_and_resumes(tmp_path, capsys, caplog):
    study = _study()
    sim = tmp_path / "simulate.yaml"
    sim.write_text("max_turns: 6\nseeds: [0, 1]\nsampling:\n  max_new_tokens: 6\ncapture:\n  observer: true\nprogress: false\n")
    args = [f"out={tmp_path / 'runs'}", f"docs={tmp_path / 'docs'}", "sotopia=/nonexistent",
            # two models, so both views (each with its one direction) and the cross-model controls run
            f"simulate_config={sim}", "pairs=[{name: tiny, models: [tiny-llama, tiny-gemma3], episodes: 12, min_train_pairs: 1000, simulate: [capture.dtype=float32], "
            "alpha_grid: [1.0, 100.0, 10000.0], fit: [data.test_size=0.3]}]",
            "split_seeds=[0]", "bootstrap=50", "controls=[main,observer,shuffled_partner,context,self]", "lags=[1]",
            "splits=[persona]", "mlp_source_layer_step=2", "partition=[observer,own_past]"]
    # what is synchronised alone first: each view's main fit (and the text-only control), no other control
    study.main(["--config", str(ROOT / "experiments" / "cpu_study" / "study.yaml"), *args, "stages=[main]"])
    assert "controls not fitted yet (observer, shuffled_partner, context, self)" in (tmp_path / "docs" / "results.md").read_text()
    record = json.loads((tmp_path / "docs" / "record.json").read_text())
    assert record["pairs"] == {} and [r["direction"] for r in record["subspace"]["tiny"]["rows"]] == ["A->B", "B->A"]
    capsys.readouterr()
    study.main(["--config", str(ROOT / "experiments" / "cpu_study" / "study.yaml"), *args])
    first = capsys.readouterr().out
    assert "] main: re-using" in first  # the answer stage re-uses the main fit of stages=[main]
    results = (tmp_path / "docs" / "results.md").read_text()
    for needle in ("### tiny", "| main |", "| context |", "| shuffled_partner |", "persona", "MLP", "fewer than the 1000 planned",
                   "By depth (mean over directions)", "Variance partition", "| own_past |", "| observer |", "Holding out personas gives", "the MLP probe gives", "its 95% interval", "interaction, persona split's size", "covers less than it says"):
        assert needle in results, needle
    # the tables carry the fits' numbers, not just their headings: the main row of the first view
    # holds its bias-corrected SyncR² and interval as results.json has them
    main_fit = json.loads((tmp_path / "runs" / "tiny" / "tiny-llama" / "controls_chosen_alpha" / "main" / "results.json").read_text())
    lo, hi = main_fit["sync_r2_ci95"]
    first_view = results.split("**tiny-llama -> tiny-gemma3**", 1)[1].split("**tiny-gemma3 -> tiny-llama**", 1)[0]
    main_row = next(line for line in first_view.splitlines() if line.startswith("| main |"))
    if main_fit["few_test_episodes"]:  # the tiny study's few test episodes: the raw value, no interval shown as if it held
        assert f"| main |   ({main_fit['sync_r2']:.3f}) |" in main_row and f"{lo:.3f}, {hi:.3f}" not in main_row, main_row
    else:
        assert f"{main_fit['sync_r2_bias_corrected']:.3f} [{lo:.3f}, {hi:.3f}] ({main_fit['sync_r2']:.3f})" in main_row, main_row
    for view, direction in (("tiny-llama -> tiny-gemma3", "A->B"), ("tiny-gemma3 -> tiny-llama", "B->A")):
        assert f"**{view}** (training pairs per direction: {direction} " in results, view
    # what is synchronised: each view's row from its main fit, who leads from the two fits paired by episode
    from nsync.analysis.leader import leader_between
    from nsync.fit import FitResult

    views = tmp_path / "runs" / "tiny"
    for model, view, direction in (("tiny-llama", "tiny-llama -> tiny-gemma3", "A->B"), ("tiny-gemma3", "tiny-gemma3 -> tiny-llama", "B->A")):
        sub = FitResult.load(views / model / "controls_chosen_alpha" / "main").subspace
        dims = "none" if sub.dimensionality is None else str(sub.dimensionality)
        assert f"| tiny | {view}, {direction} | " in results and f"| {dims}" in results.split(f"| tiny | {view}, {direction} | ", 1)[1].split("\n")[0]
    leader = leader_between(views / "tiny-llama" / "controls_chosen_alpha" / "main", views / "tiny-gemma3" / "controls_chosen_alpha" / "main")
    few = FitResult.load(views / "tiny-llama" / "controls_chosen_alpha" / "main").few_test_episodes
    assert "- **tiny** (A tiny-llama, B tiny-gemma3; A speaks first; ranks 1-" in results and leader.line(few) in results
    runs = tmp_path / "runs" / "tiny"
    assert json.loads((runs / "tiny-gemma3" / "controls_chosen_alpha" / "self" / "results.json").read_text())["models"] == \
        {"source": "tiny-gemma3", "target": "tiny-gemma3"}
    assert json.loads((runs / "cache" / "manifest.json").read_text())["dtype"] == "float32"  # the pair's own overrides
    affine_config = json.loads((runs / "tiny-llama" / "probe_affine" / "results.json").read_text())["config"]
    assert affine_config["affine"]["alphas"] == [1.0, 100.0, 10000.0] and affine_config["data"]["test_size"] == 0.3  # the pair's own
    assert "skipping" not in caplog.text  # each view asks for its one direction
    for png in ("controls.png", "layer_profile.png", "heatmap.png", "unique_profile.png", "time_course.png"):
        assert (tmp_path / "docs" / png).is_file(), png
    assert "![controls](controls.png)" in results  # the page links its figures beside it
    # a second run re-uses every fit and the cache
    study.main(["--config", str(ROOT / "experiments" / "cpu_study" / "study.yaml"), *args])
    second = capsys.readouterr().out
    assert "re-using" in second and "probe_mlp re-used" in second and "SyncR²" in first
    assert "0 episodes" in second  # nothing left to simulate
    # runs/ stays on the machine that made it; the committed record keeps the finished pair's report
    done = (tmp_path / "docs" / "results.md").read_text()
    record = json.loads((tmp_path / "docs" / "record.json").read_text())
    assert set(record["pairs"]) == {"tiny"} and set(record["pairs"]["tiny"]["timings"]) == {"tiny/simulate", "tiny/fit"}
    assert set(record["subspace"]) == {"tiny"}
    drawn = {png: (tmp_path / "docs" / png).read_bytes() for png in ("controls.png", "layer_profile.png", "heatmap.png", "unique_profile.png", "time_course.png")}
    manifest = json.loads((runs / "cache" / "manifest.json").read_text())
    shutil.rmtree(tmp_path / "runs")

    def report_kept_the_record(says: str) -> None:
        study.main(["--config", str(ROOT / "experiments" / "cpu_study" / "study.yaml"), *args, "report_only=true"])
        kept = (tmp_path / "docs" / "results.md").read_text()
        assert "From `record.json`" in kept and says in kept
        assert kept.split("### tiny\n\n", 1)[1].split("\n\n", 1)[1] == done.split("### tiny\n\n", 1)[1]  # the section as it was
        assert kept.split("\n\n")[1] == done.split("\n\n")[1] and "Wall time of the study so far" in kept  # and its stage times
        assert kept.split("### tiny")[0] == done.split("### tiny")[0]  # the same figures, drawn from the record
        assert {png: (tmp_path / "docs" / png).read_bytes() for png in drawn} == drawn
        assert json.loads((tmp_path / "docs" / "record.json").read_text())["pairs"] == record["pairs"]

    report_kept_the_record("`only=[tiny]` runs it again")
    # a new run of the pair has begun (a cache without shards yet): the last complete run stays shown
    (runs / "cache").mkdir(parents=True)
    (runs / "cache" / "manifest.json").write_text(json.dumps({**manifest, "rows": {}, "complete": False}))
    report_kept_the_record("shown until the new run under way on this machine is fitted. The new run: Simulation in progress")


def test_unknown_pair_is_a_clear_error(tmp_path):
    from nsync.errors import NsyncError

    with pytest.raises(NsyncError, match="does not define"):
        _study().main([f"out={tmp_path}", "only=[nope]", "report_only=true"])


def test_an_interrupted_stage_still_counts_its_time(tmp_path):
    study = _study()
    s = study.Study(study.StudyConfig(out=str(tmp_path)))

    def killed():
        raise SystemExit(143)  # what SIGTERM becomes in the study script

    with pytest.raises(SystemExit):
        s._timed("tiny/simulate", killed)
    assert s._timed("tiny/simulate", lambda: 7) == 7
    assert json.loads((tmp_path / "timings.json").read_text())["tiny/simulate"] > 0
    other = study.Study(study.StudyConfig(out=str(tmp_path)))  # a second study process beside the first
    other._timed("tiny/fit", lambda: None)
    s._timed("tiny/simulate", lambda: None)
    assert set(json.loads((tmp_path / "timings.json").read_text())) == {"tiny/simulate", "tiny/fit"}


def test_the_report_says_when_a_raw_value_falls_outside_its_interval():
    report = _study().Report
    rows = [("main (chosen alpha)", 0.30, 0.31, 0.40), ("observer (chosen alpha)", 0.20, 0.10, 0.30), ("self (paper alpha)", 0.2, None, None)]
    assert report.coverage_check(rows).startswith("Raw SyncR² outside its interval (1 of 2): main (chosen alpha) (0.300 outside [0.310, 0.400]). ")
    assert report.coverage_check(rows[1:]) == "Each of the 1 raw SyncR² values lies inside its 95% interval."


def test_a_running_stage_writes_its_time_before_it_ends(tmp_path, monkeypatch):
    """A SIGKILL cannot be caught, so the stage's time so far must already be on disk."""
    import time

    study = _study()
    monkeypatch.setattr(sys.modules["study_stages"], "TIMING_FLUSH_S", 0.05)  # the stages module beside study.py
    s = study.Study(study.StudyConfig(out=str(tmp_path)))
    (tmp_path / "timings.json").write_text(json.dumps({"tiny/simulate": 100.0}))  # an earlier session's time

    def long_stage():
        time.sleep(0.5)
        return json.loads((tmp_path / "timings.json").read_text())["tiny/simulate"]

    during = s._timed("tiny/simulate", long_stage)
    after = json.loads((tmp_path / "timings.json").read_text())["tiny/simulate"]
    assert 100.0 < during < after < 101.0


def test_the_partition_table_gives_each_direction_its_own_interval(tmp_path):
    """A self pair's view fits both directions at once: its partition table has the pooled row
    and one row per direction with that direction's own interval, and the header each direction's
    SyncR² with its interval, as results.json holds them."""
    from nsync.config import load_config
    from nsync.testing.synthetic import write_synthetic_cache
    from nsync.fit import FitConfig, run_fit

    study = _study()
    cache = write_synthetic_cache(tmp_path / "c", "linear", n_episodes=40, turns=6, hidden=4, n_layers=1, observer_share=0.5)
    res = run_fit(load_config(FitConfig, [f"out={tmp_path / 'view' / 'partition'}", f"data.cache={cache}", "logger.kind=none", "progress=false",
                                          "save_weights=false", "data.directions=[A->B,B->A]", "bootstrap=100", "data.test_size=0.3",
                                          "partition.baselines=[observer]", "surrogates.n=0", "affine.alphas=[1,100]"], prog="test"))
    table = "\n".join(study.Report(study.StudyConfig(out=str(tmp_path)), {})._partition_table(tmp_path / "view"))
    for direction, d in res.directions.items():
        p = d.partition["observer"]
        lo, hi = p.ci95["unique"]
        assert f"| observer, {direction} | {p.values['unique']:.3f} [{lo:.3f}, {hi:.3f}] |" in table, (direction, table)
        lo, hi = d.sync_r2_ci95
        assert f"{direction} {d.sync_r2_bias_corrected:.3f} [{lo:.3f}, {hi:.3f}] ({d.sync_r2:.3f})" in table, (direction, table)
    lo, hi = res.partition["observer"].ci95["unique"]
    assert f"| observer | {res.partition['observer'].values['unique']:.3f} [{lo:.3f}, {hi:.3f}] |" in table
    assert res.directions["A->B"].partition["observer"].ci95 != res.directions["B->A"].partition["observer"].ci95
