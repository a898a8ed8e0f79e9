"""Ledger state: the member and client-key registry, membership votes, consents and research grants.

The state is what execution needs to decide a tx (is this client key allowed to sign for this member?)
plus the registries an auditor asks about (which consents are in force?). It is deliberately small and
every change is a write of one key:

    member/<name>                         -> member public key 32
    client/<client key 32>                -> member name        (the member key is itself a client key)
    vote/<sha256(type, subject, key)>     -> msgpack [type, subject, subject_key, [voter names, sorted]]
    consent/<patient 16><msgpack [grantee token, scope]>  -> msgpack {expires, purpose, member, tx, ts}
    research/<patient 16><msgpack [grantee token, scope]> -> msgpack {expires, purpose, member, tx, ts}
    evidence/<offender u16><sha256(evidence)>        -> tx hash of the first report

Rules (a tx that breaks one is REJECTED: kept in its block and Merkle tree, but no state effect and no
index entries):
- Every tx: ``chain`` is this chain and ``client`` is registered to ``member`` (``client/<key>`` = member).
- ``client.added`` / ``client.removed``: signed with the member key itself; a key belongs to at most one
  member; the member key cannot be removed.
- ``member.added`` / ``member.removed``: signed with a member key; each is a vote, applied when votes from
  2f+1 of the current members (``quorum(n)``) agree on (type, subject, subject_key). Applying adds/removes
  ``member/`` and ``client/`` keys. (Consensus membership stays that of genesis; reconfiguration of the
  replica set is future work. The registry governs who may submit txs.)
- ``consent.granted`` / ``research.access.granted`` write their key, ``consent.revoked`` deletes it.
- ``evidence.equivocation`` records the report.

State root: ``root_0 = SHA-256(D || genesis_hash || msgpack(genesis writes))`` and for each block with at
least one write ``root_h = SHA-256(D || root_{h-1} || height u64 || msgpack([[key, value|nil], ...]))``
over the block's writes in execution order (D = "radchain/state/v1\\0"); a block without writes keeps the
root. It commits to the whole history of state writes, hence (execution being deterministic) to the
state; it does not give per-key proofs (a sparse Merkle tree would; not needed yet).
"""

from __future__ import annotations

import hashlib
import struct

import msgpack

from consensus.certificate import quorum
from node.genesis import Genesis
from node.tx import Tx

__all__ = ["LedgerState", "STATE_DOMAIN", "STATE_TYPES", "next_state_root", "consent_key"]

STATE_DOMAIN = b"radchain/state/v1\x00"
STATE_TYPES = frozenset({"client.added", "client.removed", "member.added", "member.removed",
                         "consent.granted", "consent.revoked", "research.access.granted",
                         "evidence.equivocation"})

_pack = msgpack.Packer(use_bin_type=True).pack
_U64 = struct.Struct(">Q")


def next_state_root(prev: bytes, height: int, writes: list[tuple[bytes, bytes | None]]) -> bytes:
    if not writes:
        return prev
    return hashlib.sha256(STATE_DOMAIN + prev + _U64.pack(height) + _pack([list(w) for w in writes])).digest()


def consent_key(kind: str, patient: bytes, grantee: bytes, scope: str) -> bytes:
    return kind.encode() + b"/" + patient + _pack([grantee, scope])


class LedgerState:
    """In-memory view of the registry part of the state (consents live only in the store)."""

    def __init__(self, genesis: Genesis):
        self.chain_id = genesis.chain_id
        self.members: dict[str, bytes] = {}
        self.client_of: dict[bytes, str] = {}
        self.votes: dict[bytes, tuple[str, str, bytes, set[str]]] = {}
        self.root: bytes = b""

    # ------------------------------------------------------------------ construction
    @classmethod
    def from_genesis(cls, genesis: Genesis) -> tuple[LedgerState, list[tuple[bytes, bytes]]]:
        """Initial state and its writes (what the store records at genesis)."""
        st = cls(genesis)
        writes: list[tuple[bytes, bytes]] = []
        for m in genesis.members:
            st.members[m.name] = m.pubkey
            writes.append((b"member/" + m.name.encode(), m.pubkey))
            for key in m.allowed_keys:
                if key in st.client_of:
                    raise ValueError(f"genesis: client key {key.hex()} listed for two members")
                st.client_of[key] = m.name
                writes.append((b"client/" + key, m.name.encode()))
        st.root = hashlib.sha256(STATE_DOMAIN + genesis.hash() + _pack([list(w) for w in writes])).digest()
        return st, writes

    @classmethod
    def load(cls, genesis: Genesis, items, root: bytes) -> LedgerState:
        """Rebuild from stored state items ((key, value) pairs, e.g. Store.state_items())."""
        st = cls(genesis)
        for key, value in items:
            if key.startswith(b"member/"):
                st.members[key[7:].decode()] = value
            elif key.startswith(b"client/"):
                st.client_of[key[7:]] = value.decode()
            elif key.startswith(b"vote/"):
                tx_type, subject, subject_key, voters = msgpack.unpackb(value, raw=False)
                st.votes[key[5:]] = (tx_type, subject, subject_key, set(voters))
        st.root = root
        return st

    # ------------------------------------------------------------------ queries
    def authorized(self, member: str, client: bytes) -> bool:
        return self.client_of.get(client) == member and member in self.members

    # ------------------------------------------------------------------ execution
    def apply(self, tx: Tx, tx_hash: bytes, writes: list) -> bool:
        """Apply a state-changing tx (type in STATE_TYPES) whose signer is authorised; False = rejected."""
        f = tx.fields
        t = f["type"]
        member = f["member"]
        if t in ("consent.granted", "research.access.granted"):
            kind = "consent" if t == "consent.granted" else "research"
            value = _pack({"expires": f.get("expires", 0), "purpose": f["purpose"], "member": member,
                           "tx": tx_hash, "ts": f["ts"]})
            writes.append((consent_key(kind, f["patient"], f["grantee"], f["scope"]), value))
            return True
        if t == "consent.revoked":
            writes.append((consent_key("consent", f["patient"], f["grantee"], f["scope"]), None))
            return True
        if t == "evidence.equivocation":
            ev = hashlib.sha256(_pack(f["evidence"])).digest()
            writes.append((b"evidence/" + f["offender"].to_bytes(2, "big") + ev, tx_hash))
            return True
        # Registry changes: only the member key itself may ask for them.
        if self.members.get(member) != f["client"]:
            return False
        if t == "client.added":
            key = f["subject_key"]
            if key in self.client_of:
                return False
            self.client_of[key] = member
            writes.append((b"client/" + key, member.encode()))
            return True
        if t == "client.removed":
            key = f["subject_key"]
            if self.client_of.get(key) != member or key == self.members[member]:
                return False
            del self.client_of[key]
            writes.append((b"client/" + key, None))
            return True
        if t == "member.added":
            subject, key = f["subject"], f["subject_key"]
            if subject in self.members or key in self.client_of or not subject.isprintable():
                return False
        elif t == "member.removed":
            subject, key = f["subject"], b""
            if subject not in self.members:
                return False
        else:  # pragma: no cover - STATE_TYPES and this function disagree
            raise AssertionError(t)
        vote_id = hashlib.sha256(_pack([t, subject, key])).digest()
        _, _, _, voters = self.votes.setdefault(vote_id, (t, subject, key, set()))
        voters.add(member)
        if len(voters & self.members.keys()) < quorum(len(self.members)):
            writes.append((b"vote/" + vote_id, _pack([t, subject, key, sorted(voters)])))
            return True
        del self.votes[vote_id]
        writes.append((b"vote/" + vote_id, None))
        if t == "member.added":
            self.members[subject] = key
            self.client_of[key] = subject
            writes.append((b"member/" + subject.encode(), key))
            writes.append((b"client/" + key, subject.encode()))
        else:
            del self.members[subject]
            writes.append((b"member/" + subject.encode(), None))
            for ck in sorted(k for k, m in self.client_of.items() if m == subject):
                del self.client_of[ck]
                writes.append((b"client/" + ck, None))
        return True
