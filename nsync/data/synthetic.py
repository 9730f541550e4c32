"""Synthetic caches with a planted relation, for tests and for checking an analysis end to end.

Agent 0's states are i.i.d. standard normal; agent 1's state at utterance ``t + 1`` is a
function of agent 0's state at ``t`` plus noise, so ``A->B`` pairs carry the planted relation
and ``B->A`` pairs carry none. Every layer is an orthogonal rotation of the same latent state,
so every (source, target) layer pair has the same population R²:

- ``linear``: ``y = c * Q x + noise``: R² = c² / (c² + noise²) per output dimension.
- ``quadratic``: ``y_j = c * (x_{p(j)}² - 1) / sqrt(2) + noise``: uncorrelated with ``x``, so an
  affine probe gets R² ≈ 0 while a nonlinear one can reach c² / (c² + noise²).
- ``none``: independent targets, R² ≈ 0.

``massive`` adds a constant to one dimension of every state (a "massive activation").
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from nsync.cache import CacheWriter, ModelInfo
from nsync.cache.layout import TURN_COLUMNS


def planted_r2(scale: float, noise: float) -> float:
    """Population R² of the planted relation."""
    return scale**2 / (scale**2 + noise**2)


def write_synthetic_cache(
    path: str | Path,
    relation: str = "linear",
    n_episodes: int = 60,
    turns: int = 8,
    n_layers: int = 2,
    hidden: int = 8,
    scale: float = 1.0,
    noise: float = 1.0,
    massive: float = 0.0,
    n_characters: int = 12,
    n_scenarios: int = 10,
    seed: int = 0,
    model: str = "synthetic",
) -> Path:
    """Write a cache of ``n_episodes`` runs of ``turns`` utterances; return its path."""
    rng = np.random.default_rng(seed)
    rotations = [np.linalg.qr(rng.normal(size=(hidden, hidden)))[0] for _ in range(n_layers + 1)]
    mixing = np.linalg.qr(rng.normal(size=(hidden, hidden)))[0]
    perm = rng.permutation(hidden)
    rows, states = [], []
    for e in range(n_episodes):
        a, b = rng.choice(n_characters, size=2, replace=False)
        scenario = e % n_scenarios
        latent = []
        for t in range(turns):
            if t % 2 == 0 or relation == "none":
                z = rng.normal(size=hidden)
            elif relation == "linear":
                z = scale * mixing @ latent[t - 1] + noise * rng.normal(size=hidden)
            elif relation == "quadratic":
                z = scale * (latent[t - 1][perm] ** 2 - 1) / np.sqrt(2) + noise * rng.normal(size=hidden)
            else:
                raise ValueError(f"unknown relation '{relation}'")
            latent.append(z)
            layers = np.stack([r @ z for r in rotations])
            layers[:, 0] += massive
            states.append(layers)
            rows.append(
                {c: 0 for c in TURN_COLUMNS}
                | dict(
                    run_id=f"ep{e:04d}|o0|s0", episode_id=f"ep{e:04d}", scenario_id=f"sc{scenario:02d}",
                    scenario_codename=f"scenario_{scenario}", character_a=f"ch{a:02d}", character_b=f"ch{b:02d}",
                    agent=t % 2, character_id=f"ch{(a, b)[t % 2]:02d}", model=model, partner_model=model,
                    condition="interactive", utterance=t, text="", left=False,
                )
            )
    info = ModelInfo(model, f"synthetic:{relation}", None, n_layers, hidden)
    identity = dict(relation=relation, n_episodes=n_episodes, turns=turns, n_layers=n_layers, hidden=hidden,
                    scale=scale, noise=noise, massive=massive, seed=seed)
    writer = CacheWriter(path, config=identity, identity=identity, models=[info], dtype="float32")
    writer.write_shard(rows, {(model, "interactive"): np.stack(states)})
    writer.finalize()
    return Path(path)
