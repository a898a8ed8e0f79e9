"""make mutants: plant classic PBFT bugs one at a time in a copy of consensus/ and count the simulator seeds
needed to catch each.

    python -m consensus.sim.mutants                       # every mutant, n = 4, 5, 7, 10
    python -m consensus.sim.mutants --only quorum_2f --nodes 4 --budget 200

Each mutant is a list of exact textual replacements in files of consensus/. The package is copied to a
temporary directory, the replacements are applied (an anchor that does not match exactly, or matches more
than once, reports "stale anchor": the code moved and the mutant must follow), and the simulator runs from
the copy in a subprocess, seed after seed, until a violation. A seed only counts if the unmutated code passes
it (checked in this process), so a mutant is never credited with a defect the real code has. Exit status 1
if any mutant survives its seed budget or has a stale anchor.
"""

from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

PKG = Path(__file__).resolve().parent.parent  # consensus/
SIZES = (4, 5, 7, 10)
BUDGET = {4: 300, 5: 300, 7: 200, 10: 200}  # seeds per size (make soak runs these)


@dataclass(frozen=True)
class Mutant:
    name: str
    bug: str
    edits: tuple[tuple[str, str, str], ...]  # (file under consensus/, exact old text, new text)


MUTANTS = (
    Mutant("vc_entries_unchecked", "(a) prepared certificates in VIEW-CHANGE entries not checked",
           (("viewchange.py", """        if not quorum_valid(crypto, n, q, e.signatures, signed):
            return "entry certificate"
""", ""),)),
    Mutant("new_view_lowest_proof", "(b) the NEW-VIEW plan picks the lowest-view proof, not the highest",
           (("viewchange.py", "if cur is None or (e.view, e.digest) > cur:", "if cur is None or (e.view, e.digest) < cur:"),)),
    Mutant("new_view_not_logged", "(c) NEW-VIEW not written to the WAL (sent, or entered)",
           (("viewchange.py", """            r.emit(Persist(walrec.newview_record(w, wire)))
""", ""),
            ("viewchange.py", """        r.emit(Persist(walrec.newview_record(w, data)))
""", ""))),
    Mutant("validation_skipped", "(d) the application's proposal validation skipped",
           (("replica.py", """        if not self._valid(slot.height, payload):
            return self.drop("invalid_proposal")
""", ""),)),
    Mutant("prepare_not_logged", "(e) no WAL write before PREPARE",
           (("replica.py", """        self.emit(Persist(walrec.vote_record(v, slot.height, d, payload)))
        msg = self.sign(m.PREPARE, m.Prepare(v, slot.height, d))""", """        msg = self.sign(m.PREPARE, m.Prepare(v, slot.height, d))"""),)),
    Mutant("quorum_2f", "quorum of 2f instead of 2f+1",
           (("certificate.py", "    return (n + max_faulty(n)) // 2 + 1", "    return max(1, 2 * max_faulty(n))"),)),
    Mutant("signatures_unchecked", "message signatures not verified on receipt",
           (("replica.py", """        if not m.verify(self.crypto, self.chain_id, msg):
            return self.drop("bad_signature")
""", ""),)),
    Mutant("decided_certificate_unchecked", "DECIDED (pushed block) accepted without checking its certificate",
           (("catchup.py", "if cert.height != h or not r.cert_valid(cert):", "if cert.height != h:"),)),
    Mutant("new_view_signatures_unchecked",
           "VIEW-CHANGE signatures inside a NEW-VIEW, and its assignment signatures, not verified",
           (("viewchange.py", "if not known and (not m.verify(r.crypto, r.chain_id, vc) or check_view_change(",
             "if not known and (False or check_view_change("),
            ("viewchange.py",
             "            if not r.crypto.verify(msg.sender, m.vote_signing_bytes(r.chain_id, w, a.height, a.digest), a.signature):",
             "            if False:"))),
    Mutant("commit_without_prepared", "COMMIT sent on the first vote, without a prepared certificate",
           (("replica.py", """        if not votes or len(votes) < self.quorum:
            return
        if slot.prepared""", """        if not votes:
            return
        if slot.prepared"""),)),
    Mutant("checkpoint_stable_f_plus_1", "a checkpoint becomes stable with f+1 matching signatures",
           (("checkpoints.py", "        return matching if len(matching) >= self.quorum else None",
             "        return matching if len(matching) > (self.n - 1) // 3 else None"),)),
    Mutant("watermark_not_enforced", "votes above the high watermark accepted",
           (("replica.py", """        if h > low + self.window:
            self.drop("above_window")
            return False
""", ""),)),
    Mutant("join_view_change_on_f", "(ours) a replica joins a later view on f VIEW-CHANGEs instead of f+1",
           (("viewchange.py", "        if len(views) > r.f:\n            r.stats[\"joined_view_change\"] += 1\n"
                              "            r.start_view_change(views[r.f])",
             "        if len(views) >= r.f:\n            r.stats[\"joined_view_change\"] += 1\n"
                              "            r.start_view_change(views[r.f - 1])"),)),
)


def materialize(mutant: Mutant, root: Path) -> str | None:
    """Copy consensus/ under root and apply the mutant; the error text if an anchor is stale."""
    dst = root / "consensus"
    shutil.copytree(PKG, dst, ignore=shutil.ignore_patterns("__pycache__", "*.pyc"))
    for fname, old, new in mutant.edits:
        path = dst / fname
        text = path.read_text()
        count = text.count(old)
        if count != 1:
            return f"stale anchor in {fname} ({count} matches): {old.strip().splitlines()[0][:60]!r}"
        path.write_text(text.replace(old, new))
    return None


def _baseline_ok(seed: int, nodes: int, cache: dict) -> bool:
    key = (seed, nodes)
    if key not in cache:
        from .core import run_seed
        cache[key] = run_seed(seed, nodes)[0] is None
    return cache[key]


def hunt(mutant: Mutant, nodes: int, budget: int, cache: dict, start: int = 0) -> dict:
    """First seed in [start, start+budget) where the mutant violates an invariant and the real code does not."""
    with tempfile.TemporaryDirectory(prefix=f"mutant-{mutant.name}-") as tmp:
        err = materialize(mutant, Path(tmp))
        if err:
            return {"status": "stale anchor", "detail": err}
        env = dict(os.environ, PYTHONPATH=tmp, PYTHONDONTWRITEBYTECODE="1")
        seed, end = start, start + budget
        while seed < end:
            proc = subprocess.run([sys.executable, "-m", "consensus.sim.mutants", "--worker", "--nodes",
                                   str(nodes), "--start", str(seed), "--end", str(end)],
                                  cwd=tmp, env=env, capture_output=True, text=True, timeout=3600)
            line = proc.stdout.strip().splitlines()[-1] if proc.stdout.strip() else ""
            if proc.returncode == 0 and line == "survived":
                return {"status": "survived", "detail": f"{budget} seeds"}
            if proc.returncode != 3 or not line.startswith("caught "):
                return {"status": "error", "detail": (proc.stderr or proc.stdout)[-400:]}
            _, k, violation = line.split(" ", 2)
            k = int(k)
            if _baseline_ok(k, nodes, cache):
                return {"status": "caught", "seed": k, "seeds": k - start + 1, "detail": violation}
            seed = k + 1  # the real code fails there too: not this mutant's catch
        return {"status": "survived", "detail": f"{budget} seeds"}


def worker(nodes: int, start: int, end: int) -> int:
    """Runs inside the mutated copy: print the first violating seed."""
    from .core import run_seed
    for s in range(start, end):
        err, _ = run_seed(s, nodes)
        if err:
            print(f"caught {s} {' '.join(err[:300].split())}", flush=True)
            return 3
    print("survived", flush=True)
    return 0


def run_all(names=None, sizes=SIZES, budget: int | None = None, out=sys.stdout, start: int = 0) -> list[dict]:
    cache: dict = {}
    rows = []
    for mutant in MUTANTS:
        if names and mutant.name not in names:
            continue
        for n in sizes:
            t0 = time.perf_counter()
            res = hunt(mutant, n, budget or BUDGET[n] - start, cache, start)
            res.update(mutant=mutant.name, bug=mutant.bug, nodes=n, secs=time.perf_counter() - t0)
            rows.append(res)
            where = f"seed {res['seed']}" if res["status"] == "caught" else res["status"]
            print(f"{mutant.name:32} n={n:<3} {where:12} ({res['secs']:.0f}s) {res.get('detail', '')[:140]}",
                  file=out, flush=True)
    return rows


def table(rows: list[dict]) -> str:
    by: dict[str, dict] = {}
    for r in rows:
        by.setdefault(r["mutant"], {"bug": r["bug"]})[r["nodes"]] = (
            f"seed {r['seed']}" if r["status"] == "caught" else f"**{r['status']}**")
    sizes = sorted({r["nodes"] for r in rows})
    lines = ["| mutant | bug | " + " | ".join(f"n = {n}" for n in sizes) + " |",
             "|---|---|" + "---|" * len(sizes)]
    for name, cells in by.items():
        lines.append(f"| `{name}` | {cells['bug']} | " + " | ".join(cells.get(n, "") for n in sizes) + " |")
    return "\n".join(lines)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(prog="python -m consensus.sim.mutants", description=__doc__.split("\n\n")[0])
    p.add_argument("--only", action="append", help="mutant name (repeatable)")
    p.add_argument("--nodes", type=int, action="append", help="size (repeatable; default 4, 5, 7, 10)")
    p.add_argument("--budget", type=int, default=None, help="seeds per (mutant, size)")
    p.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    p.add_argument("--start", type=int, default=0, help="first seed (to continue a search)")
    p.add_argument("--end", type=int, default=0, help=argparse.SUPPRESS)
    p.add_argument("--list", action="store_true", help="list the mutants")
    args = p.parse_args(argv)
    if args.worker:
        return worker(args.nodes[0], args.start, args.end)
    if args.list:
        for mu in MUTANTS:
            print(f"{mu.name:32} {mu.bug}")
        return 0
    rows = run_all(args.only, tuple(args.nodes or SIZES), args.budget, start=args.start)
    print()
    print(table(rows))
    bad = [r for r in rows if r["status"] != "caught"]
    print(f"\n{len(rows) - len(bad)} of {len(rows)} (mutant, size) pairs caught")
    return 1 if bad else 0


if __name__ == "__main__":
    sys.exit(main())
