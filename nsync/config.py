"""Config loading shared by every entry point.

Configs are dataclasses whose fields carry a one-line ``help`` (so ``--help`` is the
documentation). On the command line::

    python -m nsync simulate --config configs/simulate/quickstart.yaml --config more.yaml \\
        sampling.temperature=0.9 --out=runs/x

``--config`` is repeatable (later files win), overrides are ``a.b=v`` or ``--a.b=v``, and
everything is merged into the dataclass schema in omegaconf struct mode, so a misspelt key
is an error that names it and the valid keys near it.
"""

from __future__ import annotations

import dataclasses
import difflib
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any, TypeVar

from omegaconf import DictConfig, ListConfig, OmegaConf
from omegaconf.errors import ConfigKeyError, OmegaConfBaseException, ValidationError

from nsync.errors import NsyncError

T = TypeVar("T")


def _valid_keys(schema: Any, prefix: str = "") -> list[str]:
    keys = []
    for f in dataclasses.fields(schema):
        keys.append(prefix + f.name)
        sub = f.default_factory() if f.default_factory is not dataclasses.MISSING else f.default
        if dataclasses.is_dataclass(sub):
            keys.extend(_valid_keys(type(sub), prefix + f.name + "."))
    return keys


def _explain(err: OmegaConfBaseException, schema: type, where: str) -> NsyncError:
    key = getattr(err, "full_key", None) or ""
    if isinstance(err, ConfigKeyError) or "not in struct" in str(err) or "Key '" in str(err):
        valid = _valid_keys(schema)
        near = difflib.get_close_matches(key, valid, n=3, cutoff=0.5) or [k for k in valid if "." not in k]
        return NsyncError(f"unknown config key '{key}' in {where}; did you mean one of: {', '.join(near)}?")
    if isinstance(err, ValidationError):
        msg = str(err).splitlines()[0]
        return NsyncError(f"bad value for config key '{key}' in {where}: {msg}")
    return NsyncError(f"invalid config in {where}: {str(err).splitlines()[0]}")


def config_keys(schema: type) -> list[tuple[str, str, str]]:
    """``(key, default, help)`` of every field of a structured config, nested fields dotted: what
    ``--help`` prints and the documentation's configuration reference shows.

    >>> from dataclasses import dataclass, field
    >>> @dataclass
    ... class Example:
    ...     lr: float = field(default=0.1, metadata={"help": "learning rate"})
    >>> config_keys(Example)
    [('lr', '0.1', 'learning rate')]
    """
    keys: list[tuple[str, str, str]] = []

    def walk(cls: type, prefix: str) -> None:
        for f in dataclasses.fields(cls):
            sub = f.default_factory() if f.default_factory is not dataclasses.MISSING else f.default
            if dataclasses.is_dataclass(sub):
                walk(type(sub), prefix + f.name + ".")
                continue
            default = "(required)" if sub is dataclasses.MISSING or sub == "???" else repr(sub)
            keys.append((prefix + f.name, default, f.metadata.get("help", "")))

    walk(schema, "")
    return keys


def help_text(schema: type, prog: str) -> str:
    """Every field with its default and help line, nested fields dotted."""
    lines = [f"usage: {prog} [--config FILE ...] [key=value ...]", "", "config keys:"]
    for key, default, meaning in config_keys(schema):
        lines.append(f"  {key} = {default}")
        if meaning:
            lines.append(f"      {meaning}")
    return "\n".join(lines)


def parse_args(argv: Sequence[str]) -> tuple[list[str], list[str], set[str]]:
    """Split argv into config files, ``key=value`` overrides and flags (help, print_config)."""
    files, overrides, flags = [], [], set()
    args = list(argv)
    i = 0
    while i < len(args):
        arg = args[i]
        if arg in ("-h", "--help"):
            flags.add("help")
        elif arg in ("--print-config", "--print_config"):  # the second as Lightning users type it
            flags.add("print_config")
        elif arg == "--config":
            if i + 1 >= len(args):
                raise NsyncError("--config needs a file path: --config configs/fit/paper.yaml")
            files.append(args[i + 1])
            i += 1
        elif arg.startswith("--config="):
            files.append(arg.split("=", 1)[1])
        elif "=" in arg:
            # OmegaConf.from_dotlist would turn "--a.b=1" into a key named "--a"; strip dashes.
            overrides.append(arg.lstrip("-"))
        elif arg.startswith("--") and i + 1 < len(args) and not args[i + 1].startswith("--") and "=" not in args[i + 1]:
            overrides.append(f"{arg[2:]}={args[i + 1]}")  # "--bootstrap 10", as argparse users type it
            i += 1
        else:
            raise NsyncError(f"cannot parse argument '{arg}': expected --config FILE or key=value")
        i += 1
    return files, overrides, flags


def _as_list_if_needed(cfg: DictConfig, override: str) -> str:
    """``key=value`` as ``key=[value]`` where ``key`` is a list and ``value`` one item
    (``affine.alphas=5`` means the grid of one alpha, as ``affine.alphas=[5]``).

    >>> from dataclasses import dataclass, field
    >>> @dataclass
    ... class Cfg:
    ...     alphas: list = field(default_factory=lambda: [0.1])
    >>> _as_list_if_needed(OmegaConf.structured(Cfg), "alphas=5"), _as_list_if_needed(OmegaConf.structured(Cfg), "alphas=[5,6]")
    ('alphas=[5]', 'alphas=[5,6]')
    """
    key, value = override.split("=", 1)
    try:
        node = OmegaConf.select(cfg, key, throw_on_missing=False)
    except OmegaConfBaseException:
        return override
    text = value.strip()
    one_item = text and not text.startswith(("[", "'", '"')) and "${" not in text and text.lower() not in ("null", "~", "none")
    if isinstance(node, ListConfig) and one_item:
        return f"{key}=[{value}]"
    return override


def _open_mappings(cfg: DictConfig) -> None:
    """Free-form mapping fields (``dict[str, Any]``, e.g. ``probe_options``) take any key; the
    dataclass fields around them stay strict (a misspelt key is still an error)."""
    for key in cfg:
        if OmegaConf.is_missing(cfg, key):  # a required value not given yet
            continue
        node = cfg[key]
        if isinstance(node, DictConfig):
            if OmegaConf.get_type(node) in (None, dict):
                OmegaConf.set_struct(node, False)
            else:
                _open_mappings(node)


def load_config(schema: type[T], argv: Sequence[str], prog: str) -> T:
    """Build a validated ``schema`` instance from ``--config`` files and overrides.

    >>> from dataclasses import dataclass
    >>> @dataclass
    ... class Cfg:
    ...     alpha: float = 0.1
    >>> load_config(Cfg, ["alpha=0.5"], prog="demo").alpha
    0.5
    """
    files, overrides, flags = parse_args(argv)
    if "help" in flags:
        print(help_text(schema, prog))
        sys.exit(0)
    cfg = OmegaConf.structured(schema)
    OmegaConf.set_struct(cfg, True)
    _open_mappings(cfg)
    for file in files:
        path = Path(file)
        if not path.is_file():
            raise NsyncError(f"config file not found: {file}")
        try:
            cfg = OmegaConf.merge(cfg, OmegaConf.load(path))
        except OmegaConfBaseException as err:
            raise _explain(err, schema, str(path)) from None
        except Exception as err:  # YAML syntax errors
            raise NsyncError(f"cannot read config file {path}: {err}") from None
    overrides = [_as_list_if_needed(cfg, o) for o in overrides]
    try:
        cfg = OmegaConf.merge(cfg, OmegaConf.from_dotlist(overrides))
    except OmegaConfBaseException as err:
        raise _explain(err, schema, "command-line overrides") from None
    except Exception as err:  # YAML syntax errors in a value
        first = str(err).splitlines()[0]
        raise NsyncError(f"cannot parse the command-line overrides {overrides}: {first}; quote values that hold '=' or brackets") from None
    try:
        obj = OmegaConf.to_object(cfg)
    except OmegaConfBaseException as err:
        raise _explain(err, schema, "config") from None
    if "print_config" in flags:
        print(to_yaml(obj))
        sys.exit(0)
    return obj  # type: ignore[return-value]


def from_dict(schema: type[T], values: dict) -> T:
    """A validated ``schema`` instance from a plain dict (e.g. the config stored with a result);
    an unknown key is an error.

    >>> from dataclasses import dataclass
    >>> @dataclass
    ... class Cfg:
    ...     alpha: float = 0.1
    >>> from_dict(Cfg, {"alpha": 0.5}).alpha
    0.5
    """
    cfg = OmegaConf.structured(schema)
    OmegaConf.set_struct(cfg, True)
    _open_mappings(cfg)
    try:
        return OmegaConf.to_object(OmegaConf.merge(cfg, values))  # type: ignore[return-value]
    except OmegaConfBaseException as err:
        raise _explain(err, schema, "stored config") from None


def to_dict(obj: Any) -> dict:
    """A plain dict of a config dataclass (for manifests and results)."""
    return OmegaConf.to_container(OmegaConf.structured(obj), resolve=True)  # type: ignore[return-value]


def to_yaml(obj: Any) -> str:
    return OmegaConf.to_yaml(OmegaConf.structured(obj))
