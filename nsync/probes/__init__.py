"""Synchrony probes: LightningModules mapping one agent's state to its partner's next state."""

from nsync.probes.affine import AffineProbe, choose_alpha
from nsync.probes.metrics import LayerR2, TestR2Mixin, r2_from_sums
from nsync.probes.mlp import MLP, MLPProbe
from nsync.probes.ridge import RidgeSolution, RidgeStatistics, fit_ridge

__all__ = ["AffineProbe", "LayerR2", "MLP", "MLPProbe", "RidgeSolution", "RidgeStatistics", "TestR2Mixin", "choose_alpha", "fit_ridge",
           "r2_from_sums"]
