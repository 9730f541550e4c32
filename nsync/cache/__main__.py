"""``python -m nsync.cache info PATH`` and ``python -m nsync.cache import-reference SRC OUT``."""

from __future__ import annotations

import argparse
from typing import Sequence

from nsync.errors import run_cli


def main(argv: Sequence[str]) -> None:
    parser = argparse.ArgumentParser(prog="python -m nsync.cache", description="Inspect or import activation caches.")
    sub = parser.add_subparsers(dest="command", required=True)
    info = sub.add_parser("info", help="print a summary of a cache")
    info.add_argument("path")
    imp = sub.add_parser("import-reference", help="import the paper's released states.npy tree")
    imp.add_argument("src", help="the reference tree: <pair>/<source>/episode_<e>/t<T>_seed<s>/agent_<n>_turn_<k>/states.npy")
    imp.add_argument("out", help="cache folder to create")
    imp.add_argument("--sotopia", help="SOTOPIA export folder: attach scenario and character ids to episodes")
    imp.add_argument("--dtype", default="float32", choices=["float16", "float32"])
    args = parser.parse_args(list(argv))

    from nsync.cache import ActivationCache

    if args.command == "info":
        print(ActivationCache.open(args.path).summary())
    else:
        from nsync.cache.importer import import_reference

        out = import_reference(args.src, args.out, args.sotopia, args.dtype)
        print(ActivationCache.open(out).summary())
        print(f"wrote {out}")


if __name__ == "__main__":
    run_cli(main)
