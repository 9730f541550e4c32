"""The paper pipeline script end to end with tiny models: simulate, judge, fit, analysis, report."""

import json

import pytest
from conftest import load_script


def _pipeline():
    return load_script("experiments/paper/pipeline.py", "pipeline")


@pytest.mark.pipeline
def test_pipeline_runs_every_step_and_resumes(tmp_path, capsys):
    out = tmp_path / "paper"
    args = [
        f"out={out}", "pairs=[[tiny-llama],[tiny-llama,tiny-qwen2],[tiny-llama@untrained]]",
        "simulate=[max_turns=6,scenarios.limit=6,sampling.max_new_tokens=6,capture.observer=false,progress=false]",
        "judge_config=null", "judge=[backend=local,model=tiny-llama,progress=false]",
        "fit_config=null", "fit=['data.split_seeds=[0]',logger.kind=none,progress=false,bootstrap=50]",
    ]
    _pipeline().main(args)
    analysis = json.loads((out / "analysis" / "analysis.json").read_text())
    assert [p["pair"] for p in analysis["pairs"]] == ["tiny-llama x tiny-llama", "tiny-llama x tiny-qwen2",
                                                      "tiny-llama@untrained x tiny-llama@untrained"]
    assert analysis["across_pairs"]["n"] == 3
    # a pair's SyncR² is the mean of its fits (a two-model pair: both ordered fits), as results.json holds them
    from nsync.fit import FitResult

    fits = {"tiny-llama x tiny-qwen2": [out / "tiny-llama__tiny-qwen2" / f"fit_{m}" for m in ("tiny-llama", "tiny-qwen2")]}
    pair = next(p for p in analysis["pairs"] if p["pair"] == "tiny-llama x tiny-qwen2")
    assert pair["sync_r2"] == pytest.approx(sum(FitResult.load(f).sync_r2 for f in fits[pair["pair"]]) / 2)
    assert (out / "tiny-llama__tiny-qwen2" / "fit_tiny-qwen2" / "results.json").exists()  # both ordered fits of a two-model pair
    page = (out / "report.html").read_text()
    assert "Synchrony and social performance" in page and "Judge scores" in page
    capsys.readouterr()
    _pipeline().main(args)  # everything is re-used
    assert capsys.readouterr().out.count("re-using") == 4
