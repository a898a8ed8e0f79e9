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
    try:
        result = args.func(args)
    except Exception as exc:
        import httpx  # only here: most commands never talk to a node, and the import costs start-up time

        if not isinstance(exc, httpx.TransportError):
            raise
        # a node that is down, or a wrong --rpc/--home, is an operator's everyday case, not a crash
        try:
            where = f" at {exc.request.url}"
        except RuntimeError:  # an httpx error raised without its request
            where = ""
        print(f"radchain {args.command}: cannot reach the node{where}: {exc or type(exc).__name__}",
              file=sys.stderr)
        return 1
    return int(result or 0)


if __name__ == "__main__":
    sys.exit(main())
