"""Synthetic caches with a planted relation, for tests and for checking an analysis end to end.

Agent 0's states are i.i.d. standard normal; agent 1's state at utterance ``t + lag`` is a
function of agent 0's state at ``t`` plus noise, so ``A->B`` pairs at that lag carry the planted
relation and ``B->A`` pairs carry none (an even ``lag`` plants it in agent 0's own next states
instead). Every layer is an orthogonal rotation of the same latent state, so every (source,
target) layer pair has the same population R²:

- ``linear``: ``y = c * Q x + noise``: R² = c² / (c² + noise²) per output dimension.
- ``quadratic``: ``y_j = c * (x_{p(j)}² - 1) / sqrt(2) + noise``: uncorrelated with ``x``, so an
  affine probe gets R² ≈ 0 while a nonlinear one can reach c² / (c² + noise²).
- ``none``: independent targets, R² ≈ 0.

``massive`` adds a constant to one dimension of every state (a "massive activation").
``seeds`` writes several runs of every episode (independent draws: no shared context).
``constant_first_layer`` makes layer 0 the same vector in every row, as the embedding output at
the last prompt token is in real caches (the same template token). ``observer_share`` w writes observer rows ``sqrt(w) x + sqrt(1 - w) noise``, so the observer
control's R² is w times the planted one. ``listener`` writes listener rows of independent noise.
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
    lag: int = 1,
    seeds: int = 1,
    observer_share: float | None = None,
    listener: bool = False,
    constant_first_layer: bool = False,
) -> Path:
    """Write a cache of ``n_episodes x seeds`` runs of ``turns`` utterances; return its path."""
    rng = np.random.default_rng(seed)
    rotations = [np.linalg.qr(rng.normal(size=(hidden, hidden)))[0] for _ in range(n_layers + 1)]
    mixing = np.linalg.qr(rng.normal(size=(hidden, hidden)))[0]
    perm = rng.permutation(hidden)
    rows, states = [], {"interactive": [], "observer": [], "listener": []}
    for e in range(n_episodes):
        a, b = rng.choice(n_characters, size=2, replace=False)
        scenario = e % n_scenarios
        for s in range(seeds):
            latent = []
            for t in range(turns):
                planted = t >= lag and (t - lag) % 2 == 0 and relation != "none"
                if not planted:
                    z = rng.normal(size=hidden)
                elif relation == "linear":
                    z = scale * mixing @ latent[t - lag] + noise * rng.normal(size=hidden)
                elif relation == "quadratic":
                    z = scale * (latent[t - lag][perm] ** 2 - 1) / np.sqrt(2) + noise * rng.normal(size=hidden)
                else:
                    raise ValueError(f"unknown relation '{relation}'")
                latent.append(z)
                row = {c: 0 for c in TURN_COLUMNS} | dict(
                    run_id=f"ep{e:04d}|o0|s{s}", episode_id=f"ep{e:04d}", scenario_id=f"sc{scenario:02d}",
                    scenario_codename=f"scenario_{scenario}", character_a=f"ch{a:02d}", character_b=f"ch{b:02d}",
                    agent=t % 2, character_id=f"ch{(a, b)[t % 2]:02d}", model=model, partner_model=model, seed=s,
                    condition="interactive", utterance=t, text="", left=False,
                )
                rows.append(row)
                states["interactive"].append(z)
                if observer_share is not None:
                    w = observer_share
                    rows.append(row | dict(condition="observer"))
                    states["observer"].append(np.sqrt(w) * z + np.sqrt(1 - w) * rng.normal(size=hidden))
                if listener:
                    rows.append(row | dict(condition="listener", agent=1 - t % 2, character_id=f"ch{(a, b)[1 - t % 2]:02d}"))
                    states["listener"].append(rng.normal(size=hidden))
    info = ModelInfo(model, f"synthetic:{relation}", None, n_layers, hidden)
    identity = dict(relation=relation, n_episodes=n_episodes, turns=turns, n_layers=n_layers, hidden=hidden, scale=scale,
                    noise=noise, massive=massive, seed=seed, lag=lag, seeds=seeds, observer_share=observer_share, listener=listener,
                    constant_first_layer=constant_first_layer)
    writer = CacheWriter(path, config=identity, identity=identity, models=[info], dtype="float32")
    # Every layer is a rotation of the latent states (one matrix product per layer, not per row).
    def to_layers(z: np.ndarray) -> np.ndarray:
        out = np.stack([z @ r.T for r in rotations], axis=1).astype(np.float32) + np.float32(massive) * np.eye(1, hidden, dtype=np.float32)[0]
        if constant_first_layer:
            out[:, 0] = rotations[0][0]
        return out

    writer.write_shard(rows, {(model, c): to_layers(np.stack(v)) for c, v in states.items() if v})
    writer.finalize()
    return Path(path)
