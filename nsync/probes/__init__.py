"""Synchrony probes: LightningModules mapping one agent's state to its partner's next state."""

from nsync.probes.affine import AffineProbe
from nsync.probes.metrics import LayerR2, TestR2Mixin
from nsync.probes.mlp import MLP, MLPProbe
from nsync.probes.ridge import RidgeSolution, RidgeStatistics, fit_ridge

__all__ = ["AffineProbe", "LayerR2", "MLP", "MLPProbe", "RidgeSolution", "RidgeStatistics", "fit_ridge"]
