"""``python -m nsync.simulate --config configs/simulate/quickstart.yaml [key=value ...]``

Runs social episodes (two or more agents) and writes every layer's hidden state at every utterance into
an activation cache. ``--help`` lists every config key.
"""

from nsync.errors import run_cli
from nsync.simulation.run import main

if __name__ == "__main__":
    run_cli(main)
