"""Time loading a bundled model from a cold cache (GGUF dequantisation + conversion) and from
the converted safetensors copy, and check that both give identical logits.

    python experiments/benchmarks/model_load.py --model smollm2-135m
"""

from __future__ import annotations

import argparse
import os
import tempfile
import time

import torch


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--model", default="smollm2-135m")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as home:
        os.environ["NSYNC_HOME"] = home  # a cold cache
        from nsync.models import load_model

        t0 = time.perf_counter()
        cold = load_model(args.model)
        t_cold = time.perf_counter() - t0
        ids = cold.tokenizer("Hello, how are you today?", return_tensors="pt")["input_ids"]
        with torch.inference_mode():
            ref = cold.model(ids).logits
        del cold
        t0 = time.perf_counter()
        warm = load_model(args.model)
        t_warm = time.perf_counter() - t0
        with torch.inference_mode():
            diff = (warm.model(ids).logits - ref).abs().max().item()
    print(f"{args.model}: cold load (dequantise + convert) {t_cold:.1f} s, converted load {t_warm:.1f} s, "
          f"max |logit diff| {diff:.2e}")


if __name__ == "__main__":
    main()
