"""Helpers shared by the ledger tests: a 4-member test consortium, signed txs, certificates."""

from __future__ import annotations

from pathlib import Path

from nacl.signing import SigningKey

from consensus.certificate import Certificate, commit_signing_bytes
from node.ledger.chain import Chain
from node.ledger.genesis import Genesis, Member
from node.ledger.intake import make_tx
from node.ledger.pseudonym import Pseudonymizer
from node.ledger.store import Store

CHAIN_ID = "radchain-test"
T0 = 1_800_000_000_000  # fixed epoch ms used as "now" in tests


class Consortium:
    """Four members with deterministic keys; member 0 also has one extra client key."""

    def __init__(self, n: int = 4, params: dict | None = None):
        self.keys = [SigningKey(bytes([i + 1]) * 32) for i in range(n)]
        self.client = SigningKey(b"\x77" * 32)
        members = []
        for i, k in enumerate(self.keys):
            clients = (bytes(self.client.verify_key),) if i == 0 else ()
            members.append(Member(f"hosp-{chr(97 + i)}", bytes(k.verify_key), f"peer{i}",
                                  (f"/ip4/127.0.0.1/tcp/{7000 + i}",), f"http://127.0.0.1:{8000 + i}", clients))
        self.genesis = Genesis(CHAIN_ID, "2026-11-27T00:00:00+00:00", tuple(members), dict(params or {}))
        self.pseudo = Pseudonymizer(b"k" * 32)
        self._n = 0

    def name(self, i: int) -> str:
        return self.genesis.members[i].name

    def tx(self, member: int = 0, tx_type: str = "instances.accessed", signer: SigningKey | None = None,
           ts: int | None = None, **fields) -> bytes:
        self._n += 1
        base = {}
        if tx_type in ("instances.accessed", "instances.stored", "export", "query"):
            base = {"patient": self.pseudo.patient(f"PAT-{self._n % 7}", "HOSP-A"),
                    "study": self.pseudo.study(f"1.2.3.{self._n % 11}"),
                    "user": self.pseudo.user("dr.smith"), "purpose": "TREAT", "outcome": 0,
                    "action": "R" if tx_type != "instances.stored" else "C"}
        base.update(fields)
        return make_tx(tx_type, signer or self.keys[member], chain_id=CHAIN_ID, member=self.name(member),
                       ts=T0 + self._n if ts is None else ts, nonce=self._n.to_bytes(16, "big"), **base)

    def certificate(self, chain: Chain, payload: bytes, height: int, view: int = 0,
                    signers=(0, 1, 2)) -> bytes:
        digest = chain.proposal_digest(payload)
        msg = commit_signing_bytes(CHAIN_ID, view, height, digest)
        sigs = tuple((i, self.keys[i].sign(msg).signature) for i in sorted(signers))
        return Certificate(height, view, digest, sigs).encode()

    def commit(self, chain: Chain, txs: list[bytes], proposer: int = 0, view: int = 0, now: int | None = None):
        height = chain.height + 1
        now = T0 if now is None else now
        payload = chain.build_proposal(height, proposer, now, txs)
        chain.validate_proposal(height, payload, now_ms=now)
        return chain.execute(payload, self.certificate(chain, payload, height, view))


def build_home(tmp_path, consortium, blocks=5, per_block=6) -> Path:
    """A node home (genesis.json, data/chain) holding `blocks` committed blocks, for verify-chain."""
    home = tmp_path / "home"
    (home / "data").mkdir(parents=True)
    consortium.genesis.save(home / "genesis.json")
    store = Store(home / "data" / "chain")
    chain = Chain(consortium.genesis, store)
    c = consortium
    previous: list[bytes] = []
    for b in range(blocks):
        txs = [c.tx(i % 4) for i in range(per_block)]
        if b == 2:  # a state change and a re-proposed tx of the previous block in the chain under test
            txs.append(c.tx(1, "client.added", subject_key=b"\x33" * 32))
            txs.append(previous[0])
        c.commit(chain, txs, proposer=b % 4, view=b)
        previous = txs
    store.close()
    return home
