"""`make bench`: runs every benchmark module listed here, in order."""

import importlib
import sys
import traceback

BENCHMARKS = ["bench.ledger", "bench.network", "bench.trickle", "bench.testnet", "bench.throughput", "bench.batch_signatures",
              "bench.catchup", "bench.consortium", "bench.overload", "bench.rpc",
              "bench.dicom", "bench.oprf", "bench.pseudonyms", "bench.interop", "bench.research", "bench.simulator"]


def main() -> int:
    only = sys.argv[1:]  # e.g. `python -m bench bench.testnet`
    failed = []
    for name in BENCHMARKS:
        if only and name not in only:
            continue
        try:
            module = importlib.import_module(name)
        except ModuleNotFoundError as exc:
            print(f"== {name}: not available ({exc})", flush=True)
            continue
        print(f"\n== {name}", flush=True)
        # Each module parses its own options from sys.argv: hand it none, not the list of modules chosen here.
        sys.argv = [f"python -m {name}"]
        try:
            module.main()
        except Exception:  # noqa: BLE001 - one broken benchmark must not hide the figures of the others
            traceback.print_exc()
            failed.append(name)
    if failed:
        print(f"\n== FAILED: {', '.join(failed)}", flush=True)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
