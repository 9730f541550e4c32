"""``python -m nsync.fit --config configs/fit/paper.yaml [key=value ...]``

Fits synchrony probes (affine ridge or MLP) from every source layer to every target layer of an
activation cache and writes ``results.json``, plots, weights and a W&B run. ``--help`` lists
every config key.
"""

from nsync.errors import run_cli
from nsync.fitting import main

if __name__ == "__main__":
    run_cli(main)
