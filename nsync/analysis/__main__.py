"""``python -m nsync.analysis fits=[RUN,...] judge=NAME out=DIR [covariates=CSV covariate=COL]``

Correlates each model pair's SyncR² with its judged social performance (Pearson, Spearman,
bootstrap intervals, partial correlation given a covariate) and per-episode synchrony with
per-episode scores. ``--help`` lists every config key.
"""

from nsync.analysis.performance import main
from nsync.errors import run_cli

if __name__ == "__main__":
    run_cli(main)
