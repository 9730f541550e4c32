"""``python -m nsync.fit`` against the paper's per-pair algorithm and the GEMM floor, on one cache.

    python experiments/benchmarks/fit_all_pairs.py --layers 24 --hidden 512 --episodes 500
    python experiments/benchmarks/fit_all_pairs.py --layers 31 --hidden 576 --episodes 813   # SmolLM2's shape

A synthetic cache (a planted linear relation, one "massive" dimension of mean 3000; written once
under ``--cache``) with ``--layers`` layers of ``--hidden`` dimensions and 16-utterance episodes:
``--episodes 500`` gives about 4,000 pairs per direction (80/20 episode split). One split seed,
both directions, alpha 0.1, every (source, target) layer pair. Timed in one run, so the ratios
compare like with like on a shared machine:

- nsync: the whole ``python -m nsync.fit`` process (start-up, cache reading, fitting, bootstrap,
  plots, results; ``cka=false``: the paper computes no CKA), and again with ``bootstrap=0`` for
  the bootstrap's share; peak RSS;
- paper: the paper's algorithm with the same pairs already in memory, timed in-process: for
  every layer pair separately, float32 ``solve(X^T X + alpha I, X^T Y)`` with an unpenalised bias
  column, predictions and scikit-learn's ``r2_score``;
- floor: the arithmetic the fit cannot avoid, as plain float32 matmuls of the same sizes, each
  arranged as fast as it goes: per direction ``X^T Y`` of every source layer against every target
  layer (one GEMM), and per source layer the test predictions against all target layers.
"""

from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import torch
from sklearn.metrics import r2_score

from nsync.data import DataConfig, SynchronyDataModule
from nsync.data.synthetic import write_synthetic_cache
from nsync.fit import FitResult


def run_nsync(cache: Path, out: Path, *extra: str) -> tuple[float, FitResult]:
    # nsync's default fit (targets chosen on validation episodes, then refitted on the whole training
    # side) without what the paper does not compute: surrogate p-values, the time course, CKA.
    cmd = [sys.executable, "-m", "nsync.fit", f"out={out}", f"data.cache={cache}", "data.split_seeds=[0]", "logger.kind=none", "cka=false",
           "progress=false", "overwrite=true", "surrogates.n=0", "time_bins=-1", *extra]
    start = time.perf_counter()
    subprocess.run(cmd, check=True, stdout=subprocess.DEVNULL)
    return time.perf_counter() - start, FitResult.load(out)


def paper_direction(dm: SynchronyDataModule, alpha: float, sources: int) -> np.ndarray:
    """The paper's algorithm for the first ``sources`` source layers of one direction."""
    tr, te = torch.from_numpy(dm.index["train"]), torch.from_numpy(dm.index["test"])
    x_tr, x_te, y_tr, y_te = dm.x[tr], dm.x[te], dm.y[tr], dm.y[te]
    ones_tr, ones_te = torch.ones(len(tr), 1), torch.ones(len(te), 1)
    penalty = alpha * torch.eye(dm.d_in + 1)
    penalty[-1, -1] = 0.0  # unpenalised bias
    r2 = np.zeros((sources, len(dm.target_layers)))
    for s in range(sources):
        xa = torch.cat([x_tr[:, s], ones_tr], 1)
        xa_te = torch.cat([x_te[:, s], ones_te], 1)
        for t in range(len(dm.target_layers)):  # every pair on its own, as the paper's scripts fit them
            w = torch.linalg.solve(xa.T @ xa + penalty, xa.T @ y_tr[:, t])
            r2[s, t] = r2_score(y_te[:, t].numpy(), (xa_te @ w).numpy())
    return r2


def reference_source(dm: SynchronyDataModule, alpha: float, source: int = 0) -> np.ndarray:
    """An exact reference for one source layer: float64, centred at the training means, per pair."""
    tr, te = torch.from_numpy(dm.index["train"]), torch.from_numpy(dm.index["test"])
    x, xt = dm.x[tr, source].double(), dm.x[te, source].double()
    mx = x.mean(0)
    xc = x - mx
    gram = xc.T @ xc + alpha * torch.eye(dm.d_in, dtype=torch.float64)
    out = np.zeros(len(dm.target_layers))
    for t in range(len(dm.target_layers)):
        y = dm.y[tr, t].double()
        w = torch.linalg.solve(gram, xc.T @ (y - y.mean(0)))
        out[t] = r2_score(dm.y[te, t].numpy(), ((xt - mx) @ w + y.mean(0)).numpy())
    return out


def floor_direction(dm: SynchronyDataModule) -> float:
    """Seconds for the unavoidable float32 products of one direction."""
    tr, te = torch.from_numpy(dm.index["train"]), torch.from_numpy(dm.index["test"])
    y_tr = dm.y[tr].reshape(len(tr), -1).contiguous()
    x_tr, x_te = dm.x[tr].reshape(len(tr), -1).contiguous(), dm.x[te]
    w = torch.randn(dm.d_in, y_tr.shape[1])
    start = time.perf_counter()
    x_tr.T @ y_tr  # every source layer against every target layer
    for s in range(len(dm.source_layers)):
        x_te[:, s].contiguous() @ w
    return time.perf_counter() - start


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--layers", type=int, default=24, help="layers per model (embeddings included)")
    p.add_argument("--hidden", type=int, default=512)
    p.add_argument("--episodes", type=int, default=500, help="16-utterance episodes (8 A->B and 7 B->A pairs each)")
    p.add_argument("--cache", default=None, help="cache folder (default runs/benchmarks/fit_<layers>x<hidden>_<episodes>)")
    p.add_argument("--paper-sources", type=int, default=None, help="time the paper's algorithm on this many source layers and "
                   "extrapolate (default: all)")
    p.add_argument("--alpha", type=float, default=0.1)
    p.add_argument("--compare-solvers", action="store_true", help="also time the fit with affine.solver=primal and =dual (same run)")
    args = p.parse_args()
    cache = Path(args.cache or f"runs/benchmarks/fit_{args.layers}x{args.hidden}_{args.episodes}")
    if not (cache / "manifest.json").exists():
        t = time.perf_counter()
        write_synthetic_cache(cache, "linear", n_episodes=args.episodes, turns=16, n_layers=args.layers - 1, hidden=args.hidden,
                              massive=3000.0, n_characters=40, n_scenarios=90)
        print(f"wrote the synthetic cache {cache} in {time.perf_counter() - t:.1f} s")
    out = cache.parent / f"{cache.name}_fit"
    print(f"shape: {args.layers} layers x hidden {args.hidden}, {args.episodes} episodes; torch threads {torch.get_num_threads()}", flush=True)

    start = time.perf_counter()
    subprocess.run([sys.executable, "-c", "import nsync.fit.loop"], check=True)
    t_import = time.perf_counter() - start
    t_nsync, result = run_nsync(cache, out, f"affine.alphas=[{args.alpha}]")
    rss = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 2**20
    t_noboot, _ = run_nsync(cache, cache.parent / f"{cache.name}_fit_noboot", f"affine.alphas=[{args.alpha}]", "bootstrap=0")
    print(f"nsync (whole process): {t_nsync:.1f} s, of which {t_import:.1f} s start-up (importing torch, torchmetrics, lightning); "
          f"peak RSS {rss:.2f} GB; without the bootstrap {t_noboot:.1f} s (bootstrap share {(t_nsync - t_noboot) / t_nsync:.0%})", flush=True)

    if args.compare_solvers:
        times, fits = {}, {}
        for solver in ("primal", "dual"):
            times[solver], fits[solver] = run_nsync(cache, cache.parent / f"{cache.name}_fit_{solver}", f"affine.alphas=[{args.alpha}]",
                                                    f"affine.solver={solver}", "bootstrap=0")
        diff = max(float(np.nanmax(np.abs(fits["dual"].directions[d].r2_matrix - fits["primal"].directions[d].r2_matrix)))
                   for d in fits["primal"].directions)
        print(f"solvers (whole process, no bootstrap): primal {times['primal']:.1f} s, dual {times['dual']:.1f} s "
              f"(primal / dual {times['primal'] / times['dual']:.2f}x); max |R² difference| {diff:.1e}", flush=True)

    t_paper = t_floor = 0.0
    max_diff = max_ref_diff = 0.0
    for direction in ("A->B", "B->A"):
        dm = SynchronyDataModule(DataConfig(cache=str(cache), split_seeds=[0]), direction, 0, validation=False)
        dm.setup()
        n_src = len(dm.source_layers)
        k = min(args.paper_sources or n_src, n_src)
        print(f"  {direction}: {dm.n('train')} train / {dm.n('test')} test pairs", flush=True)
        t = time.perf_counter()
        paper = paper_direction(dm, args.alpha, k)
        t_paper += (time.perf_counter() - t) * n_src / k
        mine = result.directions[direction].r2_matrix
        max_diff = max(max_diff, float(np.nanmax(np.abs(mine[:k] - paper))))
        max_ref_diff = max(max_ref_diff, float(np.nanmax(np.abs(mine[0] - reference_source(dm, args.alpha)))))
        t_floor += floor_direction(dm)
    extrapolated = "" if not args.paper_sources else f" (extrapolated from {args.paper_sources} source layers)"
    print(f"paper's per-pair algorithm, data in memory: {t_paper:.1f} s{extrapolated}")
    print(f"GEMM floor (float32 X^T Y + test predictions): {t_floor:.1f} s")
    print(f"nsync is {t_paper / t_nsync:.1f}x faster than the paper's algorithm and at {t_nsync / t_floor:.2f}x the floor "
          f"({(t_nsync - t_import) / t_floor:.2f}x without start-up); the paper's algorithm is at {t_paper / t_floor:.2f}x the floor; "
          f"max |R² nsync - paper| {max_diff:.1e} (the paper's float32 normal equations on raw states lose the massive dimension); "
          f"max |R² nsync - float64 centred reference| {max_ref_diff:.1e} (source layer 0)")
    summary = dict(layers=args.layers, hidden=args.hidden, episodes=args.episodes, nsync_s=t_nsync, startup_s=t_import, nsync_no_bootstrap_s=t_noboot,
                   paper_s=t_paper, floor_s=t_floor, peak_rss_gb=rss, max_r2_diff=max_diff, max_r2_diff_reference=max_ref_diff,
                   sync_r2=result.sync_r2)
    print(json.dumps(summary))


if __name__ == "__main__":
    main()
