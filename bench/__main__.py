"""`make bench`: runs every benchmark module listed here, in order."""

import importlib
import sys

BENCHMARKS = ["bench.ledger"]


def main() -> int:
    for name in BENCHMARKS:
        print(f"== {name}", flush=True)
        importlib.import_module(name).main()
    return 0


if __name__ == "__main__":
    sys.exit(main())
