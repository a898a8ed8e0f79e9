"""Run a node under cProfile for bench.catchup (RADCHAIN_BENCH_CATCHUP_PROFILE=FILE), bench-only.

    python -m bench.catchup_profile OUT python -m node.cli start --home HOME

The node runs as usual (runpy); the first SIGUSR1 starts the profiler (the bench sends it once the node
answers RPC, so start-up is left out), the second stops it and writes OUT (pstats format). Only the event
loop's thread is profiled: work done in trio worker threads shows as the waits for them.
"""

from __future__ import annotations

import cProfile
import runpy
import signal
import sys


def main() -> None:
    out, argv = sys.argv[1], sys.argv[2:]
    if len(argv) < 3 or argv[1] != "-m":
        raise SystemExit("usage: python -m bench.catchup_profile OUT python -m MODULE ARGS...")
    prof = cProfile.Profile()
    state = {"on": False}

    def toggle(_signo, _frame) -> None:
        if not state["on"]:
            state["on"] = True
            prof.enable()
        else:
            prof.disable()
            prof.dump_stats(out)

    signal.signal(signal.SIGUSR1, toggle)
    module = argv[2]
    sys.argv = [module, *argv[3:]]
    runpy.run_module(module, run_name="__main__", alter_sys=True)


if __name__ == "__main__":
    main()
