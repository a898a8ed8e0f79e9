"""`radchain` command line: discovers subcommands in node.commands."""

from __future__ import annotations

import argparse
import importlib
import pkgutil
import sys

from node import commands


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="radchain", description="RadChain imaging-audit blockchain node")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for info in sorted(pkgutil.iter_modules(commands.__path__), key=lambda m: m.name):
        if info.name.startswith("_"):
            continue  # shared helpers, not commands
        module = importlib.import_module(f"{commands.__name__}.{info.name}")
        module.register(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if not getattr(args, "func", None):
        parser.print_help()
        return 2
    result = args.func(args)
    return int(result or 0)


if __name__ == "__main__":
    sys.exit(main())
