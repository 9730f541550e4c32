"""Conversation quality: how often the bundled models recite their prompt instead of talking,
per model, prompt format and generation setting, with the speed each setting costs.

    python experiments/benchmarks/conversation_quality.py                      # every model, format and setting
    python experiments/benchmarks/conversation_quality.py --models smollm2-135m --formats sotopia --episodes 16
    python experiments/benchmarks/conversation_quality.py --settings paper,default --episodes 48

The same SOTOPIA episodes (the export in ../shared/data/sotopia, else the built-in pack) run in
every setting, in the study's conditions (16 utterances, temperature 0.7, first line, at most 60 new
tokens, 16 episodes in flight, interactive states captured). Every utterance has its own random
stream, so settings differ only by what they change. Per setting: the share of replies flagged
(empty, early leave, echo by what it recites: nsync.simulation.echo), the share that nearly repeat
an earlier reply of the same episode, mean reply length in words and utterances/s (and its ratio to
the ``paper`` setting of the same model and format, measured in the same run).

Settings (each on top of ``paper``, except ``default``):
  paper         the paper's prompt (fields layout) and sampling, no re-sampling: nsync before this benchmark
  prose         prompt_layout=prose: context as paragraphs, the private goal stated once as an instruction
  no_repeat     sampling.no_repeat_ngram=4: no run of 4 tokens of the prompt or the reply repeated
  penalty, penalty_mild   sampling.repetition_penalty=1.2 / 1.1 over the prompt's and the reply's tokens
  stop_labels   sampling.stop_strings at the context's field labels ("'s goal:", "'s background:", ...)
  resample      resample_echo=true: a reply that recites is sampled again (at most max_resamples times)
  no_repeat_resample, no_repeat6_resample, no_repeat8_resample (bans of 6 and 8 tokens), prose_resample, prose_no_repeat, prose_no_repeat_resample, prose_penalty,
  penalty_resample, penalty_mild_resample: combinations
  default       nsync's current defaults (whatever SimulateConfig says now)

"on topic" is a crude relevance check (a word of five letters or more shared with the scenario,
the speaker's goal, the names or the two lines before): a setting that stops recitation by pushing
replies away from every word of the prompt (a repetition penalty does) shows up there.
"""

from __future__ import annotations

import argparse
import copy
import json
import time
from pathlib import Path

import pandas as pd

PAPER = {"prompt_layout": "fields", "resample_echo": False, "sampling.no_repeat_ngram": 0, "sampling.repetition_penalty": 1.0,
         "sampling.stop_strings": []}
SETTINGS = {
    "paper": {},
    "prose": {"prompt_layout": "prose"},
    "no_repeat": {"sampling.no_repeat_ngram": 4},
    "penalty_mild": {"sampling.repetition_penalty": 1.1},
    "penalty": {"sampling.repetition_penalty": 1.2},
    "stop_labels": {"sampling.stop_strings": ["'s goal:", "'s background:", "'s secrets:", "Scenario:", "Participants:"]},
    "resample": {"resample_echo": True},
    "prose_resample": {"prompt_layout": "prose", "resample_echo": True},
    "no_repeat_resample": {"sampling.no_repeat_ngram": 4, "resample_echo": True},
    "no_repeat6_resample": {"sampling.no_repeat_ngram": 6, "resample_echo": True},
    "no_repeat8_resample": {"sampling.no_repeat_ngram": 8, "resample_echo": True},
    "prose_no_repeat": {"prompt_layout": "prose", "sampling.no_repeat_ngram": 4},
    "prose_no_repeat_resample": {"prompt_layout": "prose", "sampling.no_repeat_ngram": 4, "resample_echo": True},
    "prose_penalty": {"prompt_layout": "prose", "sampling.repetition_penalty": 1.2},
    "penalty_resample": {"sampling.repetition_penalty": 1.2, "resample_echo": True},
    "penalty_mild_resample": {"sampling.repetition_penalty": 1.1, "resample_echo": True},
    "default": None,  # SimulateConfig's defaults, untouched
}
SOTOPIA = (Path(__file__).resolve().parents[2] / ".." / "shared" / "data" / "sotopia").resolve()


def configure(base, setting: str):
    """``base`` with a setting's keys applied (``default``: unchanged)."""
    cfg = copy.deepcopy(base)
    overrides = SETTINGS[setting]
    for key, value in ({} if overrides is None else PAPER | overrides).items():
        target = cfg
        *path, last = key.split(".")
        for part in path:
            target = getattr(target, part)
        setattr(target, last, value)
    return cfg


STOP = set("about after again being could every first going great hello really right should their there these thing think those through would which while where your yours you're that's there's i'm it's what's".split())


def on_topic(text: str, run, k: int) -> bool:
    """A crude relevance check: the reply shares a word of five letters or more (not a common one)
    with the scenario, the speaker's goal, the characters' names or the two lines before it.
    Settings that stop recitation by pushing replies away from every prompt word fail it."""
    from nsync.simulation.echo import words

    ep = run.episode
    speaker = run.history[k].agent
    topic = " ".join([ep.scenario.scenario, ep.scenario.goals[speaker], *(c.name for c in ep.characters),
                      *(u.text for u in run.history[max(0, k - 2):k])])
    vocabulary = {w for w in words(topic) if len(w) >= 5} - STOP
    return bool(vocabulary & set(words(text)))


def measure(runs, seconds: float, stats) -> dict:
    """The quality figures of finished runs."""
    from nsync.cache.layout import flagged
    from nsync.simulation.echo import near_duplicate

    rows = [row for run in runs for row in run.rows if row["condition"] == "interactive"]
    flags = pd.Series([row["flag"] for row in rows])
    n = max(len(rows), 1)
    share = lambda mask: float(mask.sum()) / n  # noqa: E731
    has = lambda name: flagged(flags, [name])  # noqa: E731
    kinds = flags.str.split(",").explode()
    kinds = kinds[kinds.str.startswith("echo:")].str.removeprefix("echo:").value_counts()
    repeats = sum(any(near_duplicate(u.text, h.text) for h in run.history[:k]) for run in runs for k, u in enumerate(run.history))
    return {
        "replies": len(rows),
        "flagged": share(flags.str.len() > 0),
        "echo": share(has("echo")),
        "empty": share(has("empty")),
        "early_leave": share(has("early_leave")),
        "echo_by_kind": {k: int(v) for k, v in kinds.items()},
        "near_duplicates": repeats / n,
        "on_topic": sum(on_topic(u.text, run, k) for run in runs for k, u in enumerate(run.history)) / n,
        "mean_words": sum(len(row["text"].split()) for row in rows) / n,
        "resampled": stats.resampled,
        "utterances_per_s": stats.utterances / seconds,
        "seconds": seconds,
    }


def main() -> None:
    from nsync.config import load_config
    from nsync.models import ModelConfig, load_model
    from nsync.scenarios import load_scenarios
    from nsync.simulation.config import SimulateConfig
    from nsync.simulation.engine import Simulator, plan_runs
    from nsync.simulation.prompts import prompt_format

    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--models", default="smollm2-135m,gemma3-270m")
    parser.add_argument("--formats", default="sotopia,chat,transcript")
    parser.add_argument("--settings", default=",".join(SETTINGS))
    parser.add_argument("--episodes", type=int, default=24)
    parser.add_argument("--turns", type=int, default=16)
    parser.add_argument("--max-new-tokens", type=int, default=60)
    parser.add_argument("--out", default="runs/benchmarks/conversation_quality")
    args = parser.parse_args()
    unknown = [s for s in args.settings.split(",") if s not in SETTINGS]
    if unknown:
        parser.error(f"unknown settings {unknown}; choose from {list(SETTINGS)}")
    source = str(SOTOPIA) if SOTOPIA.is_dir() else "builtin"
    episodes = load_scenarios(source).select(limit=args.episodes)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    results = []
    for model in args.models.split(","):
        lm = None
        done_formats = set()
        for fmt in args.formats.split(","):
            base = load_config(SimulateConfig, [
                "out=unused", f"models=[{model}]", f"prompt_format={fmt}", f"max_turns={args.turns}",
                f"sampling.max_new_tokens={args.max_new_tokens}", "sampling.temperature=0.7", "episodes_in_flight=16",
                "capture.observer=false", "progress=false",
            ], prog="bench")
            lm = lm or load_model(ModelConfig(name=model, dtype=base.dtype, device=base.device))
            used = prompt_format(lm, fmt)
            if used in done_formats:  # a base model reads every format as a transcript
                continue
            done_formats.add(used)
            Simulator(base, {model: lm}, writer=None).run(plan_runs(base, episodes[:2]))  # warm-up, not measured
            for setting in args.settings.split(","):
                cfg = configure(base, setting)
                runs = plan_runs(cfg, episodes)
                start = time.perf_counter()
                stats = Simulator(cfg, {model: lm}, writer=None).run(runs)
                row = {"model": model, "format": used, "setting": setting, **measure(runs, time.perf_counter() - start, stats)}
                results.append(row)
                with open(out / f"replies_{model.replace('/', '__')}_{used}_{setting}.jsonl", "w") as fh:  # to read what was flagged
                    for run in runs:
                        for r in run.rows:
                            fh.write(json.dumps({k: r[k] for k in ("run_id", "utterance", "agent", "text", "flag", "resampled")}) + "\n")
                kinds = ", ".join(f"{k} {v}" for k, v in row["echo_by_kind"].items())
                print(f"{model} {used:>10} {setting:>24}: flagged {row['flagged']:6.1%} (echo {row['echo']:.1%}: {kinds or '-'}; "
                      f"empty {row['empty']:.1%}), near-duplicates {row['near_duplicates']:6.1%}, on topic {row['on_topic']:6.1%}, {row['mean_words']:5.1f} words, "
                      f"{row['utterances_per_s']:.2f} utterances/s, {row['resampled']} re-sampled", flush=True)
                (out / "results.json").write_text(json.dumps(results, indent=1))
    table = pd.DataFrame(results)
    paper = table[table["setting"] == "paper"].set_index(["model", "format"])["utterances_per_s"]
    table["speed_vs_paper"] = [r.utterances_per_s / paper.get((r.model, r.format), float("nan")) for r in table.itertuples()]
    table["echo_by_kind"] = table["echo_by_kind"].apply(lambda d: ", ".join(f"{k} {v}" for k, v in d.items()) or "-")
    cols = ["model", "format", "setting", "replies", "flagged", "echo", "echo_by_kind", "empty", "near_duplicates", "on_topic", "mean_words",
            "utterances_per_s", "speed_vs_paper"]
    fmt_pct = {c: "{:.1%}".format for c in ("flagged", "echo", "empty", "near_duplicates", "on_topic")}
    shown = table[cols].copy()
    for c, f in fmt_pct.items():
        shown[c] = shown[c].map(f)
    for c in ("mean_words", "utterances_per_s", "speed_vs_paper"):
        shown[c] = shown[c].map("{:.2f}".format)
    markdown = shown.to_markdown(index=False)
    (out / "table.md").write_text(markdown + "\n")
    print(markdown)
    print(f"{len(episodes)} episodes ({source}) x {args.turns} utterances per setting; wrote {out}/results.json and {out}/table.md")


if __name__ == "__main__":
    main()
