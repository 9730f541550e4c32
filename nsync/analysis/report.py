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
from nsync.fit.results import FitResult
from nsync.fit.run_folder import RunFolder

DIMENSIONS = ["believability", "relationship", "knowledge", "secret", "social_rules", "financial_and_material_benefits", "goal", "overall"]


def _fmt(x) -> str:
    if x is None or (isinstance(x, float) and x != x):
        return ""
    return f"{x:.4f}" if isinstance(x, float) else str(x)


def fit_section(run: Path) -> tuple[str, pd.DataFrame, list[Path]]:
    r = FitResult.load(run)
    ci = r.sync_r2_ci95
    rows = [
        ("models", f"{r.models['source']} -> {r.models['target']}"),
        ("probe / split / lag", f"{r.probe} / {r.split} / {r.lag}"),
        ("sources / targets / pairing", f"{r.condition} / {r.target_condition} / {r.pairing}"),
        ("SyncR² (± std over split seeds)", f"{r.sync_r2:.4f} ± {r.sync_r2_std:.4f}"),
        ("95% interval over episodes", f"[{ci[0]:.4f}, {ci[1]:.4f}]" if ci else ""),
        ("unclipped SyncR²", _fmt(r.sync_r2_unclipped)),
    ]
    for direction, d in r.directions.items():
        rows.append((f"{direction}: SyncR², n_train, n_test", f"{d.sync_r2:.4f}, {d.n_train[0]}, {d.n_test[0]}"))
    table = pd.DataFrame(rows, columns=["", "value"])
    images = [p for p in [run / "r2_by_layer.png", *sorted(run.glob("heatmap_*.png"))] if p.exists()]
    return f"Fit: {run}", table, images


def controls_section(run: Path) -> tuple[str, pd.DataFrame, list[Path]]:
    t = pd.read_csv(run / "controls.csv")
    cols = [
        c
        for c in [
            "control",
            "sync_r2",
            "sync_r2_std",
            "sync_r2_unclipped",
            "ci95_low",
            "ci95_high",
            "diff_vs_main",
            "diff_ci95_low",
            "diff_ci95_high",
            "sync_r2_A->B",
            "sync_r2_B->A",
            "skipped",
        ]
        if c in t
    ]
    images = [p for p in (run / "controls.png", run / "lag_curve.png") if p.exists()]
    return f"Controls: {run}", t[cols], images


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
        else:
            raise NsyncError(f"{run} is not a fit, controls, analysis or judge folder (no results.json, controls.csv, analysis.json or scores.csv)")
    return out


def write_html(parts, path: Path, title: str) -> None:
    body = [f"<h1>{html.escape(title)}</h1>", f"<p>generated {time.strftime('%Y-%m-%d %H:%M')} by nsync.report</p>"]
    for heading, table, images in parts:
        body.append(f"<h2>{html.escape(heading)}</h2>")
        body.append(table.to_html(index=False, float_format=lambda x: f"{x:.4f}", na_rep="", border=0, classes="t"))
        for img in images:
            data = base64.b64encode(img.read_bytes()).decode()
            body.append(
                f'<figure><img src="data:image/png;base64,{data}" alt="{html.escape(img.name)}"><figcaption>{html.escape(img.name)}</figcaption></figure>'
            )
    style = (
        "body{font-family:sans-serif;max-width:1100px;margin:2em auto;color:#222} table.t{border-collapse:collapse;margin:1em 0}"
        " table.t td,table.t th{padding:3px 8px;border-bottom:1px solid #ddd;text-align:right} figure{display:inline-block;margin:0.5em}"
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
