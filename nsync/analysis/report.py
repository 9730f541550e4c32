"""One page for a set of runs: ``python -m nsync report RUN_DIR... --out report.html``.

Each folder is recognised by what it holds: a fit run (``results.json``), a controls run
(``controls.csv``), an analysis (``analysis.json``) or a judge's output (``scores.csv``). HTML
embeds every figure (one self-contained file); Markdown copies the PNGs into ``<name>_files/``.
"""

from __future__ import annotations

import argparse
import base64
import html
import json
import shutil
import time
from collections.abc import Sequence
from pathlib import Path

import pandas as pd

from nsync.errors import NsyncError
from nsync.fit.results import FitResult, format_sync_r2
from nsync.fit.run_folder import RunFolder
from nsync.sweep import SUMMARY as SWEEP_SUMMARY

DIMENSIONS = ["believability", "relationship", "knowledge", "secret", "social_rules", "financial_and_material_benefits", "goal", "overall"]


def _fmt(x) -> str:
    if x is None or (isinstance(x, float) and x != x):
        return ""
    return f"{x:.4f}" if isinstance(x, float) else str(x)


def fit_section(run: Path) -> tuple[str, pd.DataFrame, list[Path]]:
    r = FitResult.load(run)
    rows = [
        ("models", f"{r.models['source']} -> {r.models['target']}"),
        ("probe / split / lag", f"{r.probe} / {r.split} / {r.lag}"),
        ("sources / targets / pairing", f"{r.condition} / {r.target_condition} / {r.pairing}"),
        ("SyncR²", r.headline()),
        ("raw SyncR² ± std over split seeds", f"{r.sync_r2:.4f} ± {r.sync_r2_std:.4f}"),
        ("unclipped SyncR² (raw)", _fmt(r.sync_r2_unclipped)),
    ]
    for direction, d in r.directions.items():
        rows.append((f"{direction}", f"{d.headline()}; n_train {d.n_train[0]}, n_test {d.n_test[0]}"))
    for baseline, part in r.partition.items():
        rows.append((f"beyond {baseline}", part.line(r.few_test_episodes)))
        rows += [(f"who leads beyond {baseline}", a.line(r.few_test_episodes)) for a in part.unique_asymmetry]
    if r.subspace is not None:
        rows.append(("communication subspace", r.subspace.line(r.few_test_episodes)))
        if r.subspace.tracks:
            rows.append(("what it follows", r.subspace.tracks_line()))
    rows += [("who leads", a.line(r.few_test_episodes)) for a in r.asymmetry]
    table = pd.DataFrame(rows, columns=["", "value"])
    # every figure the fit drew (nsync.fit.plots): profile, heatmaps, partition, time course, agent pairs
    named = ["r2_by_layer.png", "layer_profile.png", "partition.png", "time_course.png", "subspace.png", "agent_pairs.png"]
    images = [p for p in [*(run / n for n in named), *sorted(run.glob("heatmap_*.png"))] if p.exists()]
    return f"Fit: {run}", table, images


def sweep_section(run: Path) -> tuple[str, pd.DataFrame, list[Path]]:
    """A finished sweep's summary (``nsync sweep`` wrote it best point first) and its plot."""
    table = pd.read_csv(run / f"{SWEEP_SUMMARY}.csv").drop(columns="run", errors="ignore")
    images = [p for p in (run / f"{SWEEP_SUMMARY}.png",) if p.exists()]
    return f"Sweep: {run}", table, images


def controls_section(run: Path) -> tuple[str, pd.DataFrame, list[Path]]:
    t = pd.read_csv(run / "controls.csv")
    table = pd.DataFrame({"control": t["control"]})
    table["SyncR² [95% interval] (raw)"] = [_controls_headline(row) for _, row in t.iterrows()]
    if "diff_ci95_low" in t:
        table["minus main [95% interval]"] = [
            f"{_fmt(row.get('diff_bias_corrected', row.get('diff_vs_main')))} [{_fmt(row['diff_ci95_low'])}, {_fmt(row['diff_ci95_high'])}]"
            if pd.notna(row["diff_ci95_low"])
            else ""
            for _, row in t.iterrows()
        ]
    for c in ("sync_r2_A->B", "sync_r2_B->A", "skipped"):
        if c in t:
            table[c.replace("sync_r2_", "raw ")] = t[c]
    images = [p for p in (run / "controls.png", run / "lag_curve.png") if p.exists()]
    return f"Controls: {run}", table, images


def _controls_headline(row: pd.Series) -> str:
    """A controls.csv row's SyncR² as every surface writes it (:func:`nsync.fit.results.format_sync_r2`)."""
    if pd.isna(row.get("sync_r2")):
        return ""
    bias_corrected = row.get("sync_r2_bias_corrected")
    ci = (row["ci95_low"], row["ci95_high"]) if pd.notna(row.get("ci95_low")) else None
    few = row.get("few_test_episodes")
    few = few if isinstance(few, str) else None
    return format_sync_r2(float(row["sync_r2"]), None if pd.isna(bias_corrected) else float(bias_corrected), ci, few=few).removeprefix("SyncR² ")


def analysis_section(run: Path) -> tuple[str, pd.DataFrame, list[Path]]:
    a = json.loads((run / "analysis.json").read_text())
    pairs = pd.DataFrame(a["pairs"])[["pair", "sync_r2", "sync_r2_std", "social", "social_sem", "runs_judged", "runs_failed"]]
    lines = []
    for key in ("across_pairs", "across_episodes"):
        c = a.get(key)
        if c and c.get("pearson") is not None:
            ci = c.get("pearson_ci95")
            lines.append(
                {
                    "": key,
                    "n": c["n"],
                    "Pearson r": c["pearson"],
                    "p": c["pearson_p"],
                    "95% CI": f"[{ci[0]:.2f}, {ci[1]:.2f}]" if ci else "",
                    "Spearman": c["spearman"],
                    "Spearman p": c["spearman_p"],
                }
            )
        elif c:
            lines.append({"": key, "n": c["n"], "Pearson r": c.get("note", "")})
    if a.get("partial", {}).get("r") is not None:
        p = a["partial"]
        lines.append({"": f"partial, given {p['covariate']}", "n": p["n"], "Pearson r": p["r"], "p": p["p"]})
    table = pd.concat([pairs, pd.DataFrame(lines)], ignore_index=True) if lines else pairs
    images = [p for p in (run / "sync_vs_social.png", run / "r2_by_layer_pairs.png", run / "episodes_sync_vs_social.png") if p.exists()]
    return f"Synchrony and social performance (judge {a['judge']}): {run}", table, images


def judge_section(run: Path) -> tuple[str, pd.DataFrame, list[Path]]:
    s = pd.read_csv(run / "scores.csv")
    ok = s[s["status"] == "ok"]
    table = ok.groupby("model")[[d for d in DIMENSIONS if d in ok]].mean().reset_index()
    table["runs failed"] = s[s["status"] == "failed"].groupby("model")["run_id"].nunique().reindex(table["model"]).fillna(0).astype(int).to_numpy()
    return f"Judge scores: {run}", table, []


def sections(runs: Sequence[str]) -> list[tuple[str, pd.DataFrame, list[Path]]]:
    out = []
    for run in map(Path, runs):
        if RunFolder(run).is_complete():
            out.append(fit_section(run))
        elif (run / "controls.csv").is_file():
            out.append(controls_section(run))
        elif (run / "analysis.json").is_file():
            out.append(analysis_section(run))
        elif (run / "scores.csv").is_file():
            out.append(judge_section(run))
        elif (run / f"{SWEEP_SUMMARY}.csv").is_file():
            out.append(sweep_section(run))
        else:
            raise NsyncError(
                f"{run} is not a fit, controls, analysis, judge or sweep folder (no results.json, controls.csv, analysis.json, scores.csv or {SWEEP_SUMMARY}.csv)"
            )
    return out


def write_html(parts, path: Path, title: str) -> None:
    body = [f"<h1>{html.escape(title)}</h1>", f"<p>generated {time.strftime('%Y-%m-%d %H:%M')} by nsync.report</p>"]
    for heading, table, images in parts:
        body.append(f"<h2>{html.escape(heading)}</h2>")
        # a wide table scrolls inside its box instead of widening the page
        body.append(f'<div class="scroll">{table.to_html(index=False, float_format=lambda x: f"{x:.4f}", na_rep="", border=0, classes="t")}</div>')
        for img in images:
            data = base64.b64encode(img.read_bytes()).decode()
            body.append(
                f'<figure><img src="data:image/png;base64,{data}" alt="{html.escape(img.name)}"><figcaption>{html.escape(img.name)}</figcaption></figure>'
            )
    style = (
        "body{font-family:sans-serif;max-width:1100px;margin:2em auto;color:#222} table.t{border-collapse:collapse;margin:1em 0}"
        " table.t td,table.t th{padding:3px 8px;border-bottom:1px solid #ddd;text-align:right;overflow-wrap:anywhere;min-width:4em}"
        " div.scroll{overflow-x:auto;max-width:100%} figure{display:inline-block;margin:0.5em}"
        " img{max-width:520px}"
    )
    path.write_text(
        f"<!doctype html><html><head><meta charset='utf-8'><title>{html.escape(title)}</title><style>{style}</style></head>"
        f"<body>{''.join(body)}</body></html>"
    )


def write_markdown(parts, path: Path, title: str) -> None:
    files = path.with_name(path.stem + "_files")
    files.mkdir(parents=True, exist_ok=True)
    lines = [f"# {title}", ""]
    for i, (heading, table, images) in enumerate(parts):
        lines += [f"## {heading}", "", table.to_markdown(index=False, floatfmt=".4f"), ""]
        for img in images:
            target = files / f"{i:02d}_{img.name}"
            shutil.copyfile(img, target)
            lines.append(f"![{img.name}]({files.name}/{target.name})")
        lines.append("")
    path.write_text("\n".join(lines))


def main(argv: Sequence[str]) -> None:
    parser = argparse.ArgumentParser(prog="python -m nsync report", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("runs", nargs="+", help="fit, controls, analysis or judge folders")
    parser.add_argument("--out", default="report.html", help="output file: .html (self-contained) or .md (PNGs beside it)")
    parser.add_argument("--title", default="nsync report")
    args = parser.parse_args(list(argv))
    parts = sections(args.runs)
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    if out.suffix == ".md":
        write_markdown(parts, out, args.title)
    elif out.suffix in (".html", ".htm"):
        write_html(parts, out, args.title)
    else:
        raise NsyncError(f"--out must end in .html or .md, got {out}")
    print(f"wrote {out} ({len(parts)} sections, {sum(len(i) for _, _, i in parts)} figures)")
