"""Run a W&B sweep's grid locally, without a W&B server.

    python -m nsync.sweep configs/sweeps/layers.yaml [key=value ...] [--dry-run] [--plot FILE]

The sweep YAML is the one ``wandb sweep`` takes (``program: nsync.fit``, ``method: grid``,
``parameters`` with ``values``, and a ``command`` list with ``${env}``, ``${program}`` and
``${args}``). Each grid point becomes the command W&B's agent would run, ``${args}`` expanded
to ``--key=value`` as the agent does; ``key=value`` overrides after the file go into every point
(``data.cache=runs/my/cache``; the grid's own parameters win); ``--dry-run`` prints the commands
instead of running them. A finished sweep writes ``sweep_summary.csv``, ``.md`` and ``.png`` (each
point's SyncR², the sweep's metric and the partition's unique shares, best first) beside its run
folders; ``nsync report`` on that folder shows them.
"""

from __future__ import annotations

import argparse
import itertools
import json
import os
import shlex
import subprocess
import sys
from collections.abc import Sequence
from pathlib import Path

import yaml

from nsync.errors import NsyncError, run_cli


def load_sweep(path: str | Path) -> dict:
    p = Path(path)
    if not p.is_file():
        raise NsyncError(f"sweep file not found: {p}")
    sweep = yaml.safe_load(p.read_text())
    for key in ("program", "parameters", "command"):
        if key not in sweep:
            raise NsyncError(f"{p}: a W&B sweep needs '{key}'")
    if sweep.get("method", "grid") != "grid":
        raise NsyncError(f"{p}: only method: grid runs locally (this sweep uses {sweep['method']}); use wandb agent")
    for name, spec in sweep["parameters"].items():
        if "values" not in spec and "value" not in spec:
            raise NsyncError(f"{p}: parameter '{name}' needs 'values' for a grid")
    return sweep


def _format(value) -> str:
    # W&B's agent passes lists as JSON; omegaconf reads JSON lists.
    return json.dumps(value) if isinstance(value, (list, dict)) else str(value)


#: What a finished sweep writes beside its run folders (``nsync report`` reads the CSV).
SUMMARY = "sweep_summary"


def expand(sweep: dict, overrides: Sequence[str] = ()) -> list[list[str]]:
    """Every grid point as the argv the W&B agent would run, with ``overrides`` (``key=value``)
    before the point's own parameters."""
    names = list(sweep["parameters"])
    grids = [sweep["parameters"][n].get("values", [sweep["parameters"][n].get("value")]) for n in names]
    commands = []
    for point in itertools.product(*grids):
        args = [f"--{n}={_format(v)}" for n, v in zip(names, point, strict=True)]
        argv: list[str] = []
        for token in sweep["command"]:
            if token == "${env}":
                continue
            if token == "${args}":
                argv.extend(overrides)
                argv.extend(args)
            elif token == "${program}":
                argv.append(sweep["program"])
            elif token == "python":
                argv.append(sys.executable)
            else:
                argv.append(token)
        commands.append(argv)
    return commands


def summarise(sweep: dict, commands: list[list[str]]):
    """One row per grid point: its parameters, its run folder, and its SyncR² (the headline's
    figures and the sweep's metric) read from the folder's results.json (NaN where it has none)."""
    import pandas as pd

    from nsync.config import load_config
    from nsync.fit import FitConfig, FitResult
    from nsync.fit.config import resolve_out
    from nsync.fit.loop import with_agent_directions
    from nsync.fit.run_folder import RunFolder

    metric = sweep.get("metric", {}).get("name", "sync_r2")
    rows = []
    for cmd in commands:
        argv = cmd[cmd.index(sweep["program"]) + 1 :]
        folder = RunFolder(resolve_out(with_agent_directions(load_config(FitConfig, argv, prog="nsync.sweep"))))
        row: dict[str, object] = {a.split("=", 1)[0].removeprefix("--"): a.split("=", 1)[1] for a in argv if a.startswith("--") and "=" in a}
        row["run"] = str(folder.path)
        if folder.is_complete():
            result = FitResult.load(folder.path)
            row["SyncR²"] = result.headline()
            row[metric] = getattr(result, metric, None)
            for baseline, part in result.partition.items():
                row[f"unique beyond {baseline}"] = part.values.get("unique")
        rows.append(row)
    table = pd.DataFrame(rows)
    if metric in table:
        ascending = sweep.get("metric", {}).get("goal", "maximize") == "minimize"
        table = table.sort_values(metric, ascending=ascending, na_position="last", kind="stable")
    return table.reset_index(drop=True)


def write_summary(table, sweep: dict, folder: Path) -> list[Path]:
    """``sweep_summary.csv``, ``.md`` and ``.png`` in ``folder`` (where the sweep's run folders are)."""
    folder.mkdir(parents=True, exist_ok=True)
    metric = sweep.get("metric", {}).get("name", "sync_r2")
    table.to_csv(folder / f"{SUMMARY}.csv", index=False)
    (folder / f"{SUMMARY}.md").write_text(table.drop(columns="run").to_markdown(index=False, floatfmt=".4f") + "\n")
    written = [folder / f"{SUMMARY}.csv", folder / f"{SUMMARY}.md"]
    if metric in table and table[metric].notna().any():
        written.append(plot_summary(table, metric, folder / f"{SUMMARY}.png"))
    return written


def plot_summary(table, metric: str, path: Path) -> Path:
    """A bar per grid point of the sweep's metric (the figure docs/how-to/sweeps.md shows)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    params = [c for c in table.columns if c not in ("run", "SyncR²", metric) and not c.startswith("unique beyond")]
    labels = [", ".join(f"{p}={row[p]}" for p in params) for _, row in table.iterrows()]
    fig, ax = plt.subplots(figsize=(max(4, 0.9 * len(table)), 3.2))
    ax.bar(range(len(table)), table[metric].astype(float))
    ax.set_xticks(range(len(table)), labels, rotation=30, ha="right", fontsize=8)
    ax.set_ylabel(metric)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path


def main(argv: Sequence[str]) -> None:
    parser = argparse.ArgumentParser(prog="python -m nsync.sweep", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("sweep")
    parser.add_argument("overrides", nargs="*", help="key=value for every grid point (e.g. data.cache=runs/my/cache)")
    parser.add_argument("--dry-run", action="store_true", help="print the commands instead of running them")
    parser.add_argument("--plot", default="", help="also draw the metric of every grid point into this PNG")
    args = parser.parse_args(list(argv))
    if bad := [o for o in args.overrides if "=" not in o]:
        raise NsyncError(f"cannot parse {bad}: overrides are key=value (e.g. data.cache=runs/my/cache)")
    from nsync.config import load_config
    from nsync.fit import FitConfig
    from nsync.fit.tracking import log_sweep_summary

    sweep = load_sweep(args.sweep)
    commands = expand(sweep, [o.lstrip("-") for o in args.overrides])
    failed = 0
    for i, cmd in enumerate(commands, 1):
        print(f"[{i}/{len(commands)}] {shlex.join(cmd)}", flush=True)
        if not args.dry_run:
            failed += subprocess.run(cmd).returncode != 0
    if args.dry_run:
        return
    table = summarise(sweep, commands)
    print(table.drop(columns="run").to_markdown(index=False, floatfmt=".4f"))
    metric = sweep.get("metric", {}).get("name", "sync_r2")
    if args.plot and metric in table and table[metric].notna().any():
        print(f"wrote {plot_summary(table, metric, Path(args.plot))}")
    folder = Path(os.path.commonpath([str(Path(r).parent) for r in table["run"]]))
    written = write_summary(table, sweep, folder)
    cfg = load_config(FitConfig, commands[0][commands[0].index(sweep["program"]) + 1 :], prog="nsync.sweep")
    if logged := log_sweep_summary(cfg, f"sweep {Path(args.sweep).stem}", folder, table, next((p for p in written if p.suffix == ".png"), None)):
        written.append(Path(logged))
    print(f"ran {len(commands)} runs, {failed} failed; wrote {', '.join(str(p) for p in written)} (run folders beside them)")
    if failed:
        sys.exit(1)


if __name__ == "__main__":
    run_cli(main)
