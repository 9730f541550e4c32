"""What ``python -m nsync simulate`` does, callable from Python and tests."""

from __future__ import annotations

import dataclasses
import logging
import os
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from nsync.config import load_config, to_dict
from nsync.errors import NsyncError, configure_logging
from nsync.simulation.config import SimulateConfig

if TYPE_CHECKING:  # the models and the engine load in simulate(): --help imports no torch
    from nsync.models import LoadedModel
    from nsync.simulation.engine import SimulationStats

log = logging.getLogger("nsync.simulate")


def _distributed() -> tuple[int, int]:
    """(rank, world size); starts a gloo/nccl process group when launched by torchrun."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world == 1:
        return 0, 1
    import torch.distributed as dist

    if not dist.is_initialized():
        import torch

        dist.init_process_group("nccl" if torch.cuda.is_available() and os.environ.get("NSYNC_BACKEND") != "gloo" else "gloo")
    return dist.get_rank(), dist.get_world_size()


def _barrier(world: int) -> None:
    if world > 1:
        import torch.distributed as dist

        dist.barrier()


def _sum_over_ranks(stats: SimulationStats) -> SimulationStats:
    """Totals over all ranks (the slowest rank's time), so rank 0's summary covers the whole run."""
    import torch
    import torch.distributed as dist

    from nsync.simulation.engine import SimulationStats

    counts = torch.tensor([stats.runs, stats.utterances, stats.new_tokens, stats.prompt_tokens, stats.resampled], dtype=torch.float64)
    seconds = torch.tensor([stats.seconds, stats.capture_seconds], dtype=torch.float64)
    dist.all_reduce(counts)
    dist.all_reduce(seconds, op=dist.ReduceOp.MAX)
    runs, utterances, new_tokens, prompt_tokens, resampled = (int(x) for x in counts.tolist())
    return SimulationStats(
        runs=runs,
        utterances=utterances,
        new_tokens=new_tokens,
        prompt_tokens=prompt_tokens,
        resampled=resampled,
        seconds=float(seconds[0]),
        capture_seconds=float(seconds[1]),
    )


def simulate(cfg: SimulateConfig, models: dict[str, LoadedModel] | None = None) -> tuple[Path, SimulationStats]:
    """Simulate the configured episodes into ``cfg.out``; ``models`` overrides loading by name
    (tests pass tiny models here)."""
    from nsync.cache.writer import CacheWriter, ModelInfo
    from nsync.models import ModelConfig, load_model
    from nsync.scenarios import load_scenarios
    from nsync.simulation.engine import Simulator, plan_runs

    rank, world = _distributed()
    library = load_scenarios(cfg.scenarios.source)
    episodes = library.select(cfg.scenarios.ids, cfg.scenarios.limit)
    if models is None:
        models = {}
        for name in dict.fromkeys(cfg.models):
            mc = ModelConfig(name=name, device=cfg.device, dtype=cfg.dtype, trust_remote_code=cfg.trust_remote_code)
            if rank == 0:
                log.info("loading %s", name)
            models[name] = load_model(mc)
    missing = [m for m in cfg.models if m not in models]
    if missing:
        raise NsyncError(f"no loaded model for {missing}")
    infos = [
        ModelInfo(name, lm.source, lm.checksum, lm.n_layers, lm.hidden_size, dtype=str(next(lm.model.parameters()).dtype).removeprefix("torch."))
        for name, lm in models.items()
        if name in cfg.models
    ]
    out = Path(cfg.out)
    writer_args: dict[str, Any] = dict(
        config=to_dict(cfg),
        identity=cfg.identity(),
        models=infos,
        dtype=cfg.capture.dtype,
        resume=cfg.resume,
        identity_defaults=cfg.identity_defaults(),
    )
    # rank 0 creates (or checks) the cache first; the other ranks then open it
    writer = CacheWriter(out, rank=rank, **writer_args) if rank == 0 else None
    _barrier(world)
    if writer is None:
        writer = CacheWriter(out, rank=rank, create=False, **{**writer_args, "resume": True})
    with writer:  # a failure releases the cache folder at once (not when the traceback is collected)
        runs = plan_runs(cfg, episodes)
        done = writer.done_runs()
        todo = [r for r in runs if r.run_id not in done][rank::world]
        if done and rank == 0:
            log.info("resuming: %d of %d episodes already in %s", len(done & {r.run_id for r in runs}), len(runs), out)
        cfg_rank = cfg if rank == 0 else dataclasses.replace(cfg, progress=False)  # one progress bar
        stats = Simulator(cfg_rank, models, writer).run(todo)
        if world > 1:
            stats = _sum_over_ranks(stats)
        if rank == 0:
            writer.finalize()
    _barrier(world)
    return out, stats


def main(argv: Sequence[str]) -> None:
    configure_logging()
    cfg = load_config(SimulateConfig, argv, prog="nsync simulate")
    out, stats = simulate(cfg)
    rank, _ = _distributed()
    if rank == 0:
        from nsync.cache import ActivationCache

        print(f"simulated {stats.line()}")
        print(ActivationCache.open(out).summary())
        print(f"wrote {out}")
