"""What ``python -m nsync.judge`` does: score every run of a cache and write a table beside it.

Each judgement is stored as ``<cache>/judge/<name>/episodes/<hash>.json``, where the hash covers
the judge's identity (backend, model, settings) and the exact prompt; re-running re-uses every
stored judgement, so it is free, and a kill loses at most the episode being judged. The table
``scores.csv`` / ``scores.parquet`` has one row per run and agent.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import logging
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Optional

import pandas as pd
from omegaconf import MISSING
from tqdm.auto import tqdm

from nsync.cache import ActivationCache
from nsync.errors import NsyncError, configure_logging
from nsync.judge.rubric import DIMENSION_NAMES, agent_keys
from nsync.judge.schema import overall
from nsync.simulation.prompts import conversations as prompt_conversations
from nsync.storage import write_json_atomic

if TYPE_CHECKING:  # the backends (torch) load when a judge is built: --help stays quick
    from nsync.judge.backends import Judgement

log = logging.getLogger("nsync.judge")


@dataclass
class JudgeConfig:
    """Score the social performance of every conversation in a cache (SOTOPIA-Eval dimensions)."""

    cache: str = field(default=MISSING, metadata={"help": "activation cache whose conversations are judged"})
    name: Optional[str] = field(default=None, metadata={"help": "judge name: results go to CACHE/judge/NAME (default: the model name)"})
    backend: str = field(
        default="local",
        metadata={"help": "a registered judge backend: local (a zoo model's probabilities), openai (any OpenAI-compatible endpoint), or your own"},
    )
    options: dict[str, Any] = field(default_factory=dict, metadata={"help": "settings of a judge backend registered outside nsync (free-form)"})
    model: str = field(default="smollm2-135m", metadata={"help": "local: a zoo model; openai: the served model's name"})
    base_url: str = field(default="http://127.0.0.1:8000/v1", metadata={"help": "openai: the endpoint (vLLM, llama.cpp server, Ollama, OpenAI)"})
    api_key_env: str = field(default="OPENAI_API_KEY", metadata={"help": "openai: environment variable holding the API key (never logged)"})
    temperature: float = field(default=0.0, metadata={"help": "openai: sampling temperature (the paper: 0)"})
    max_tokens: int = field(default=1024, metadata={"help": "openai: most tokens per answer"})
    max_attempts: int = field(default=3, metadata={"help": "openai: attempts per episode before it is recorded as a failure"})
    timeout: float = field(default=120.0, metadata={"help": "openai: seconds per request"})
    scenarios: Optional[str] = field(default=None, metadata={"help": "scenario source (default: the one the cache was simulated from)"})
    device: str = field(default="cpu", metadata={"help": "local: cpu, cuda, cuda:N or auto"})
    dtype: str = field(default="float32", metadata={"help": "local: model precision"})
    progress: bool = field(default=True, metadata={"help": "show a progress bar"})

    def __post_init__(self) -> None:
        from nsync.judge.backends import JUDGE_BACKENDS

        if self.backend not in JUDGE_BACKENDS:
            raise NsyncError(f"backend must be one of {JUDGE_BACKENDS.names()}, got '{self.backend}'")


def make_judge(cfg: JudgeConfig):
    """The configured judge backend."""
    from nsync.judge.backends import JUDGE_BACKENDS

    return JUDGE_BACKENDS.get(cfg.backend).from_config(cfg)


def conversations(cache: ActivationCache, scenarios: str | None = None):
    """(run's rows, episode, history) for every run of the cache, in run order."""
    from nsync.scenarios import load_scenarios

    source = cache.scenario_source(scenarios)
    episodes = {e.id: e for e in load_scenarios(source).episodes}
    for _, rows, history in prompt_conversations(cache.turns):
        first = rows.iloc[0]
        if first.episode_id not in episodes:
            raise NsyncError(f"episode {first.episode_id} of the cache is not in the scenario source '{source}'; set scenarios=...")
        yield rows, episodes[first.episode_id], history


def judge_cache(cfg: JudgeConfig, judge=None) -> tuple[Path, pd.DataFrame]:
    """Judge every run (re-using stored judgements); return the output folder and the table.
    ``judge`` overrides building one from the config (tests)."""
    from nsync.judge.backends import Judgement

    cache = ActivationCache.open(cfg.cache)
    judge = judge or make_judge(cfg)
    name = cfg.name or cfg.model.replace("/", "__")
    out = Path(cfg.cache) / "judge" / name
    (out / "episodes").mkdir(parents=True, exist_ok=True)
    identity = judge.identity()
    convs = list(conversations(cache, cfg.scenarios))
    rows, fresh, failed = [], 0, 0
    for rows_of_run, episode, history in tqdm(convs, desc=f"judging ({name})", unit="ep", disable=not cfg.progress):
        run = rows_of_run.iloc[0]
        prompt = judge.prompt(episode, history)
        key = hashlib.sha256(json.dumps({"judge": identity, "prompt": prompt}, sort_keys=True).encode()).hexdigest()[:20]
        path = out / "episodes" / f"{key}.json"
        if path.exists():
            stored = json.loads(path.read_text())
            judgement = Judgement(**stored["judgement"])
        else:
            judgement = judge.score(episode, history)
            write_json_atomic(path, {"run_id": run.run_id, "judge": identity, "judgement": dataclasses.asdict(judgement)})
            fresh += 1
        failed += not judgement.ok
        rows += _rows(rows_of_run, episode, judgement, name, key)
    table = pd.DataFrame(rows)
    tmp = out / ".scores.parquet.tmp"
    table.to_parquet(tmp, index=False)
    tmp.replace(out / "scores.parquet")
    table.to_csv(out / "scores.csv", index=False)
    write_json_atomic(out / "judge.json", {"name": name, "judge": identity, "runs": len(convs), "failed": failed, "judged_now": fresh})
    log.info("%d runs judged (%d now, %d re-used), %d failed", len(convs), fresh, len(convs) - fresh, failed)
    return out, table


def _rows(run_rows, episode, j: Judgement, judge_name: str, key: str) -> list[dict]:
    """One row per agent; failures keep their row, with empty scores and the raw answers."""
    run = run_rows.iloc[0]
    # each agent's model, from its utterances; an agent who never spoke plays the other agents' model
    models = run_rows.groupby("agent")["model"].first().to_dict()
    models = {a: models.get(a, run.partner_model if a != run.agent else run.model) for a in range(episode.n_agents)}
    rows = []
    for agent, side in enumerate(agent_keys(episode.n_agents)):
        others = "|".join(dict.fromkeys(m for a, m in models.items() if a != agent))
        row = {
            "run_id": run.run_id,
            "episode_id": run.episode_id,
            "scenario_id": run.scenario_id,
            "seed": run.seed,
            "order": run.order,
            "agent": agent,
            "character_id": episode.characters[agent].id,
            "model": models[agent],
            "partner_model": others,
            "judge": judge_name,
            "status": "ok" if j.ok else "failed",
            "attempts": j.attempts,
        }
        scores = j.scores.get(side, {})
        for d in DIMENSION_NAMES:
            row[d] = scores.get(d)
            if j.argmax:
                row[f"{d}_argmax"] = j.argmax[side][d]
        row["overall"] = overall(scores) if j.ok else None
        row["error"] = j.error
        row["raw"] = "" if j.ok else "\n---\n".join(j.raw)
        row["judgement_file"] = f"episodes/{key}.json"
        rows.append(row)
    return rows


def main(argv: Sequence[str]) -> None:
    from nsync.config import load_config

    configure_logging()
    cfg = load_config(JudgeConfig, argv, prog="nsync judge")
    start = time.perf_counter()
    out, table = judge_cache(cfg)
    ok = table[table["status"] == "ok"]
    runs = table["run_id"].nunique()
    n_failed = table.loc[table["status"] == "failed", "run_id"].nunique()
    print(f"judged {runs} runs in {time.perf_counter() - start:.1f} s: {runs - n_failed} scored, {n_failed} failed")
    if len(ok):
        means = ok.groupby("model")["overall"].mean()
        for model, score in means.items():
            print(f"  {model}: overall {score:.2f} (mean over agents it played)")
    print(f"wrote {out}/scores.csv, scores.parquet, judge.json")
