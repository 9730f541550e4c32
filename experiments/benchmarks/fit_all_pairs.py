"""All layer pairs at once vs one (source, target) pair at a time, on the same data.

    python experiments/benchmarks/fit_all_pairs.py --layers 31 --hidden 576 --n 6500 --sources 4

Synthetic states shaped like SmolLM2-135M's (31 layers incl. embeddings, hidden 576, one
"massive" dimension) and the paper's ~6,500 pairs (80/20). Both methods fit the first
``--sources`` source layers to all target layers (the time per source layer is the same for
every layer, so the full L x L figure is the per-layer time times L):

- naive: the paper scripts' way, per pair its own X^T X, X^T Y and solve (float64, centred), then
  predictions and scikit-learn's r2_score in a Python loop;
- nsync: AffineProbe through a Lightning Trainer, as ``nsync.fit`` runs it: streamed float64
  sums, one eigendecomposition per source layer for all targets, torchmetrics R² in float64.

Also reported: the machine's float32 GEMM rate and the time the X^T Y products alone take at
that rate (the floor for this computation).
"""

from __future__ import annotations

import argparse
import time

import numpy as np
import torch
from sklearn.metrics import r2_score


def make_data(layers: int, hidden: int, n: int, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    latent = torch.randn(n, hidden, generator=g)
    x = torch.stack([latent @ torch.randn(hidden, hidden, generator=g) / hidden**0.5 + 0.5 * torch.randn(n, hidden, generator=g) for _ in range(layers)], 1)
    y = torch.stack([latent @ torch.randn(hidden, hidden, generator=g) / hidden**0.5 + torch.randn(n, hidden, generator=g) for _ in range(layers)], 1)
    x[..., 0] += 3000.0
    y[..., 0] += 3000.0
    return x, y


def naive(x, y, tr, te, sources, alpha):
    r2 = np.zeros((sources, y.shape[1]))
    for s in range(sources):
        for t in range(y.shape[1]):
            xs, ys = x[tr, s].double(), y[tr, t].double()
            mx, my = xs.mean(0), ys.mean(0)
            xc, yc = xs - mx, ys - my
            w = torch.linalg.solve(xc.T @ xc + alpha * torch.eye(xc.shape[1], dtype=torch.float64), xc.T @ yc)
            pred = (x[te, s].double() - mx) @ w + my
            r2[s, t] = r2_score(y[te, t].numpy(), pred.numpy())
    return r2


def nsync_lightning(x, y, tr, te, sources, alpha):
    import logging
    import warnings

    import lightning as L
    from torch.utils.data import DataLoader, TensorDataset

    from nsync.probes import AffineProbe

    logging.getLogger("lightning.pytorch").setLevel(logging.WARNING)
    warnings.filterwarnings("ignore")
    n_t, d = y.shape[1], y.shape[2]
    y_shift = y[tr].double().mean(0)
    r2 = np.zeros((sources, n_t))
    for s in range(sources):
        probe = AffineProbe(x.shape[2], d, n_t, alphas=[alpha], x_shift=x[tr, s].double().mean(0), y_shift=y_shift)
        trainer = L.Trainer(max_epochs=1, logger=False, enable_checkpointing=False, enable_progress_bar=False,
                            enable_model_summary=False, num_sanity_val_steps=0)
        trainer.fit(probe, DataLoader(TensorDataset(x[tr, s], y[tr]), batch_size=2048))
        trainer.test(probe, DataLoader(TensorDataset(x[te, s], y[te]), batch_size=2048), verbose=False)
        r2[s] = probe.results["test_r2"].numpy()
    return r2


def gemm_gflops(size: int = 2048, reps: int = 5) -> float:
    a = torch.randn(size, size)
    a @ a
    t = time.perf_counter()
    for _ in range(reps):
        a @ a
    return 2 * size**3 * reps / (time.perf_counter() - t) / 1e9


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--layers", type=int, default=31)
    p.add_argument("--hidden", type=int, default=576)
    p.add_argument("--n", type=int, default=6500)
    p.add_argument("--sources", type=int, default=4)
    p.add_argument("--alpha", type=float, default=0.1)
    args = p.parse_args()
    x, y = make_data(args.layers, args.hidden, args.n)
    perm = np.random.default_rng(0).permutation(args.n)
    tr, te = np.sort(perm[: int(0.8 * args.n)]), np.sort(perm[int(0.8 * args.n):])
    tr, te = torch.from_numpy(tr), torch.from_numpy(te)
    print(f"{args.sources} source layers x {args.layers} target layers, hidden {args.hidden}, {len(tr)} train / {len(te)} test pairs, "
          f"torch threads {torch.get_num_threads()}")
    times, results = {}, {}
    nsync_lightning(x[:200], y[:200], tr[tr < 150], te[te < 200][:40], 1, args.alpha)  # warm-up (imports, first Trainer)
    for name, fn in (("nsync", nsync_lightning), ("naive per pair", naive)):
        t = time.perf_counter()
        results[name] = fn(x, y, tr, te, args.sources, args.alpha)
        times[name] = time.perf_counter() - t
        print(f"{name:>16}: {times[name]:7.2f} s  ({times[name] / args.sources:6.2f} s per source layer, "
              f"{times[name] / args.sources * args.layers:7.1f} s extrapolated to the full {args.layers}x{args.layers} matrix)", flush=True)
    diff = np.abs(results["nsync"] - results["naive per pair"]).max()
    print(f"nsync: {times['naive per pair'] / times['nsync']:.1f}x faster than naive, max |R² difference| {diff:.1e}")
    gf = gemm_gflops()
    xty = 2 * len(tr) * args.hidden * args.layers * args.hidden * args.sources / 1e9
    print(f"float32 GEMM: {gf:.1f} GFLOP/s; the X^T Y products ({xty:.0f} GFLOP) take {xty / gf:.2f} s at that rate: "
          f"nsync's time is {times['nsync'] / (xty / gf):.1f}x that floor")


if __name__ == "__main__":
    main()
