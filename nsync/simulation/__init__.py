"""Social episodes of two or more agents between local models, with hidden states captured at every turn."""

# Names load on first use (SPEC 1 lazy loading), so a command's --help and a fit's start-up import
# only the modules they need (tests/test_imports.py).
import lazy_loader

__getattr__, __dir__, __all__ = lazy_loader.attach(
    __name__,
    # submodules too: nsync.simulation.<module> works after `import nsync.simulation`, as it did with eager imports
    submodules=["config", "echo", "engine", "generation", "prompts", "reread", "run", "turns"],
    submod_attrs={
        "config": ["CaptureConfig", "SamplingConfig", "ScenarioSelection", "SimulateConfig"],
        "engine": ["Run", "SimulationStats", "Simulator", "plan_runs"],
        "generation": ["Generator", "HiddenStateRecorder", "prompt_states"],
        "turns": ["TURN_POLICIES", "TurnTakingConfig"],
    },
)
