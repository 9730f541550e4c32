"""Synthetic caches with a planted relation, for tests and for checking an analysis end to end.

Agent 0's states are i.i.d. standard normal; agent 1's state at utterance ``t + lag`` is a
function of agent 0's state at ``t`` plus noise, so ``A->B`` pairs at that lag carry the planted
relation and ``B->A`` pairs carry none (an even ``lag`` plants it in agent 0's own next states
instead). With ``n_agents`` N > 2 (round robin: utterance ``t`` is agent ``t % N``'s) or an
explicit ``plant=(i, j)``, agent j's ``lag``-th utterance after each utterance of agent i carries
the relation and every other ordered pair none. Every layer is an orthogonal rotation of the
same latent state, so every (source, target) layer pair has the same population R²:

- ``linear``: ``y = c * Q x + noise``: R² = c² / (c² + noise²) per output dimension.
- ``quadratic``: ``y_j = c * (x_{p(j)}² - 1) / sqrt(2) + noise``: uncorrelated with ``x``, so an
  affine probe gets R² ≈ 0 while a nonlinear one can reach c² / (c² + noise²).
- ``none``: independent targets, R² ≈ 0.

``massive`` adds a constant to one dimension of every state (a "massive activation").
``shape`` adds one random vector per utterance index (times ``shape``) to every state: what
the conversation's position explains, shared by both agents (the context control removes it).
``seeds`` writes several runs of every episode (independent draws: no shared context).
``constant_first_layer`` makes layer 0 the same vector in every row, as the embedding output at
the last prompt token is in real caches (the same template token). ``observer_share`` w writes observer rows ``sqrt(w) x + sqrt(1 - w) noise``, so the observer
control's R² is w times the planted one. ``listener`` writes listener rows of independent noise.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import torch

from nsync.cache import CacheWriter, ModelInfo
from nsync.cache.layout import TurnRow
from nsync.stats.r2 import r2_from_rows


def planted_r2(scale: float, noise: float) -> float:
    """Population R² of the planted relation."""
    return scale**2 / (scale**2 + noise**2)


def _synthetic_row(episode: int, scenario: int, cast: list[str], t: int, seed: int, model: str, n_agents: int) -> dict:
    """The turns-table row of utterance ``t`` of a synthetic episode (agents take turns in order)."""
    return TurnRow(
        run_id=f"ep{episode:04d}|o0|s{seed}",
        episode_id=f"ep{episode:04d}",
        scenario_id=f"sc{scenario:02d}",
        scenario_codename=f"scenario_{scenario}",
        relationship="",
        character_a=cast[0],
        character_b=cast[1],
        agent=t % n_agents,
        character_id=cast[t % n_agents],
        model=model,
        partner_model=model,
        order=0,
        seed=seed,
        utterance=t,
        condition="interactive",
        characters="|".join(cast),
        n_agents=n_agents,
    ).as_dict()


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
    shape: float = 0.0,
    n_agents: int = 2,
    plant: tuple[int, int] | None = None,
    flag_share: float = 0.0,
    dtype: str = "float32",
    shard_rows: int | None = None,
    coupling_rank: int | None = None,
    both_directions: bool = False,
) -> Path:
    """Write a cache of ``n_episodes x seeds`` runs of ``turns`` utterances; return its path.

    ``coupling_rank``: the ``linear`` relation maps the source through a matrix of this rank (equal
    singular values, the same total signal as the full-rank map): the communication subspace has
    that many dimensions. ``both_directions``: each utterance depends on the one before it whoever
    spoke (two agents; states scaled to unit variance), so A->B and B->A are coupled alike.

    ``dtype``: the stored precision (``float16`` as ``nsync.simulate`` stores). ``shard_rows``:
    commit a shard whenever this many state rows have accumulated (at an episode's end), so a
    large cache (the 7B shape's benchmark) never holds all its states in memory at once.

    ``flag_share``: that share of replies is flagged ``echo:goal`` (the ``flag`` column), and a pair
    whose source or target reply is flagged carries no synchrony (the target state is noise).
    """
    if plant is None and n_agents > 2:
        plant = (0, 1)
    if plant is not None:
        source, target = plant
        if not (0 <= source < n_agents and 0 <= target < n_agents and source != target):
            raise ValueError(f"plant must be two different agents below n_agents={n_agents}, got {plant}")
        # round robin: agent `target` speaks this many utterances after agent `source`, then every N
        gap = (target - source) % n_agents + (lag - 1) * n_agents
    rng = np.random.default_rng(seed)
    rotations = [np.linalg.qr(rng.normal(size=(hidden, hidden)))[0] for _ in range(n_layers + 1)]
    mixing = np.linalg.qr(rng.normal(size=(hidden, hidden)))[0]
    perm = rng.permutation(hidden)
    # The conversation's shape: one vector per utterance index (drawn only when asked, so other caches keep their draws).
    profile = shape * rng.normal(size=(turns, hidden)) if shape else np.zeros((turns, hidden))
    if coupling_rank is not None:  # drawn only when asked, as the profile
        if not 1 <= coupling_rank <= hidden:
            raise ValueError(f"coupling_rank must be from 1 to hidden={hidden}, got {coupling_rank}")
        left, right = (np.linalg.qr(rng.normal(size=(hidden, hidden)))[0][:, :coupling_rank] for _ in range(2))
        mixing = np.sqrt(hidden / coupling_rank) * left @ right.T
    rows: list[dict] = []
    states: dict[str, list[np.ndarray]] = {"interactive": [], "observer": [], "listener": []}
    info = ModelInfo(model, f"synthetic:{relation}", None, n_layers, hidden)
    identity = dict(
        relation=relation,
        n_episodes=n_episodes,
        turns=turns,
        n_layers=n_layers,
        hidden=hidden,
        scale=scale,
        noise=noise,
        massive=massive,
        seed=seed,
        lag=lag,
        seeds=seeds,
        observer_share=observer_share,
        listener=listener,
        constant_first_layer=constant_first_layer,
        shape=shape,
        n_agents=n_agents,
        plant=plant,
        **({"flag_share": flag_share} if flag_share else {}),
        **({"coupling_rank": coupling_rank} if coupling_rank is not None else {}),
        **({"both_directions": True} if both_directions else {}),
    )
    writer = CacheWriter(path, config=identity, identity=identity, models=[info], dtype=dtype)

    # Every layer is a rotation of the latent states (one matrix product per layer, not per row).
    def to_layers(z: np.ndarray) -> np.ndarray:
        out = np.empty((len(z), n_layers + 1, hidden), dtype=np.float32)
        for i, r in enumerate(rotations):
            out[:, i] = z @ r.T
        out += np.float32(massive) * np.eye(1, hidden, dtype=np.float32)[0]
        if constant_first_layer:
            out[:, 0] = rotations[0][0]
        return out

    done = writer.done_runs()  # written into its own folder again, it adds only what a crash left out

    def commit() -> None:
        keep = {c: [r["run_id"] not in done for r in rows if r["condition"] == c] for c in states}
        kept = {c: [z for z, k in zip(v, keep[c], strict=True) if k] for c, v in states.items()}
        writer.write_shard([r for r in rows if r["run_id"] not in done], {(model, c): to_layers(np.stack(v)) for c, v in kept.items() if v})
        rows.clear()
        for v in states.values():
            v.clear()

    for e in range(n_episodes):
        cast = [f"ch{c:02d}" for c in rng.choice(n_characters, size=n_agents, replace=False)]
        scenario = e % n_scenarios
        for s in range(seeds):
            latent: list[np.ndarray] = []
            flags = rng.random(turns) < flag_share if flag_share else np.zeros(turns, dtype=bool)
            for t in range(turns):
                if plant is None:  # two agents: the utterance `lag` before, when agent 0 spoke it (or anyone: both_directions)
                    back = lag if t >= lag and ((t - lag) % 2 == 0 or both_directions) else 0
                else:
                    back = gap if t % n_agents == target and t >= gap and (t - gap) % n_agents == source else 0
                if not back or relation == "none" or flags[t] or flags[t - back]:
                    z = rng.normal(size=hidden)
                elif relation == "linear":
                    z = scale * mixing @ latent[t - back] + noise * rng.normal(size=hidden)
                    if both_directions:  # a chain over the whole conversation: kept at unit variance
                        z /= np.sqrt(scale**2 + noise**2)
                elif relation == "quadratic":
                    z = scale * (latent[t - back][perm] ** 2 - 1) / np.sqrt(2) + noise * rng.normal(size=hidden)
                else:
                    raise ValueError(f"unknown relation '{relation}'")
                latent.append(z)
                row = _synthetic_row(e, scenario, cast, t, s, model, n_agents)
                if flag_share:
                    row["flag"] = "echo:goal" if flags[t] else ""
                rows.append(row)
                states["interactive"].append(z + profile[t])
                if observer_share is not None:
                    w = observer_share
                    rows.append(row | dict(condition="observer"))
                    states["observer"].append(np.sqrt(w) * z + np.sqrt(1 - w) * rng.normal(size=hidden) + profile[t])
                if listener:
                    for other in [k for k in range(n_agents) if k != t % n_agents]:
                        rows.append(row | dict(condition="listener", agent=other, character_id=cast[other]))
                        states["listener"].append(rng.normal(size=hidden))
        if shard_rows and len(rows) >= shard_rows:
            commit()
    if rows:
        commit()
    writer.finalize()
    return Path(path)


def planted_fits(
    rng: np.random.Generator,
    couplings: tuple[float, ...] = (1.0, 0.6, 0.3),
    source_noise: tuple[float, ...] = (0.5, 1.0),
    n_episodes: int = 60,
    split_seeds: int = 3,
    test_size: float = 0.34,
    val_size: float = 0.2,
    turns: int = 8,
    hidden: int = 6,
    shape: float = 1.0,
    alpha: float = 1.0,
    population: int = 2000,
    target_choice: str = "validation",
) -> dict:
    """Fitted probes' test-side sums over several split seeds and the population SyncR² they
    estimate, for checking intervals (no cache, no Lightning: plain numpy ridge).

    Pairs come in episodes of ``turns`` pairs. Each episode has its own offset of the targets
    (``shape``: what the conversation's shape explains, shared by its pairs), so pairs within an
    episode are dependent. Target layer ``t`` is ``couplings[t] * x Q_t + offset + noise``;
    source layer ``s`` sees ``x + source_noise[s] * noise``. As ``nsync.fit`` does, each split
    seed holds out ``test_size`` of the ``n_episodes`` episodes (test sides of different seeds
    overlap), and chooses each source layer's target layer on validation episodes (``val_size``
    of the training side; ``target_choice="test"``: the best test R², the paper's rule, and the
    replicates re-pick among all targets); the probe is refitted on the whole training side.

    The truth is what the test sides estimate: the fitted probes' R² on ``population`` fresh
    episodes at the chosen target (with ``"test"``: the best target in the population), clipped
    at 0, averaged over source layers and split seeds. Returns ``seeds`` (per split seed: test
    ``episodes`` ids, ``sums`` per source layer: ``n [E]`` and ``s1``, ``s2``, ``sse``
    ``[E, targets, hidden]`` float64 tensors, the ``targets`` the replicates pick among per source
    layer, ``truth_per_source``), ``truth`` and ``truth_per_source`` (mean over seeds).
    """
    n_t, n_s = len(couplings), len(source_noise)
    rotations = [np.linalg.qr(rng.normal(size=(hidden, hidden)))[0] for _ in range(n_t)]

    def draw(n: int):
        x = rng.normal(size=(n, turns, hidden))
        offset = shape * rng.normal(size=(n, 1, hidden))
        ys = np.stack([c * x @ q + offset + rng.normal(size=x.shape) for c, q in zip(couplings, rotations, strict=True)], 2)
        xs = np.stack([x + s * rng.normal(size=x.shape) for s in source_noise], 2)
        return xs, ys  # [E, turns, sources, hidden], [E, turns, targets, hidden]

    def fit(xs, ys, episodes) -> dict:
        weights = {}
        for s in range(n_s):
            x = xs[episodes, :, s].reshape(-1, hidden)
            xm = x.mean(0)
            gram = (x - xm).T @ (x - xm) + alpha * np.eye(hidden)
            for t in range(n_t):
                y = ys[episodes, :, t].reshape(-1, hidden)
                w = np.linalg.solve(gram, (x - xm).T @ (y - y.mean(0)))
                weights[s, t] = (w, y.mean(0) - xm @ w)
        return weights

    def r2(weights, xs, ys, s: int, t: int) -> float:
        w, b = weights[s, t]
        y = ys[:, :, t].reshape(-1, hidden)
        return float(r2_from_rows(torch.from_numpy(y), torch.from_numpy(xs[:, :, s].reshape(-1, hidden) @ w + b)))

    xs, ys = draw(n_episodes)
    pop_x, pop_y = draw(population)
    n_test = max(1, round(test_size * n_episodes))
    seeds: list[dict[str, Any]] = []
    for _ in range(split_seeds):
        order = rng.permutation(n_episodes)
        test, train = np.sort(order[:n_test]), order[n_test:]
        n_val = max(1, round(val_size * len(train)))
        if target_choice == "validation":
            first = fit(xs, ys, train[n_val:])
            val = train[:n_val]
            chosen = [[int(np.argmax([r2(first, xs[val], ys[val], s, t) for t in range(n_t)]))] for s in range(n_s)]
        elif target_choice == "test":
            chosen = [list(range(n_t)) for _ in range(n_s)]
        else:
            raise ValueError(f"target_choice must be validation or test, got '{target_choice}'")
        weights = fit(xs, ys, train)
        sums, truth = [], []
        for s in range(n_s):
            sse = np.stack([((ys[test, :, t] - xs[test, :, s] @ weights[s, t][0] - weights[s, t][1]) ** 2).sum(1) for t in range(n_t)], 1)
            sums.append(
                {
                    "n": torch.full((n_test,), float(turns), dtype=torch.float64),
                    "s1": torch.from_numpy(ys[test].sum(1)),
                    "s2": torch.from_numpy((ys[test] ** 2).sum(1)),
                    "sse": torch.from_numpy(sse),
                }
            )
            truth.append(max(max(r2(weights, pop_x, pop_y, s, t) for t in chosen[s]), 0.0))
        seeds.append({"episodes": [f"ep{i:03d}" for i in test], "sums": sums, "targets": chosen, "truth_per_source": truth})
    per_source = np.mean([s["truth_per_source"] for s in seeds], axis=0)
    return {"seeds": seeds, "truth": float(per_source.mean()), "truth_per_source": per_source.tolist()}


#: The re-read "model" of :func:`write_partition_cache`: the shared text, as a text embedder's states would be.
PLANTED_TEXT = "text:planted"


def write_partition_cache(
    path: str | Path,
    text: float = 1.0,
    private: float = 0.0,
    own_past: float = 0.6,
    noise: float = 1.0,
    n_episodes: int = 200,
    turns: int = 8,
    hidden: int = 6,
    seed: int = 0,
    model: str = "synthetic",
    text_scale: float = 1.0,
    opening: float = 0.0,
    state_scale: float = 1.0,
) -> tuple[Path, float]:
    """A two-agent cache for variance partitioning with a known answer, written through the
    public cache writer; returns its path and the population unique share of ``A->B`` beyond
    the shared text and the partner's own past.

    At each of agent 0's utterances ``u`` the transcript carries a text state ``τ_u`` (written as
    the ``teacher_forced`` states of :data:`PLANTED_TEXT`, one per utterance) and the speaker a
    private state ``π_u``; its state is ``τ_u + π_u``. Agent 1's next state is
    ``text τ_u + private π_u + own_past h + noise ε``, with ``h`` its own previous state (none
    before its first utterance). All latents are standard normal per dimension; every layer is a
    rotation of the state. Beyond ``[text, own_past]`` only the private part is the source's own:
    its population share is ``private² / mean Var(target)`` (0 with ``private=0``). The text states
    are written times ``text_scale`` (a sentence embedding of norm 1 beside a model's residual
    stream: the same information at another scale). ``opening`` adds that much to every dimension
    of the speaker's first state and of the partner's first (the one without an own past): both
    agents know a conversation's start, the text does not; only the partner's own past says it
    (its indicator). ``state_scale`` multiplies every agent state (a residual stream's norms).
    """
    rng = np.random.default_rng(seed)
    rotations = [np.linalg.qr(rng.normal(size=(hidden, hidden)))[0] for _ in range(2)]
    rows, interactive, tf_rows, texts = [], [], [], []
    for e in range(n_episodes):
        cast = [f"ch{c:02d}" for c in rng.choice(12, size=2, replace=False)]
        before = None  # agent 1's previous state
        for t in range(turns):
            tau = rng.normal(size=hidden)
            if t % 2 == 0:
                pi = rng.normal(size=hidden)
                state, last = tau + pi + (opening if t == 0 else 0.0), (tau, pi)
            else:
                state = text * last[0] + private * last[1] + noise * rng.normal(size=hidden)
                state = state + (own_past * before if before is not None else opening)
                before = state
            row = _synthetic_row(e, e % 10, cast, t, 0, model, 2)
            rows.append(row)
            interactive.append(state_scale * state)
            tf_rows.append(row | dict(model=PLANTED_TEXT, partner_model=PLANTED_TEXT, condition="teacher_forced"))
            texts.append(tau)
    info = ModelInfo(model, "synthetic:partition", None, 1, hidden)
    identity = dict(
        kind="partition", text=text, private=private, own_past=own_past, noise=noise, n_episodes=n_episodes, turns=turns, hidden=hidden, seed=seed
    )
    for key, value, default in (("text_scale", text_scale, 1.0), ("opening", opening, 0.0), ("state_scale", state_scale, 1.0)):
        if value != default:  # older caches keep their identity
            identity[key] = value
    # Written into its own folder again, it writes nothing twice (each part is one atomic shard).
    writer = CacheWriter(path, config=identity, identity=identity, models=[info], dtype="float32")
    if not writer.done_runs(model):
        layers = np.stack([np.stack(interactive) @ r.T for r in rotations], 1).astype(np.float32)
        writer.write_shard(rows, {(model, "interactive"): layers})
    writer.finalize()
    text_info = ModelInfo(PLANTED_TEXT, "synthetic:text", None, 0, hidden, ["mean_pool"], derived={"kind": "text"})
    extend = CacheWriter.extend(path, [text_info])
    if not extend.done_runs(PLANTED_TEXT):
        extend.write_shard(tf_rows, {(PLANTED_TEXT, "teacher_forced"): (text_scale * np.stack(texts))[:, None].astype(np.float32)})
    extend.finalize()
    # Var of agent 1's state at its k-th utterance: text² + private² + noise² + own_past² Var at the
    # (k-1)-th; its mean: the opening, carried on by the own past. The pooled variance adds how far
    # the utterances' means lie apart.
    variances, means, v, m = [], [], 0.0, 0.0
    for k in range(turns // 2):
        v = text**2 + private**2 + noise**2 + (own_past**2 * v if k else 0.0)
        m = own_past * m if k else opening
        variances.append(v)
        means.append(m)
    return Path(path), private**2 / float(np.mean(variances) + np.var(means))
