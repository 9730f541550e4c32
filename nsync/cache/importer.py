"""Import the paper's released activations into an nsync cache.

The reference layout is one small file per utterance::

    SRC/<pair>/<source>/episode_<e>/t<temperature>_seed<s>/agent_<1|2>_turn_<k>/states.npy

each ``(n_layers, 1, hidden)`` float32; ``k`` counts utterances from 0, agent 1 speaks at even
``k`` and agent 2 at odd ``k``, and episode ``e`` is entry ``e`` of SOTOPIA's
``env_agent_combos.json``. Each ``<pair>/<source>`` folder becomes one model in the cache,
named ``<pair>/<source>`` (its layers are named ``layer_<i>`` as stored: the reference
arrays have no embedding row). Each ``episode/temperature_seed`` folder becomes one run.
"""

from __future__ import annotations

import re
from pathlib import Path

import numpy as np
from tqdm.auto import tqdm

from nsync.cache.layout import TurnRow
from nsync.cache.writer import CacheWriter, ModelInfo
from nsync.errors import NsyncError
from nsync.scenarios import load_sotopia

_RUN = re.compile(r"^t(?P<temp>[0-9.]+)_seed(?P<seed>-?\d+)$")
_TURN = re.compile(r"^agent_(?P<agent>[12])_turn_(?P<k>\d+)$")
_EPISODE = re.compile(r"^episode_(?P<e>\d+)$")


def _scan(src: Path) -> dict[str, list[tuple[int, float, int, Path]]]:
    """Per model folder ``pair/source``: (episode, temperature, seed, run folder)."""
    found: dict[str, list] = {}
    for pair in sorted(p for p in src.iterdir() if p.is_dir()):
        for source in sorted(p for p in pair.iterdir() if p.is_dir()):
            runs = []
            for ep in sorted(source.iterdir()):
                m = _EPISODE.match(ep.name)
                if not (m and ep.is_dir()):
                    continue
                for run in sorted(ep.iterdir()):
                    r = _RUN.match(run.name)
                    if r and run.is_dir():
                        runs.append((int(m["e"]), float(r["temp"]), int(r["seed"]), run))
            if runs:
                found[f"{pair.name}/{source.name}"] = runs
    if not found:
        raise NsyncError(
            f"{src} holds no runs in the reference layout <pair>/<source>/episode_<e>/t<temperature>_seed<s>/agent_<1|2>_turn_<k>/states.npy"
        )
    return found


def _turns(run: Path) -> list[tuple[int, int, Path]]:
    turns = []
    for d in run.iterdir():
        m = _TURN.match(d.name)
        if m and (d / "states.npy").is_file():
            agent, k = int(m["agent"]) - 1, int(m["k"])
            if agent != k % 2:
                raise NsyncError(f"{d}: agent {agent + 1} cannot speak at turn {k} (agent 1 speaks at even turns)")
            turns.append((k, agent, d / "states.npy"))
    turns.sort()
    ks = [k for k, _, _ in turns]
    if ks != list(range(len(ks))):
        raise NsyncError(f"{run}: turns {ks} are not consecutive from 0; a file is missing")
    return turns


def import_reference(src: str | Path, out: str | Path, sotopia: str | Path | None = None, dtype: str = "float32") -> Path:
    """Convert a reference tree into a cache at ``out``; returns ``out``."""
    src, out = Path(src), Path(out)
    if not src.is_dir():
        raise NsyncError(f"reference folder not found: {src}")
    library = load_sotopia(sotopia) if sotopia else None
    found = _scan(src)
    infos, first_shapes = [], {}
    for model, runs in found.items():
        first = _turns(runs[0][3])
        if not first:
            raise NsyncError(f"{runs[0][3]} holds no agent_<n>_turn_<k>/states.npy")
        shape = np.load(first[0][2], mmap_mode="r").shape
        if len(shape) != 3 or shape[1] != 1:
            raise NsyncError(f"{first[0][2]}: expected an array (n_layers, 1, hidden), got shape {shape}")
        first_shapes[model] = shape
        infos.append(ModelInfo(model, f"reference:{src.name}", None, shape[0], shape[2], [f"layer_{i}" for i in range(shape[0])]))
    identity = {"import_reference": str(src.resolve()), "sotopia": str(sotopia) if sotopia else None}
    with CacheWriter(out, config=identity, identity=identity, models=infos, dtype=dtype) as writer:  # a failure frees the folder at once
        done = writer.done_runs()
        total = sum(len(r) for r in found.values())
        with tqdm(total=total, desc="runs", unit="run") as bar:
            for model, runs in found.items():
                rows, states = [], []
                for e, temp, seed, run in runs:
                    run_id = f"{model}/episode_{e}/t{temp}_seed{seed}"
                    bar.update(1)
                    if run_id in done:
                        continue
                    ep = _episode(library, e, run)
                    for k, agent, path in _turns(run):
                        array = np.load(path)
                        if array.shape != first_shapes[model]:
                            raise NsyncError(f"{path}: shape {array.shape}, expected {first_shapes[model]} like the rest of {model}")
                        states.append(array[:, 0, :])
                        rows.append(
                            TurnRow(
                                run_id=run_id,
                                episode_id=ep["episode_id"],
                                scenario_id=ep["scenario_id"],
                                scenario_codename=ep["scenario_codename"],
                                relationship=ep["relationship"],
                                character_a=ep["characters"][0],
                                character_b=ep["characters"][1],
                                agent=agent,
                                character_id=ep["characters"][agent],
                                model=model,
                                partner_model=model,
                                order=0,
                                seed=seed,
                                utterance=k,
                                condition="interactive",
                                n_prompt_tokens=-1,
                                n_new_tokens=-1,
                                extra={"temperature": temp},
                            ).as_dict()
                        )
                    if len(rows) >= 4096:
                        writer.write_shard(rows, {(model, "interactive"): np.stack(states)})
                        rows, states = [], []
                if rows:
                    writer.write_shard(rows, {(model, "interactive"): np.stack(states)})
        writer.finalize()
    return out


def _episode(library, e: int, run: Path) -> dict:
    if library is None:
        return dict(episode_id=f"episode_{e}", scenario_id="", scenario_codename="", relationship=-1, characters=("", ""))
    if not 0 <= e < len(library.episodes):
        raise NsyncError(f"{run}: episode {e} is out of range for the SOTOPIA export ({len(library.episodes)} episodes)")
    ep = library.episodes[e]
    return dict(
        episode_id=ep.id,
        scenario_id=ep.scenario.id,
        scenario_codename=ep.scenario.codename,
        relationship=ep.scenario.relationship,
        characters=(ep.characters[0].id, ep.characters[1].id),
    )
