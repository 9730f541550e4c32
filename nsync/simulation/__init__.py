"""Social episodes of two or more agents between local models, with hidden states captured at every turn."""

from nsync.simulation.config import CaptureConfig, ScenarioSelection, SimulateConfig
from nsync.simulation.engine import Run, SimulationStats, Simulator, plan_runs
from nsync.simulation.generation import Generator, HiddenStateRecorder, SamplingConfig, prompt_states
from nsync.simulation.turns import TURN_POLICIES, TurnTakingConfig

__all__ = [
    "CaptureConfig",
    "Generator",
    "HiddenStateRecorder",
    "Run",
    "SamplingConfig",
    "ScenarioSelection",
    "SimulateConfig",
    "SimulationStats",
    "Simulator",
    "TURN_POLICIES",
    "TurnTakingConfig",
    "plan_runs",
    "prompt_states",
]
