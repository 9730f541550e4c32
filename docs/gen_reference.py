"""Writes ``reference/config.md`` while the site builds (mkdocs-gen-files): every command's options,
read from its structured config class (the same walk as ``--help``), or its ``--help`` text for the
commands that parse arguments themselves. Generated, so the reference cannot drift from the code."""

from __future__ import annotations

import contextlib
import importlib
import io

import mkdocs_gen_files

from nsync.cli import COMMANDS
from nsync.config import config_keys

#: command -> "module:ConfigClass" of the commands whose options are a structured config.
SCHEMAS = {
    "simulate": "nsync.simulation.config:SimulateConfig",
    "reread": "nsync.simulation.reread:RereadConfig",
    "fit": "nsync.fit.config:FitConfig",
    "controls": "nsync.analysis.controls:ControlsConfig",
    "judge": "nsync.judge.run:JudgeConfig",
    "analysis": "nsync.analysis.performance:AnalysisConfig",
}


def _cell(text: str) -> str:
    return text.replace("|", "\\|").replace("\n", " ")


def _schema_section(path: str) -> list[str]:
    module, name = path.split(":")
    schema = getattr(importlib.import_module(module), name)
    lines = ["| key | default | meaning |", "|---|---|---|"]
    for key, default, meaning in config_keys(schema):
        lines.append(f"| `{key}` | `{_cell(default)}` | {_cell(meaning)} |")
    return lines


def _help_section(module: str) -> list[str]:
    out = io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.suppress(SystemExit):
        importlib.import_module(module).main(["--help"])
    return ["```text", out.getvalue().rstrip(), "```"]


def page() -> str:
    lines = ["# Configuration", "",
             "Every command's options, generated from the code when this site is built (`docs/gen_reference.py`). "
             "A structured config takes `--config FILE` (repeatable; later files win) and `key=value` overrides; "
             "`--help` prints the same list and `--print-config` the resolved config. What the settings do in "
             "context: the how-to pages.", ""]
    for command, (module, text) in COMMANDS.items():
        lines += [f"## `nsync {command}`", "", f"{text[0].upper()}{text[1:]}. Also `python -m {module.removesuffix('.__main__')}`.", ""]
        lines += _schema_section(SCHEMAS[command]) if command in SCHEMAS else _help_section(module)
        lines.append("")
    return "\n".join(lines)


with mkdocs_gen_files.open("reference/config.md", "w") as f:
    f.write(page())
