"""Two-agent social episodes between local models, with hidden states captured at every turn."""

from nsync.simulation.config import CaptureConfig, ScenarioSelection, SimulateConfig
from nsync.simulation.engine import Run, SimulationStats, Simulator, plan_runs
from nsync.simulation.generation import Generator, HiddenStateRecorder, SamplingConfig, prompt_states

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
    "plan_runs",
    "prompt_states",
]
