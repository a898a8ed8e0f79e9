"""What research sharing costs: the export gate at execution, and de-identification per instance.

    python -m bench.research [--txs 5000] [--block 500] [--rounds 3]

Gate: blocks of research exports (purpose HRESCH, a project, a consent looked up per patient: every rule of
node.ledger.research runs) against blocks of the same exports for treatment (TREAT, no project: ungated),
through ``Chain.execute`` on one store, alternating block by block, best of the rounds per block position.
Both blocks carry signatures already verified (validate_proposal ran first), so the ratio isolates the rule.

De-identification: ``Deidentifier.deidentify`` (PS3.15 Basic Profile via dicom-anonymizer, keyed UIDs, the
second pass and the fail-closed scan) against a plain pydicom read + write of the same file, in the same run.
"""

from __future__ import annotations

import argparse
import io
import shutil
import tempfile
import time
from pathlib import Path

import pydicom
from nacl.signing import SigningKey
from pydicom.data import get_testdata_file

from bench.ledger import CHAIN_ID, certificate, make_genesis
from node.ledger.chain import Chain
from node.ledger.intake import make_tx
from node.ledger.pseudonym import Pseudonymizer
from node.ledger.store import Store
from node.research.deid import Deidentifier

T0 = 1_800_000_000_000
DAY = 86_400_000


def _setup(keys, pseudo, chain: Chain, patients: int) -> None:
    txs = [make_tx("research.project.registered", keys[0], chain_id=CHAIN_ID, member="hosp-0", ts=T0, nonce=b"p" * 16,
                   project="BENCH-1", digest=b"\x01" * 32, purpose="HRESCH", scope="IMG", expires=T0 + 365 * DAY),
           make_tx("research.project.approved", keys[1], chain_id=CHAIN_ID, member="hosp-1", ts=T0, nonce=b"a" * 16,
                   project="BENCH-1")]
    for i in range(patients):
        txs.append(make_tx("consent.granted", keys[1], chain_id=CHAIN_ID, member="hosp-1", ts=T0 + i,
                           nonce=b"c" + i.to_bytes(15, "big"), patient=pseudo.patient(f"P{i}", "H"),
                           grantee=pseudo.grantee("BENCH-1"), project="BENCH-1", scope="IMG", purpose="HRESCH"))
    for start in range(0, len(txs), 500):
        _commit(chain, keys, txs[start:start + 500])


def _commit(chain: Chain, keys, txs: list[bytes]) -> float:
    height = chain.height + 1
    payload = chain.build_proposal(height, 0, T0, txs)
    chain.validate_proposal(height, payload, now_ms=T0)
    cert = certificate(keys, height, chain.proposal_digest(payload))
    t = time.perf_counter()
    chain.execute(payload, cert)
    return time.perf_counter() - t


def bench_gate(n: int, block: int, rounds: int) -> None:
    keys = [SigningKey(bytes([i + 1]) * 32) for i in range(4)]
    pseudo = Pseudonymizer(b"b" * 32)
    patients = 1000
    tmp = tempfile.mkdtemp(prefix="radchain-bench-research-")
    try:
        store = Store(Path(tmp) / "chain", sync=False)
        chain = Chain(make_genesis(keys), store)
        _setup(keys, pseudo, chain, patients)

        def exports(kind: str, r: int) -> list[list[bytes]]:
            out = []
            for b in range(n // block):
                txs = []
                for i in range(block):
                    j = b * block + i
                    extra = {"project": "BENCH-1", "purpose": "HRESCH"} if kind == "gated" else {"purpose": "TREAT"}
                    txs.append(make_tx("export", keys[1], chain_id=CHAIN_ID, member="hosp-1", ts=T0 + j,
                                       nonce=bytes([r, kind == "gated"]) + j.to_bytes(14, "big"),
                                       patient=pseudo.patient(f"P{j % patients}", "H"),
                                       study=pseudo.study(f"1.2.{j}"), ae="RESEARCH", outcome=0, action="R",
                                       modality="CT", **extra))
                out.append(txs)
            return out

        best = {"gated": [float("inf")] * (n // block), "ungated": [float("inf")] * (n // block)}
        for r in range(rounds):
            gated, ungated = exports("gated", r), exports("ungated", r)
            for b in range(n // block):
                order = ("ungated", "gated") if (b + r) % 2 == 0 else ("gated", "ungated")  # no position bias
                for kind in order:
                    txs = ungated[b] if kind == "ungated" else gated[b]
                    best[kind][b] = min(best[kind][b], _commit(chain, keys, txs))
        g, u = sum(best["gated"]), sum(best["ungated"])
        print(f"export gate: {n} research exports executed at {n / g:,.0f} tx/s, the same exports for "
              f"treatment (ungated) at {n / u:,.0f} tx/s: ratio {u / g:.3f} "
              f"(execute only, {patients} patients with a consent, blocks of {block}, best of {rounds})")
        store.close()
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def bench_deid(rounds: int) -> None:
    path = Path(get_testdata_file("CT_small.dcm", download=False))
    blob = path.read_bytes()
    deid = Deidentifier("BENCH-1", b"\x07" * 32)
    n = 50

    def plain() -> None:
        ds = pydicom.dcmread(io.BytesIO(blob))
        ds.save_as(io.BytesIO(), enforce_file_format=True)

    best_plain = best_deid = float("inf")
    for _ in range(rounds):
        t = time.perf_counter()
        for _ in range(n):
            plain()
        best_plain = min(best_plain, time.perf_counter() - t)
        t = time.perf_counter()
        for _ in range(n):
            deid.deidentify(blob, "HOSP-A")
        best_deid = min(best_deid, time.perf_counter() - t)
    print(f"de-identification: {n / best_deid:,.0f} instances/s ({len(blob) / 1024:.0f} KiB CT_small), plain pydicom "
          f"read + write {n / best_plain:,.0f}/s: ratio {best_plain / best_deid:.3f} (best of {rounds})")


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--txs", type=int, default=5000)
    p.add_argument("--block", type=int, default=500)
    p.add_argument("--rounds", type=int, default=3)
    args = p.parse_args(argv if argv is not None else [])
    bench_gate(args.txs, args.block, args.rounds)
    bench_deid(args.rounds)


if __name__ == "__main__":
    import sys

    main(sys.argv[1:])
