"""`make bench`: runs every benchmark module listed here, in order."""

import importlib
import sys

BENCHMARKS = ["bench.ledger", "bench.network", "bench.testnet", "bench.throughput", "bench.catchup",
              "bench.consortium", "bench.overload", "bench.rpc",
              "bench.dicom", "bench.oprf", "bench.pseudonyms", "bench.interop", "bench.research"]


def main() -> int:
    only = sys.argv[1:]  # e.g. `python -m bench bench.testnet`
    for name in BENCHMARKS:
        if only and name not in only:
            continue
        try:
            module = importlib.import_module(name)
        except ModuleNotFoundError as exc:
            print(f"== {name}: not available ({exc})", flush=True)
            continue
        print(f"\n== {name}", flush=True)
        module.main()
    return 0


if __name__ == "__main__":
    sys.exit(main())
