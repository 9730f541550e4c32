"""Run a W&B sweep's grid locally, without a W&B server.

    python -m nsync.sweep configs/sweeps/layers.yaml [--dry-run]

The sweep YAML is the one ``wandb sweep`` takes (``program: nsync.fit``, ``method: grid``,
``parameters`` with ``values``, and a ``command`` list with ``${env}``, ``${program}`` and
``${args}``). Each grid point becomes the command W&B's agent would run, ``${args}`` expanded
to ``--key=value`` as the agent does; ``--dry-run`` prints them instead of running them.
"""

from __future__ import annotations

import argparse
import itertools
import json
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


def expand(sweep: dict) -> list[list[str]]:
    """Every grid point as the argv the W&B agent would run."""
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
                argv.extend(args)
            elif token == "${program}":
                argv.append(sweep["program"])
            elif token == "python":
                argv.append(sys.executable)
            else:
                argv.append(token)
        commands.append(argv)
    return commands


def main(argv: Sequence[str]) -> None:
    parser = argparse.ArgumentParser(prog="python -m nsync.sweep", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("sweep")
    parser.add_argument("--dry-run", action="store_true", help="print the commands instead of running them")
    args = parser.parse_args(list(argv))
    commands = expand(load_sweep(args.sweep))
    failed = 0
    for i, cmd in enumerate(commands, 1):
        print(f"[{i}/{len(commands)}] {shlex.join(cmd)}", flush=True)
        if not args.dry_run:
            failed += subprocess.run(cmd).returncode != 0
    if not args.dry_run:
        print(f"ran {len(commands)} runs, {failed} failed")
        if failed:
            sys.exit(1)


if __name__ == "__main__":
    run_cli(main)
