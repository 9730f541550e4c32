"""``python -m nsync.judge --config configs/judge/local.yaml cache=CACHE [key=value ...]``

Scores every conversation of an activation cache on SOTOPIA-Eval's seven dimensions and writes
``CACHE/judge/NAME/scores.csv``. ``--help`` lists every config key.
"""

from nsync.errors import run_cli
from nsync.judge.run import main

if __name__ == "__main__":
    run_cli(main)
