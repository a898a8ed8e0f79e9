"""Speed of the consensus simulator: `python -m bench.simulator`, part of `make bench`.

The fixed reference workload is issue 11's: `python -m consensus.simulator --seeds 40 --nodes 4` and
`--seeds 20 --nodes 7`, each in its own process. Reported per workload: CPU seconds (user + sys of the child,
min and median over the repetitions), schedules per CPU second and simulator events per CPU second.

Same-run baseline: the same workloads run from a copy of consensus/ at a git ref (`git archive`), alternating
with the working tree's, so the ratio sees the same machine load. The ref defaults to 2f0ea4c (the last
commit before the consensus restructure); without git or that commit the baseline is skipped.
Environment: RADCHAIN_BENCH_SIM_BASE (git ref, or "" for none), RADCHAIN_BENCH_SIM_REPS (default 3).
"""

from __future__ import annotations

import io
import os
import re
import resource
import statistics
import subprocess
import sys
import tarfile
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
WORKLOADS = ((40, 4), (20, 7))
DEFAULT_BASE = "2f0ea4c"
_SUMMARY = re.compile(r"seeds run: (\d+)\s+nodes: (\d+)\s+violations: (\d+).*events/s: (\d+)\s+\(([\d.]+)s\)")


def base_tree(ref: str, into: Path) -> Path | None:
    """consensus/ as of git ref `ref`, extracted under `into`; None if git or the ref is not available."""
    try:
        tar = subprocess.run(["git", "-C", str(ROOT), "archive", ref, "consensus"], capture_output=True, check=True,
                             timeout=60).stdout
    except (OSError, subprocess.SubprocessError):
        return None
    with tarfile.open(fileobj=io.BytesIO(tar)) as t:
        t.extractall(into, filter="data")
    return into


def run_once(tree: Path, seeds: int, nodes: int) -> dict:
    """One simulator run in a child process whose sys.path starts at `tree`; its CPU seconds and summary."""
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    proc = subprocess.run([sys.executable, "-m", "consensus.simulator", "--seeds", str(seeds), "--nodes", str(nodes),
                           "--quiet"], cwd=tree, capture_output=True, text=True, timeout=1800,
                          env={**os.environ, "PYTHONPATH": str(tree)})
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    cpu = (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)
    match = _SUMMARY.search(proc.stdout)
    if match is None:
        raise RuntimeError(f"simulator in {tree} printed no summary (exit {proc.returncode}): "
                           f"{proc.stdout[-500:]} {proc.stderr[-500:]}")
    wall = float(match.group(5))
    events = int(match.group(4)) * wall  # events/s over its own wall time: the number of events
    return {"cpu": cpu, "violations": int(match.group(3)), "events": events, "exit": proc.returncode}


def measure(trees: dict[str, Path], reps: int, workloads=WORKLOADS) -> dict:
    """{(name, seeds, nodes): [run, ...]}, the trees alternating within each repetition."""
    out: dict = {}
    for seeds, nodes in workloads:
        for _ in range(reps):
            for name, tree in trees.items():
                out.setdefault((name, seeds, nodes), []).append(run_once(tree, seeds, nodes))
    return out


def report(results: dict, workloads=WORKLOADS) -> list[str]:
    lines = []
    for seeds, nodes in workloads:
        cur = results[("current", seeds, nodes)]
        cpu = [r["cpu"] for r in cur]
        events = statistics.median(r["events"] for r in cur)
        line = (f"  simulator --seeds {seeds} --nodes {nodes}: CPU s min {min(cpu):.2f} median "
                f"{statistics.median(cpu):.2f}; {seeds / statistics.median(cpu):.1f} schedules/CPU s, "
                f"{events / statistics.median(cpu):,.0f} events/CPU s; violations {cur[0]['violations']}")
        base = results.get(("base", seeds, nodes))
        if base:
            bcpu = [r["cpu"] for r in base]
            line += (f"\n    baseline CPU s min {min(bcpu):.2f} median {statistics.median(bcpu):.2f}: speed ratio "
                     f"(baseline / current) min {min(bcpu) / min(cpu):.3f}, median "
                     f"{statistics.median(bcpu) / statistics.median(cpu):.3f}")
        lines.append(line)
    return lines


def main() -> None:
    reps = int(os.environ.get("RADCHAIN_BENCH_SIM_REPS", "3"))
    ref = os.environ.get("RADCHAIN_BENCH_SIM_BASE", DEFAULT_BASE)
    with tempfile.TemporaryDirectory(prefix="radchain-bench-sim-") as tmp:
        trees = {"current": ROOT}
        base = base_tree(ref, Path(tmp)) if ref else None
        if base is not None:
            trees = {"base": base, "current": ROOT}
        print(f"consensus simulator, {reps} alternating runs per workload; baseline: "
              f"{ref + ' (consensus/ from git)' if base is not None else 'none'}", flush=True)
        for line in report(measure(trees, reps)):
            print(line, flush=True)


if __name__ == "__main__":
    main()
