"""Golden fits: small fits on planted caches that together exercise every analysis of the fit
stage (main fit, a control, partition with a joined baseline, surrogates, time course, CKA,
weights, an alpha grid, both solvers, the test-picked rule, the MLP, two split seeds, both
directions, agent pairs). Their stored outputs pin the fit stage's numbers: a change of the code
that moves any of them by more than :data:`TOLERANCE` fails ``tests/test_golden.py``.

Regenerate (only on purpose, saying why in the commit): ``python tests/golden/fits.py``.
"""

from __future__ import annotations

import json
import shutil
import sys
from collections.abc import Callable
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent
#: Absolute tolerance of every stored number (affine fits run their products in float64: the
#: numbers do not depend on the CPU's kernels to this precision). The MLP trains in float32.
TOLERANCE = 1e-9
MLP_TOLERANCE = 1e-5
#: Files of a run folder compared besides results.json (each where the fit writes it).
ARRAYS = ("bootstrap.npy", "partition_bootstrap.npz", "weights.safetensors", "episode_sync.csv")
COMMON = ["logger.kind=none", "progress=false", "affine.matmul_dtype=float64"]


def _linear(path: Path) -> Path:
    from nsync.testing.synthetic import write_synthetic_cache

    return write_synthetic_cache(path, "linear", n_episodes=40, turns=6, n_layers=2, hidden=6, massive=300.0, shape=0.5, observer_share=0.3)


def _partition(path: Path) -> Path:
    from nsync.testing.synthetic import write_partition_cache

    return write_partition_cache(path, private=0.5, n_episodes=60, turns=6, hidden=4, opening=0.5)[0]


def _groups(path: Path) -> Path:
    from nsync.testing.synthetic import write_synthetic_cache

    return write_synthetic_cache(path, "linear", n_episodes=30, turns=6, n_layers=1, hidden=4, n_agents=3)


#: name -> (cache writer, its folder name, fit overrides)
FITS: dict[str, tuple[Callable[[Path], Path], str, list[str]]] = {
    "main": (
        _linear,
        "linear",
        ["affine.alphas=[0.1,1,10]", "data.split_seeds=[0,1]", "bootstrap=100", "surrogates.n=20", "time_bins=0", "data.test_size=0.25"],
    ),
    "test_picked_dual": (
        _linear,
        "linear",
        ["target_choice=test", "affine.solver=dual", "data.split_seeds=[0,1]", "bootstrap=50", "surrogates.n=0", "time_bins=2", "cka=false"],
    ),
    "observer_control": (
        _linear,
        "linear",
        ["data.condition=observer", "affine.alphas=[1,10]", "data.split_seeds=[0]", "bootstrap=50", "surrogates.n=10", "time_bins=-1"],
    ),
    "shuffled_circular": (
        _linear,
        "linear",
        ["data.pairing=shuffled_partner", "affine.alphas=[1,10]", "data.split_seeds=[1]", "bootstrap=0", "surrogates.n=10",
         "surrogates.kind=circular_shift", "save_weights=false"],
    ),
    "partition": (
        _partition,
        "partition",
        ["affine.alphas=[0.1,10,1000]", "partition.baselines=[text:planted+own_past,text:planted]", "partition.ratios=[0.1,1,10]",
         "partition.feature_ratios=[0.1,10]", "data.split_seeds=[0,1]", "bootstrap=60", "surrogates.n=10", "time_bins=2", "save_weights=false"],
    ),
    "mlp": (
        _linear,
        "linear",
        ["probe=mlp", "mlp.hidden=8", "mlp.max_epochs=4", "mlp.patience=2", "data.source_layers=[1,2]", "data.split_seeds=[0]",
         "data.directions=[A->B]", "bootstrap=30", "surrogates.n=5", "time_bins=-1"],
    ),
    "groups": (_groups, "groups", ["data.directions=[all]", "data.split_seeds=[0]", "bootstrap=30", "surrogates.n=0", "affine.alphas=[1,10]"]),
}


def run(name: str, workdir: Path, *extra: str) -> Path:
    """Fit golden ``name`` with caches under ``workdir`` (``extra``: more overrides); returns its run folder."""
    from nsync.config import load_config
    from nsync.fit import FitConfig, run_fit

    writer, cache_name, overrides = FITS[name]
    cache = workdir / "caches" / cache_name
    if not (cache / "manifest.json").exists():
        writer(cache)
    out = workdir / "runs" / "-".join([name, *extra]).replace("=", "_")
    run_fit(load_config(FitConfig, [f"out={out}", f"data.cache={cache}", *COMMON, *overrides, *extra], prog="golden"))
    return out


def numbers(folder: Path) -> dict[str, object]:
    """What a golden run is compared on: results.json without what says where or when it ran
    (``seconds``, ``config``, ``fingerprint``), and every array file, as flat ``key -> value``."""
    import pandas as pd
    from safetensors.numpy import load_file

    results = json.loads((folder / "results.json").read_text())
    for key in ("seconds", "config", "fingerprint"):
        results.pop(key, None)
    flat: dict[str, object] = {}

    def walk(prefix: str, value: object) -> None:
        if isinstance(value, dict):
            for k, v in value.items():
                walk(f"{prefix}/{k}", v)
        elif isinstance(value, list):
            for i, v in enumerate(value):
                walk(f"{prefix}[{i}]", v)
        else:
            flat[prefix] = value

    walk("results.json", results)
    if (folder / "bootstrap.npy").exists():
        walk("bootstrap.npy", np.load(folder / "bootstrap.npy").tolist())
    if (folder / "partition_bootstrap.npz").exists():
        with np.load(folder / "partition_bootstrap.npz") as z:
            walk("partition_bootstrap.npz", {k: z[k].tolist() for k in sorted(z.files)})
    if (folder / "weights.safetensors").exists():
        walk("weights.safetensors", {k: v.tolist() for k, v in sorted(load_file(folder / "weights.safetensors").items())})
    if (folder / "episode_sync.csv").exists():
        walk("episode_sync.csv", pd.read_csv(folder / "episode_sync.csv").to_dict(orient="list"))
    return flat


def differences(expected: dict, actual: dict, tolerance: float) -> list[str]:
    """Every key whose value differs (numbers by more than ``tolerance``), is missing or is new."""
    out = []
    for key in sorted(set(expected) | set(actual)):
        if key not in actual or key not in expected:
            out.append(f"{key}: {'missing' if key not in actual else 'new'}")
            continue
        a, b = expected[key], actual[key]
        if isinstance(a, (int, float)) and isinstance(b, (int, float)) and not isinstance(a, bool):
            if not (np.isnan(a) and np.isnan(b)) and abs(a - b) > tolerance:
                out.append(f"{key}: {a!r} -> {b!r}")
        elif a != b and not (isinstance(a, float) and isinstance(b, float) and np.isnan(a) and np.isnan(b)):
            out.append(f"{key}: {a!r} -> {b!r}")
    return out


def main(names: list[str]) -> None:
    import tempfile

    with tempfile.TemporaryDirectory() as tmp:
        for name in names or list(FITS):
            folder = run(name, Path(tmp))
            (HERE / f"{name}.json").write_text(json.dumps(numbers(folder), indent=0, sort_keys=True) + "\n")
            print(f"wrote {HERE / name}.json")
            shutil.rmtree(folder)


if __name__ == "__main__":
    sys.path.insert(0, str(HERE.parents[1]))
    main(sys.argv[1:])
