"""``python -m nsync.fit`` against the paper's per-pair algorithm and the arithmetic floors, on one cache.

    python experiments/benchmarks/fit_all_pairs.py --layers 24 --hidden 512 --episodes 500
    python experiments/benchmarks/fit_all_pairs.py --shape smollm2 --paper-sources 6
    python experiments/benchmarks/fit_all_pairs.py --shape 7b --directions A->B --paper-sources 1 --floor-sources 1

A synthetic cache (a planted linear relation, one "massive" dimension of mean 3000; written once
under ``--cache`` with the public cache writer, float16 on disk) with ``--layers`` layers of
``--hidden`` dimensions and 16-utterance episodes: ``--episodes 500`` gives about 4,000 pairs per
direction (80/20 episode split). ``--shape smollm2`` is 31 x 576 with 813 episodes (13,008
utterances); ``--shape 7b`` the paper's 7B models, 33 x 4,096 with 813 episodes (about 5,200
training and 1,300 test pairs per direction, 3.5 GB on disk). One split seed, alpha 0.1, every
(source, target) layer pair, the directions asked for. Timed in one run, so the ratios compare like
with like on a shared machine:

- nsync: the whole ``python -m nsync.fit`` process (start-up, cache reading, fitting, bootstrap,
  plots, results; no surrogates, time course or CKA: the paper computes none), with its peak RSS;
  ``test``: target layers picked on the test side as the paper does (the same arithmetic as the
  paper's fit); ``validation``: nsync's default (picked on validation episodes, so fitted,
  validated and refitted); ``--runs`` chooses;
- paper: the paper's algorithm with the same pairs already in memory, timed in-process: for every
  layer pair separately, float32 ``solve(X^T X + alpha I, X^T Y)`` with an unpenalised bias
  column, predictions and scikit-learn's ``r2_score`` (``--paper-sources``: on that many source
  layers, extrapolated);
- floors: the arithmetic an exact fit of one alpha cannot avoid, as plain float32 products and a
  float64 Cholesky factor of the same sizes, per source layer: ``X^T X``, its factor and the test
  rows solved through it (``xt (X^T X + alpha I)^-1``, float64 as the factor; before 2026-12-05 the
  floors left this solve out), then primal ``X^T Y`` and the predictions through ``C = X^T Y``,
  dual the predictions through the training rows (``--floor-sources``: on that many source layers,
  extrapolated).
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import torch
from sklearn.metrics import r2_score

from nsync.data import DataConfig, SynchronyDataModule
from nsync.testing.synthetic import write_synthetic_cache
from nsync.fit import FitResult

SHAPES = {"smollm2": (31, 576, 813), "7b": (33, 4096, 813)}  # layers (embeddings included), hidden, episodes


def run_nsync(cache: Path, out: Path, *extra: str) -> tuple[float, float, FitResult]:
    """Wall seconds, peak RSS (GB) and result of one ``python -m nsync.fit`` process."""
    cmd = [sys.executable, "-m", "nsync.fit", f"out={out}", f"data.cache={cache}", "data.split_seeds=[0]", "logger.kind=none", "cka=false",
           "progress=false", "overwrite=true", "surrogates.n=0", "time_bins=-1", "save_weights=false", *extra]
    start = time.perf_counter()
    child = subprocess.Popen(cmd, stdout=subprocess.DEVNULL)
    _, status, usage = os.wait4(child.pid, 0)
    seconds = time.perf_counter() - start
    if os.waitstatus_to_exitcode(status) != 0:
        raise SystemExit(f"nsync.fit failed: {' '.join(cmd)}")
    return seconds, usage.ru_maxrss / 2**20, FitResult.load(out)


DEVICE = torch.device("cpu")  # --accelerator gpu: the paper's algorithm, the reference and the floors run on the GPU too


def _float32(dm: SynchronyDataModule, part: str, sources: slice = slice(None)) -> tuple[torch.Tensor, torch.Tensor]:
    rows = torch.from_numpy(dm.index[part])
    return dm.x[rows, sources].to(DEVICE).float(), dm.y[rows].to(DEVICE).float()


def _sync() -> float:
    """``time.perf_counter()`` once the device has finished its queued work."""
    if DEVICE.type == "cuda":
        torch.cuda.synchronize()
    return time.perf_counter()


def paper_direction(dm: SynchronyDataModule, alpha: float, sources: int) -> np.ndarray:
    """The paper's algorithm for the first ``sources`` source layers of one direction."""
    (x_tr, y_tr), (x_te, y_te) = _float32(dm, "train", slice(0, sources)), _float32(dm, "test", slice(0, sources))
    ones_tr, ones_te = torch.ones(len(x_tr), 1, device=DEVICE), torch.ones(len(x_te), 1, device=DEVICE)
    penalty = alpha * torch.eye(dm.d_in + 1, device=DEVICE)
    penalty[-1, -1] = 0.0  # unpenalised bias
    r2 = np.zeros((sources, len(dm.target_layers)))
    for s in range(sources):
        xa = torch.cat([x_tr[:, s], ones_tr], 1)
        xa_te = torch.cat([x_te[:, s], ones_te], 1)
        for t in range(len(dm.target_layers)):  # every pair on its own, as the paper's scripts fit them
            w = torch.linalg.solve(xa.T @ xa + penalty, xa.T @ y_tr[:, t])
            r2[s, t] = r2_score(y_te[:, t].cpu().numpy(), (xa_te @ w).cpu().numpy())
    return r2


def reference_source(dm: SynchronyDataModule, alpha: float, source: int = 0) -> np.ndarray:
    """An exact reference for one source layer: float64, centred at the training means."""
    (x, y), (xt, yt) = _float32(dm, "train", slice(source, source + 1)), _float32(dm, "test", slice(source, source + 1))
    x, xt = x[:, 0].double(), xt[:, 0].double()
    mx = x.mean(0)
    xc = x - mx
    factor = torch.linalg.cholesky(xc.T @ xc + alpha * torch.eye(dm.d_in, dtype=torch.float64, device=DEVICE))
    out = np.zeros(len(dm.target_layers))
    for t in range(len(dm.target_layers)):
        y_tr, y_te = y[:, t].double(), yt[:, t].cpu().numpy()
        w = torch.cholesky_solve(xc.T @ (y_tr - y_tr.mean(0)), factor)
        out[t] = r2_score(y_te, ((xt - mx) @ w + y_tr.mean(0)).cpu().numpy())
    return out


def floors(dm: SynchronyDataModule, sources: int) -> dict[str, float]:
    """Seconds per direction of the primal and the dual floor, timed on ``sources`` source layers."""
    (x_tr, y_tr), (x_te, _) = _float32(dm, "train", slice(0, sources)), _float32(dm, "test", slice(0, sources))
    y_tr = y_tr.reshape(len(y_tr), -1)
    d = dm.d_in
    out = {"primal": 0.0, "dual": 0.0}
    for s in range(sources):
        x, xt = x_tr[:, s].contiguous(), x_te[:, s].contiguous()
        t = _sync()
        gram = (x.T @ x).double() + 0.1 * torch.eye(d, dtype=torch.float64, device=DEVICE)
        factor = torch.linalg.cholesky(gram)
        solved = torch.cholesky_solve(xt.T.double(), factor).T.float()  # the test rows through the factor: xt (X^T X + alpha I)^-1
        shared = _sync() - t
        t = _sync()
        c = x.T @ y_tr
        solved @ c
        out["primal"] += shared + _sync() - t
        del c
        t = _sync()
        (solved @ x.T) @ y_tr
        out["dual"] += shared + _sync() - t
    return {k: v * len(dm.source_layers) / sources for k, v in out.items()}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--shape", choices=sorted(SHAPES), default=None, help="a named shape (sets --layers, --hidden, --episodes)")
    p.add_argument("--layers", type=int, default=24, help="layers per model (embeddings included)")
    p.add_argument("--hidden", type=int, default=512)
    p.add_argument("--episodes", type=int, default=500, help="16-utterance episodes (8 A->B and 7 B->A pairs each)")
    p.add_argument("--directions", default="A->B,B->A", help="comma-separated")
    p.add_argument("--cache", default=None, help="cache folder (default runs/benchmarks/fit_<layers>x<hidden>_<episodes>)")
    p.add_argument("--runs", default="test,validation", help="nsync fits to time: test (targets picked on the test side, as the paper) "
                   "and/or validation (nsync's default)")
    p.add_argument("--paper-sources", type=int, default=None, help="time the paper's algorithm on this many source layers and "
                   "extrapolate (default: all)")
    p.add_argument("--floor-sources", type=int, default=None, help="time the floors on this many source layers and extrapolate (default: all)")
    p.add_argument("--alpha", type=float, default=0.1)
    p.add_argument("--accelerator", choices=["cpu", "gpu"], default="cpu", help="where nsync.fit (accelerator=...), the paper's "
                   "algorithm and the floors run")
    p.add_argument("--compare-solvers", action="store_true", help="also time the fit with affine.solver=primal and =dual (same run)")
    args = p.parse_args()
    if args.shape:
        args.layers, args.hidden, args.episodes = SHAPES[args.shape]
    global DEVICE
    DEVICE = torch.device("cuda" if args.accelerator == "gpu" else "cpu")
    directions = args.directions.split(",")
    cache = Path(args.cache or f"runs/benchmarks/fit_{args.layers}x{args.hidden}_{args.episodes}")
    if not (cache / "manifest.json").exists():
        t = time.perf_counter()
        write_synthetic_cache(cache, "linear", n_episodes=args.episodes, turns=16, n_layers=args.layers - 1, hidden=args.hidden,
                              massive=3000.0, n_characters=40, n_scenarios=90, dtype="float16", shard_rows=2000)
        print(f"wrote the synthetic cache {cache} in {time.perf_counter() - t:.1f} s", flush=True)
    out = cache.parent / f"{cache.name}_fit"
    print(f"shape: {args.layers} layers x hidden {args.hidden}, {args.episodes} episodes, directions {directions}; "
          f"torch threads {torch.get_num_threads()}", flush=True)
    common = [f"affine.alphas=[{args.alpha}]", f"data.directions=[{','.join(directions)}]", f"accelerator={args.accelerator}"]

    start = time.perf_counter()
    subprocess.run([sys.executable, "-c", "import nsync.fit.loop"], check=True)
    t_import = time.perf_counter() - start
    runs: dict[str, dict] = {}
    for run in args.runs.split(","):
        choice = {"test": ["target_choice=test", "bootstrap=0"], "validation": []}[run]  # the paper's rule re-picks per replicate: no bootstrap
        seconds, rss, result = run_nsync(cache, Path(f"{out}_{run}"), *common, *choice)
        runs[run] = dict(seconds=seconds, peak_rss_gb=rss, result=result)
        print(f"nsync ({run}; whole process): {seconds:.1f} s, of which {t_import:.1f} s start-up; peak RSS {rss:.2f} GB", flush=True)

    if args.compare_solvers:
        times, fits = {}, {}
        for solver in ("primal", "dual"):
            times[solver], _, fits[solver] = run_nsync(cache, cache.parent / f"{cache.name}_fit_{solver}", *common, f"affine.solver={solver}",
                                                       "bootstrap=0")
        diff = max(float(np.nanmax(np.abs(fits["dual"].directions[d].r2_matrix - fits["primal"].directions[d].r2_matrix)))
                   for d in fits["primal"].directions)
        print(f"solvers (whole process, no bootstrap): primal {times['primal']:.1f} s, dual {times['dual']:.1f} s "
              f"(primal / dual {times['primal'] / times['dual']:.2f}x); max |R² difference| {diff:.1e}", flush=True)

    t_paper, t_floor = 0.0, {"primal": 0.0, "dual": 0.0}
    max_diff = max_ref_diff = 0.0
    first = next(iter(runs.values()))["result"]
    for direction in directions:
        dm = SynchronyDataModule(DataConfig(cache=str(cache), split_seeds=[0]), direction, 0, validation=False)
        dm.setup()
        n_src = len(dm.source_layers)
        print(f"  {direction}: {dm.n('train')} train / {dm.n('test')} test pairs", flush=True)
        for form, seconds in floors(dm, min(args.floor_sources or n_src, n_src)).items():
            t_floor[form] += seconds
        k = min(args.paper_sources or n_src, n_src)
        t = _sync()
        paper = paper_direction(dm, args.alpha, k)
        t_paper += (_sync() - t) * n_src / k
        mine = first.directions[direction].r2_matrix
        max_diff = max(max_diff, float(np.nanmax(np.abs(mine[:k] - paper))))
        max_ref_diff = max(max_ref_diff, float(np.nanmax(np.abs(mine[0] - reference_source(dm, args.alpha)))))
        del dm
    floor = min(t_floor.values())
    sampled = lambda n: f" (extrapolated from {n} source layers)" if n else ""  # noqa: E731
    print(f"paper's per-pair algorithm, data in memory: {t_paper:.1f} s{sampled(args.paper_sources)}")
    print(f"floors: primal {t_floor['primal']:.1f} s, dual {t_floor['dual']:.1f} s{sampled(args.floor_sources)}")
    for run, r in runs.items():
        print(f"nsync ({run}) is {t_paper / r['seconds']:.1f}x faster than the paper's algorithm and at {r['seconds'] / floor:.2f}x the lower "
              f"floor ({(r['seconds'] - t_import) / floor:.2f}x without start-up)")
    print(f"the paper's algorithm is at {t_paper / floor:.2f}x the lower floor; max |R² nsync - paper| {max_diff:.1e} (the paper's float32 "
          f"normal equations on raw states lose the massive dimension); max |R² nsync - float64 centred reference| {max_ref_diff:.1e} "
          "(source layer 0)")
    summary = dict(layers=args.layers, hidden=args.hidden, episodes=args.episodes, directions=directions, startup_s=t_import,
                   nsync={run: {k: v for k, v in r.items() if k != "result"} for run, r in runs.items()},
                   paper_s=t_paper, floor_s=t_floor, max_r2_diff=max_diff, max_r2_diff_reference=max_ref_diff)
    print(json.dumps(summary))


if __name__ == "__main__":
    main()
