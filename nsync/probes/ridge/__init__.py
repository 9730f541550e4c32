"""Closed-form ridge regression from streamed sums, for many source layers and targets at once.

Sums are taken around a fixed shift (the training mean), so hidden states with huge-mean
dimensions ("massive activations") lose no precision: the paper's float32 ``X^T X`` on raw
states does. The batch products of centred data run in float32 (or float64) and are added up in
float64. One eigendecomposition per source layer serves every target and every ``alpha``: of
``X^T X`` (``d x d``), or, where the training rows are fewer than the hidden size, of the Gram
matrix ``X X^T`` (``n x n``: the kernel form, cheaper and, in float32, far more accurate there).
The products with all target layers are one GEMM per batch. The choice of alpha (and of the band
penalty ratio of banded ridge) on validation R² is here too: plain tensor functions, which
:class:`nsync.probes.AffineProbe` only calls.

Two solvers give the same numbers (to float rounding; :func:`choose_solver` picks by arithmetic):

- ``primal`` streams ``X^T Y`` (``[d, K]`` per source, ``K`` = every target layer's columns) and
  predicts with it; its sums add up across batches and DDP processes;
- ``dual`` keeps the centred training rows instead and predicts through them (the "hat" form
  ``x (X^T X + alpha I)^-1 X^T Y``), never forming ``X^T Y``; one process.

The modules, one solver per class over a shared factorisation:

- :mod:`~nsync.probes.ridge.statistics`: the streamed sums (:class:`RidgeStatistics`) and the
  dual's kept rows (:class:`TrainingRows`);
- :mod:`~nsync.probes.ridge.factorisation`: what every solver shares: the column scale and the
  decomposition of ``A + alpha I`` (one eigendecomposition for any alpha, or a Cholesky factor
  per alpha);
- :mod:`~nsync.probes.ridge.primal`, :mod:`~nsync.probes.ridge.dual`: the solvers (the dual's
  kernel form too), each forming its ``A`` and multiplying through what it holds;
- :mod:`~nsync.probes.ridge.solvers`: which solver (:func:`choose_solver` by arithmetic; the one
  factory that builds a solver from statistics);
- :mod:`~nsync.probes.ridge.solution`: :class:`RidgeSolution`, a solver over a factorisation,
  and :func:`fit_ridge`;
- :mod:`~nsync.probes.ridge.bands`: banded ridge's column scales;
- :mod:`~nsync.probes.ridge.choice`: the choice of alpha and band penalty ratio on validation R².
"""

from nsync.probes.ridge.bands import BAND_REFERENCES, Bands, band_bounds, band_scales
from nsync.probes.ridge.choice import ALPHA_CHOICES, ValidationChoice, choose_alpha, choose_on_validation, log
from nsync.probes.ridge.factorisation import DECOMPOSITIONS, INVERSE_UP_TO
from nsync.probes.ridge.solution import RidgeSolution, fit_ridge
from nsync.probes.ridge.solvers import SOLVERS, choose_solver
from nsync.probes.ridge.statistics import COLUMN_BLOCK, ROW_BLOCK, RidgeStatistics, TrainingRows

__all__ = [
    "ALPHA_CHOICES",
    "BAND_REFERENCES",
    "COLUMN_BLOCK",
    "DECOMPOSITIONS",
    "INVERSE_UP_TO",
    "ROW_BLOCK",
    "SOLVERS",
    "Bands",
    "RidgeSolution",
    "RidgeStatistics",
    "TrainingRows",
    "ValidationChoice",
    "band_bounds",
    "band_scales",
    "choose_alpha",
    "choose_on_validation",
    "choose_solver",
    "fit_ridge",
    "log",  # the logger of its warnings ("nsync.probes")
]
