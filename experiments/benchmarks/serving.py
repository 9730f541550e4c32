"""Generation on a serving engine plus capture by re-reading, against nsync's own loop.

In one run, on the same episodes and settings (default: the paper's, 16 built-in episodes of 16
utterances, first line, temperature 0.7, 16 in flight, observer on, at most 60 new tokens, states
read in float32), for each prompt format in ``--formats``:

  hf        nsync's own batched loop, states captured inside generation (today's engine)
  llamacpp  llama.cpp's server (llama-cpp-python, the bundled SmolLM2 GGUF) generates the text,
            nsync re-reads every finished run's prompts (capture.mode=reread)

end to end (generation plus capture plus cache writes, the simulation loop's time as nsync.simulate
reports it; model loading apart) in utterances/s, with the re-reading's share.
Then, on the llama.cpp cache of the last format, the capture alone: single-pass re-reading (an
agent's prompts that extend each other in one pass) against a pass per prompt (re-using the previous
prompt's prefix), timed on the same prompts, their states compared. With ``--greedy-episodes N``, both
engines also decode N episodes greedily and the share of identical replies is printed (the GGUF is
4-bit: llama.cpp computes with the quantised weights, transformers with their dequantised values).

    python experiments/benchmarks/serving.py                                 # sotopia and chat, 16 x 16
    python experiments/benchmarks/serving.py --episodes 4 --turns 4 --formats chat
    python experiments/benchmarks/serving.py --server-python /path/to/venv/bin/python

The server runs as its own process (``--server-python``: a Python with ``llama-cpp-python[server]``,
default this one) with as many threads as this machine has cores; it idles while nsync re-reads.
"""

from __future__ import annotations

import argparse
import json
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

import numpy as np

MODEL = "smollm2-135m"


def gguf_path() -> Path:
    """The bundled SmolLM2 GGUF, found as nsync's model zoo finds it."""
    from nsync.models import resolve_model

    return Path(resolve_model(MODEL).path)


class LlamaServer:
    """``python -m llama_cpp.server`` on a free local port, serving the bundled SmolLM2 GGUF."""

    def __init__(self, python: str, threads: int, n_ctx: int = 8192, cache: bool = False):
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            port = s.getsockname()[1]
        self.url = f"http://127.0.0.1:{port}/v1"
        cmd = [python, "-m", "llama_cpp.server", "--model", str(gguf_path()), "--model_alias", MODEL, "--host", "127.0.0.1",
               "--port", str(port), "--n_ctx", str(n_ctx), "--interrupt_requests", "False", "--n_threads", str(threads), "--n_threads_batch", str(threads)]
        if cache:  # keep past prompts' states in RAM: a run's next prompt re-uses the longest stored prefix
            cmd += ["--cache", "True", "--cache_type", "ram"]
        self.log = tempfile.NamedTemporaryFile("w+", suffix=".log", delete=False)
        self.proc = subprocess.Popen(cmd, stdout=self.log, stderr=subprocess.STDOUT)
        deadline = time.time() + 120
        while time.time() < deadline:
            if self.proc.poll() is not None:
                raise SystemExit(f"llama.cpp's server exited ({self.proc.returncode}); its log: {self.log.name}")
            try:
                urllib.request.urlopen(f"{self.url}/models", timeout=2).read()
                return
            except OSError:
                time.sleep(0.5)
        raise SystemExit(f"llama.cpp's server did not answer within 120 s; its log: {self.log.name}")

    def close(self) -> None:
        self.proc.terminate()
        self.proc.wait(timeout=30)


def simulate(out: Path, args: argparse.Namespace, fmt: str, episodes: int, turns: int, extra: list[str]):
    from nsync.cache import ActivationCache
    from nsync.config import load_config
    from nsync.simulation.config import SimulateConfig
    from nsync.simulation.run import simulate as run

    argv = [f"out={out}", f"models=[{MODEL}]", f"prompt_format={fmt}", f"max_turns={turns}", f"scenarios.limit={episodes}",
            f"sampling.max_new_tokens={args.max_new_tokens}", "sampling.no_repeat_ngram=0", "episodes_in_flight=16",
            "capture.observer=true", "dtype=float32", "progress=false", *extra]
    start = time.perf_counter()
    _, stats = run(load_config(SimulateConfig, argv, prog="bench"))
    seconds = time.perf_counter() - start  # the whole call: model load, generation, capture, writes
    return ActivationCache.open(out), stats, seconds


def replies(cache) -> list[str]:
    t = cache.turns
    return t[t.condition == "interactive"].sort_values(["run_id", "utterance"])["text"].tolist()


def capture_alone(cache, fmt: str) -> dict:
    """Re-read every row's prompt of ``cache`` both ways; times and the largest state difference."""
    from nsync.config import load_config
    from nsync.models import load_model
    from nsync.models.zoo import ModelConfig
    from nsync.scenarios import load_scenarios
    from nsync.simulation.capture import plan_readings, read_states
    from nsync.simulation.config import SimulateConfig
    from nsync.simulation.engine import Run, Simulator
    from nsync.simulation.prompts import conversations

    lm = load_model(ModelConfig(name=MODEL, dtype="float32"))
    cfg = load_config(SimulateConfig, ["out=unused", f"models=[{MODEL}]", f"prompt_format={fmt}", "progress=false"], prog="bench")
    sim = Simulator(cfg, {MODEL: lm}, None)
    episodes = {e.id: e for e in load_scenarios("builtin").episodes}
    prompts, groups = [], []
    for run_id, rows, history in conversations(cache.turns):
        run = Run(run_id, episodes[rows.iloc[0].episode_id], (MODEL, MODEL), 0, 0)
        for k, u in enumerate(history):
            for observer in (False, True):
                prompts.append(sim.prompt(MODEL, run, u.agent, history[:k], observer))
                groups.append((run_id, u.agent, observer))
    out = {"utterances": len(prompts) // 2, "prompts": len(prompts), "prompt_tokens": sum(map(len, prompts)),
           "passes_single": len(plan_readings(prompts, groups))}
    states = {}
    for single in (True, False):
        start = time.perf_counter()
        states[single] = read_states(sim.generators[MODEL], prompts, groups, single_pass=single)
        out["seconds_single" if single else "seconds_per_prompt"] = time.perf_counter() - start
    out["max_abs_diff"] = float((states[True] - states[False]).abs().max())
    out["max_abs_state"] = float(states[True].abs().max())
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--episodes", type=int, default=16)
    parser.add_argument("--turns", type=int, default=16)
    parser.add_argument("--max-new-tokens", type=int, default=60)
    parser.add_argument("--formats", default="sotopia,chat")
    parser.add_argument("--greedy-episodes", type=int, default=4, help="episodes decoded greedily by both engines (0: none)")
    parser.add_argument("--server-python", default=sys.executable, help="a Python with llama-cpp-python[server]")
    parser.add_argument("--threads", type=int, default=None, help="llama.cpp threads (default: the cores this process may use)")
    parser.add_argument("--llama-cache", action="store_true", help="start the server with its RAM prompt cache (--cache True)")
    parser.add_argument("--json", help="also write the figures to this file")
    args = parser.parse_args()
    import os

    threads = args.threads or len(os.sched_getaffinity(0))
    server = LlamaServer(args.server_python, threads, cache=args.llama_cache)
    served = ["generation.backend=openai", f"generation.base_url={server.url}", "generation.prompt_as=text"]
    figures: dict = {"threads": threads, "llama_cache": args.llama_cache}
    work = Path(tempfile.mkdtemp(prefix="nsync-serving-"))
    try:
        for fmt in args.formats.split(","):
            for engine, extra in (("hf", []), ("llamacpp", served)):
                cache, stats, seconds = simulate(work / f"{fmt}-{engine}", args, fmt, args.episodes, args.turns, extra)
                r = {"utterances": stats.utterances, "seconds": seconds, "simulation_seconds": stats.seconds,
                     "capture_seconds": stats.capture_seconds, "utterances_per_s": stats.utterances / stats.seconds,
                     "new_tokens": stats.new_tokens, "prompt_tokens": stats.prompt_tokens}
                figures[f"{fmt}/{engine}"] = r
                print(f"{fmt:>8} {engine:>8}: {r['utterances']} utterances in {stats.seconds:6.1f} s = {r['utterances_per_s']:.2f} utterances/s end to end "
                      f"(re-reading {stats.capture_seconds:.1f} s of it, {stats.new_tokens} tokens generated; {seconds:.1f} s with model loading)", flush=True)
            speed = figures[f"{fmt}/llamacpp"]["utterances_per_s"] / figures[f"{fmt}/hf"]["utterances_per_s"]
            figures[f"{fmt}/speedup"] = speed
            print(f"{fmt:>8}: llama.cpp + re-reading vs nsync's loop: {speed:.2f}x", flush=True)
        if args.greedy_episodes:
            same = []
            for fmt in args.formats.split(","):
                texts = [replies(simulate(work / f"greedy-{fmt}-{e}", args, fmt, args.greedy_episodes, 8, ["sampling.temperature=0", *x])[0])
                         for e, x in (("hf", []), ("llamacpp", served))]
                # replies compared until a conversation's first difference (after it, the histories differ)
                n = min(len(texts[0]), len(texts[1]))
                same.append(float(np.mean([a == b for a, b in zip(texts[0][:n], texts[1][:n], strict=True)])))
                figures[f"{fmt}/greedy_identical_replies"] = same[-1]
                print(f"{fmt:>8}: greedy replies identical between the engines: {same[-1]:.0%} of {n}", flush=True)
        last = args.formats.split(",")[-1]
        from nsync.cache import ActivationCache

        alone = capture_alone(ActivationCache.open(work / f"{last}-llamacpp"), last)
        figures[f"{last}/capture_alone"] = alone
        print(f"capture alone ({last}, {alone['utterances']} utterances, {alone['prompts']} prompts with the observer's, "
              f"{alone['passes_single']} single passes): single-pass {alone['seconds_single']:.1f} s "
              f"({1000 * alone['seconds_single'] / alone['utterances']:.0f} ms/utterance), a pass per prompt {alone['seconds_per_prompt']:.1f} s "
              f"({1000 * alone['seconds_per_prompt'] / alone['utterances']:.0f} ms/utterance); max |difference| {alone['max_abs_diff']:.2e} "
              f"of states up to {alone['max_abs_state']:.0f}", flush=True)
    finally:
        server.close()
    if args.json:
        Path(args.json).write_text(json.dumps(figures, indent=1))
    print(f"caches in {work}" + (f"; figures in {args.json}" if args.json else ""))


if __name__ == "__main__":
    main()
