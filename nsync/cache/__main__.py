"""``python -m nsync.cache info PATH``, ``verify PATH``, ``repair PATH``, ``export PATH OUT --format hf``, ``import-hf SRC OUT`` and
``import-reference SRC OUT`` (also ``nsync cache ...``)."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence

from nsync.errors import run_cli


def main(argv: Sequence[str]) -> None:
    parser = argparse.ArgumentParser(prog="python -m nsync.cache", description="Inspect or import activation caches.")
    sub = parser.add_subparsers(dest="command", required=True)
    info = sub.add_parser("info", help="print a summary of a cache")
    info.add_argument("path")
    ver = sub.add_parser("verify", help="check every file against its checksum, shape, rows and values; exit 1 on damage")
    ver.add_argument("path")
    rep = sub.add_parser("repair", help="drop rows written twice (keeping each row's first copy) and merge the shards")
    rep.add_argument("path")
    exp = sub.add_parser("export", help="write a cache as a Hugging Face datasets dataset (load_from_disk, push_to_hub)")
    exp.add_argument("path")
    exp.add_argument("out", help="dataset folder to create")
    exp.add_argument("--format", default="hf", choices=["hf"])
    imh = sub.add_parser("import-hf", help="turn a dataset written by 'export' back into a cache")
    imh.add_argument("src")
    imh.add_argument("out", help="cache folder to create")
    imp = sub.add_parser("import-reference", help="import the paper's released states.npy tree")
    imp.add_argument("src", help="the reference tree: <pair>/<source>/episode_<e>/t<T>_seed<s>/agent_<n>_turn_<k>/states.npy")
    imp.add_argument("out", help="cache folder to create")
    imp.add_argument("--sotopia", help="SOTOPIA export folder: attach scenario and character ids to episodes")
    imp.add_argument("--dtype", default="float32", choices=["float16", "float32"])
    args = parser.parse_args(list(argv))

    from nsync.cache import ActivationCache

    if args.command == "info":
        print(ActivationCache.open(args.path).summary())
    elif args.command == "verify":
        from nsync.cache.verify import verify_cache

        result = verify_cache(args.path)
        print(result.summary())
        if not result.ok:
            sys.exit(1)
    elif args.command == "repair":
        from nsync.cache.writer import CacheWriter

        dropped = CacheWriter.open_existing(args.path).repair()
        print("\n".join(f"dropped {line}" for line in dropped) or f"{args.path} holds no row written twice: nothing to repair")
        if dropped:
            print(f"wrote {args.path}")
    elif args.command == "export":
        from nsync.cache.hf import export_hf

        print(f"wrote {export_hf(args.path, args.out)} (datasets.load_from_disk opens it)")
    elif args.command == "import-hf":
        from nsync.cache.hf import import_hf

        out = import_hf(args.src, args.out)
        print(ActivationCache.open(out).summary())
        print(f"wrote {out}")
    else:
        from nsync.cache.importer import import_reference

        out = import_reference(args.src, args.out, args.sotopia, args.dtype)
        print(ActivationCache.open(out).summary())
        print(f"wrote {out}")


if __name__ == "__main__":
    run_cli(main)
