"""``python -m nsync.controls --config configs/controls/quickstart.yaml [key=value ...]``

Runs the main fit and every control (observer, lags, cross-interaction, shuffled partner,
self-prediction, same-time, untrained model, text-only) on one activation cache and writes a
summary table and plots. ``--help`` lists every config key.
"""

from nsync.analysis.controls import main
from nsync.errors import run_cli

if __name__ == "__main__":
    run_cli(main)
