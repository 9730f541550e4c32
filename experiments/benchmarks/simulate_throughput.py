"""Simulation throughput: batched vs one at a time, capture overhead, prefix (KV) reuse gain.

Each setting runs in its own process (so peak memory is per setting) on the same episodes:

    python experiments/benchmarks/simulate_throughput.py --model smollm2-135m --episodes 16 --turns 4
    python experiments/benchmarks/simulate_throughput.py --prompt-format chat --settings batched,no_reuse
    python experiments/benchmarks/simulate_throughput.py --preset paper
    python experiments/benchmarks/simulate_throughput.py --preset paper --device cuda

``--preset paper`` is the paper's setting (16 built-in episodes, 16 utterances, first line,
temperature 0.7, 16 in flight, observer on, at most 60 new tokens) in the first version's default
precision (float32) and in ``dtype=auto`` (bfloat16 where the hardware has it), side by side.

Settings (all sample the same transcripts, since every utterance has its own random stream):
  batched      episodes_in_flight=N, hidden-state capture on, prefix re-use on
  sequential   episodes_in_flight=1, otherwise the same
  no_capture   batched without any hidden-state capture (plain generation)
  no_reuse     batched, every prompt recomputed from scratch
  observer     batched plus the observer control's extra forward pass
  float32      the paper preset's first setting: float32, observer on
  auto         the same with dtype=auto
"""

from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import tempfile
import time

SETTINGS = {
    "batched": {},
    "sequential": {"episodes_in_flight": 1},
    "no_capture": {"_capture": False},
    "no_reuse": {"reuse_prefix": False},
    "observer": {"capture.observer": True},
    "float32": {"capture.observer": True, "dtype": "float32"},
    "auto": {"capture.observer": True, "dtype": "auto"},
}
PRESETS = {"paper": dict(episodes=16, turns=16, max_new_tokens=60, settings="float32,auto")}


def run_one(args: argparse.Namespace, setting: str) -> dict:
    from nsync.config import load_config
    from nsync.models import load_model
    from nsync.models.zoo import ModelConfig
    from nsync.scenarios import load_scenarios
    from nsync.simulation.config import SimulateConfig
    from nsync.simulation.engine import Simulator, plan_runs

    overrides = dict(SETTINGS[setting])
    capture = overrides.pop("_capture", True)
    argv = [
        "out=unused",
        f"models=[{args.model}]",
        f"max_turns={args.turns}",
        f"sampling.max_new_tokens={args.max_new_tokens}",
        f"episodes_in_flight={args.episodes}",
        "capture.observer=false",
        f"prompt_format={args.prompt_format}",
        "progress=false",
        f"device={args.device}",
    ] + [f"{k}={v}" for k, v in overrides.items()]
    cfg = load_config(SimulateConfig, argv, prog="bench")
    lm = load_model(ModelConfig(name=args.model, dtype=cfg.dtype, device=cfg.device))
    episodes = load_scenarios("builtin").select(limit=args.episodes)
    runs = plan_runs(cfg, episodes)
    sim = Simulator(cfg, {args.model: lm}, writer=None, capture=capture)
    start = time.perf_counter()
    stats = sim.run(runs)
    seconds = time.perf_counter() - start
    store = sim.generators[args.model].prefixes
    texts = [[u.text for u in r.history] for r in runs]
    return {
        "setting": setting,
        **stats.as_dict(),
        "seconds": seconds,
        "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
        "reused_prompt_tokens": store.reused_tokens if store and cfg.reuse_prefix else 0,
        "computed_prompt_tokens": store.computed_tokens if store and cfg.reuse_prefix else stats.prompt_tokens,
        "texts": texts,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default="smollm2-135m")
    parser.add_argument("--episodes", type=int, default=16)
    parser.add_argument("--turns", type=int, default=4)
    parser.add_argument("--max-new-tokens", type=int, default=48)
    parser.add_argument("--settings", default=",".join(SETTINGS))
    parser.add_argument("--prompt-format", default="sotopia", help="sotopia, chat or transcript")
    parser.add_argument("--device", default="cpu", help="cpu, cuda, cuda:N (the model and every pass run there)")
    parser.add_argument("--one", help=argparse.SUPPRESS)
    parser.add_argument("--json", help="also write the figures to this file")
    parser.add_argument("--preset", choices=sorted(PRESETS), help="a named setting (overrides episodes, turns, tokens, settings)")
    args = parser.parse_args()
    for key, value in PRESETS.get(args.preset, {}).items():
        setattr(args, key, value)
    if args.one:
        print(json.dumps(run_one(args, args.one)))
        return
    results = {}
    for setting in args.settings.split(","):
        cmd = [sys.executable, __file__, "--one", setting, "--model", args.model, "--episodes", str(args.episodes),
               "--turns", str(args.turns), "--max-new-tokens", str(args.max_new_tokens), "--prompt-format", args.prompt_format, "--device", args.device]
        out = subprocess.run(cmd, capture_output=True, text=True, check=True, cwd=tempfile.gettempdir())
        results[setting] = json.loads(out.stdout.strip().splitlines()[-1])
        r = results[setting]
        print(f"{setting:>11}: {r['episodes_per_min']:6.2f} episodes/min  {r['utterances_per_s']:5.2f} utterances/s  {r['tokens_per_s']:6.1f} tokens/s  "
              f"{r['seconds']:6.1f} s  peak RSS {r['peak_rss_mb']:6.0f} MB  prompt tokens computed "
              f"{r['computed_prompt_tokens']}, re-used {r['reused_prompt_tokens']}", flush=True)
    if "float32" in results and "auto" in results:
        speed = results["auto"]["utterances_per_s"] / results["float32"]["utterances_per_s"]
        print(f"dtype=auto vs float32: {speed:.2f}x utterances/s")
    base = results.get("batched")
    if base:
        def ratio(name: str, inverse: bool = False) -> str:
            if name not in results:
                return "n/a"
            return f"{base['seconds'] / results[name]['seconds']:.2f}x" if not inverse else f"{results[name]['seconds'] / base['seconds']:.2f}x"

        print(f"batched vs sequential speed-up: {ratio('sequential', inverse=True)}")
        if "no_capture" in results:
            print(f"capture overhead: {100 * (base['seconds'] / results['no_capture']['seconds'] - 1):+.1f}% time")
        print(f"prefix re-use speed-up: {ratio('no_reuse', inverse=True)}")
        if "observer" in results:
            print(f"observer control costs: {100 * (results['observer']['seconds'] / base['seconds'] - 1):+.1f}% time")
        same = all(results[s]["texts"] == base["texts"] for s in results)
        print(f"identical transcripts across settings: {same}")
    if args.json:
        with open(args.json, "w") as fh:
            json.dump({k: {kk: vv for kk, vv in v.items() if kk != "texts"} for k, v in results.items()}, fh, indent=1)


if __name__ == "__main__":
    main()
