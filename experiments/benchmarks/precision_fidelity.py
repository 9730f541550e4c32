"""bfloat16 against float32: the same prompts, every layer's state at the last prompt token.

    python experiments/benchmarks/precision_fidelity.py --model smollm2-135m --prompts 8

Prompts are the first speaking prompts of built-in episodes (``sotopia`` format, the model's
chat template). Per layer: the relative error ``|s_bf16 - s_fp32| / |s_fp32|`` and the cosine
similarity, mean over prompts; also the time of each precision's forward passes on this machine.
"""

from __future__ import annotations

import argparse
import time

import torch

from nsync.models import load_model
from nsync.models.zoo import ModelConfig
from nsync.scenarios import load_scenarios
from nsync.simulation.generation import prompt_states
from nsync.simulation.prompts import encode, prompt_format, render


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", default="smollm2-135m")
    p.add_argument("--prompts", type=int, default=8)
    args = p.parse_args()
    episodes = load_scenarios("builtin").select(limit=args.prompts)
    states, seconds = {}, {}
    for dtype in ("float32", "bfloat16"):
        lm = load_model(ModelConfig(name=args.model, dtype=dtype))
        fmt = prompt_format(lm, "sotopia")
        prompts = [encode(lm, render(lm.tokenizer, fmt, ep, 0, [])) for ep in episodes]
        start = time.perf_counter()
        states[dtype] = torch.cat([prompt_states(lm, [q]) for q in prompts]).double()
        seconds[dtype] = time.perf_counter() - start
    ref, low = states["float32"], states["bfloat16"]
    rel = ((low - ref).norm(dim=-1) / ref.norm(dim=-1).clamp(min=1e-12)).mean(0)
    cos = torch.nn.functional.cosine_similarity(low, ref, dim=-1).mean(0)
    print(f"{args.model}, {len(episodes)} prompts of about {sum(len(q) for q in prompts) // len(prompts)} tokens")
    print("layer  relative error  cosine")
    for i, (r, c) in enumerate(zip(rel.tolist(), cos.tolist())):
        print(f"{i:5d}  {r:14.4f}  {c:.5f}")
    print(f"mean relative error {rel[1:].mean():.4f} over the blocks, worst {rel.max():.4f} (layer {int(rel.argmax())}); "
          f"forward passes: float32 {seconds['float32']:.1f} s, bfloat16 {seconds['bfloat16']:.1f} s")


if __name__ == "__main__":
    main()
