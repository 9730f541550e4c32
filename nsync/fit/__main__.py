"""``python -m nsync.fit --config configs/fit/paper.yaml [key=value ...]``

Fits synchrony probes (affine ridge or MLP) from every source layer to every target layer of an
activation cache and writes ``results.json``, plots, weights and a W&B run. ``--help`` lists
every config key.
"""

from __future__ import annotations

from collections.abc import Sequence

from nsync.config import load_config
from nsync.errors import configure_logging, run_cli
from nsync.fit.config import FitConfig


def main(argv: Sequence[str]) -> None:
    configure_logging()  # progress notes (what the fit chose, layers left out), once per run
    cfg = load_config(FitConfig, argv, prog="nsync fit")
    # The fit's modules load after the config is read: --help and a bad key answer at once.
    from lightning.pytorch.utilities import rank_zero_only

    from nsync.fit.loop import run_fit
    from nsync.fit.summary import print_summary

    result = run_fit(cfg)
    if rank_zero_only.rank == 0:  # type: ignore[attr-defined]  # rank: set on the function at runtime
        print_summary(result, cfg)


if __name__ == "__main__":
    run_cli(main)
