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
  2f+1 of the current members (``quorum(n)``) agree on (type, subject, subject_key[, peer_id, addr]).
  Applying adds/removes ``member/`` and ``client/`` keys at once (who may submit txs), and writes the
  consensus member set of the next epoch, ``epoch/<start>`` (node.ledger.epochs): the replica set changes at
  the first epoch boundary after the approving block.
- ``consent.granted`` / ``research.access.granted`` write their key, ``consent.revoked`` deletes both, but
  only from the patient's home member; ``consent.vote``, research projects and the export gate for
  ``export`` / ``deidentified``: node.ledger.research (the rules and their state keys). The reason a rule
  gives is kept in ``LedgerState.rejections`` (node-local memory, for ``get_tx`` and the log).
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
from collections import OrderedDict

import msgpack

from consensus.certificate import quorum
from node.ledger.epochs import (
    EPOCH_PREFIX,
    PSK_PREFIX,
    VOTABLE_PARAMS,
    EpochHistory,
    EpochMember,
    PskRotation,
    decode_psk_value,
    encode_epoch_value,
    encode_psk_value,
    epoch_key,
    psk_key,
    psk_retire_height,
    switch_height,
)
from node.ledger.genesis import Genesis
from node.ledger.oprf_reshare import COMPLAINT_MS, MAX_RESHARE_MEMBERS, SKEW_FACTOR
from node.ledger.research import GATED_TYPES, RESEARCH_STATE_TYPES, ResearchState
from node.ledger.research import consent_key as consent_key
from node.ledger.tx import Tx

__all__ = ["LedgerState", "STATE_DOMAIN", "STATE_TYPES", "next_state_root", "consent_key"]

STATE_DOMAIN = b"radchain/state/v1\x00"
STATE_TYPES = frozenset({"client.added", "client.removed", "member.added", "member.removed", "member.key_rotated",
                         "params.changed", "network.psk_rotated",
                         "consent.granted", "consent.revoked", "research.access.granted",
                         "evidence.equivocation", "oprf.dealing"}) | RESEARCH_STATE_TYPES | GATED_TYPES
# types decided by node.ledger.research (consent ownership, projects, the export gate)
_RESEARCH_RULED = frozenset({"consent.granted", "consent.revoked", "research.access.granted"}) | \
    RESEARCH_STATE_TYPES | GATED_TYPES
REMEMBER_REJECTIONS = 10_000  # reasons of recent rule rejections kept for get_tx

_pack = msgpack.Packer(use_bin_type=True).pack
_U64 = struct.Struct(">Q")


def next_state_root(prev: bytes, height: int, writes: list[tuple[bytes, bytes | None]]) -> bytes:
    if not writes:
        return prev
    return hashlib.sha256(STATE_DOMAIN + prev + _U64.pack(height) + _pack([list(w) for w in writes])).digest()


def proposal_id(what: list) -> bytes:
    """A membership proposal's id: votes with the same id count together (``radchain member approve ID``)."""
    return hashlib.sha256(_pack(what)).digest()


def proposal_what(fields: dict) -> list:
    """What a member.added/member.removed/params.changed tx proposes (its vote id's preimage)."""
    t = fields["type"]
    if t == "params.changed":
        return [t, fields["param"], b"", fields["value"]]
    if t == "network.psk_rotated":  # approvals name the commitment; the boxes travel with the proposal
        return [t, "psk", fields["psk_commit"]]
    if t == "member.removed":
        return [t, fields["subject"], b""]
    if "peer_id" not in fields and "addr" not in fields:
        return [t, fields["subject"], fields["subject_key"]]
    return [t, fields["subject"], fields["subject_key"], fields.get("peer_id", ""), fields.get("addr", "")]


class LedgerState:
    """In-memory view of the registry part of the state (consents live only in the store)."""

    def __init__(self, genesis: Genesis):
        self.chain_id = genesis.chain_id
        self.members: dict[str, bytes] = {}
        self.client_of: dict[bytes, str] = {}
        # vote id -> (type, subject, subject_key, voters, further proposal fields (peer_id, addr))
        self.votes: dict[bytes, tuple[str, str, bytes, set[str], tuple]] = {}
        self.root: bytes = b""
        self.research = ResearchState()
        # the agreed timestamp of the block being executed (consent and project expiry are judged by it);
        # set by whoever executes a block (node.ledger.chain, node.ledger.verifier) before execute_txs
        self.block_time: int = 0
        self.rejections: OrderedDict[bytes, str] = OrderedDict()
        self.epochs = EpochHistory(genesis)
        self.height = 0  # the block being executed (execute_txs sets it): when a change takes effect
        self.psk_rotations: dict[int, PskRotation] = {}  # start height -> approved PSK rotation (epochs)
        window = genesis.params.get("oprf_complaint_ms", COMPLAINT_MS)  # validated by complaint_window()
        self.oprf_complaint_ms = window if type(window) is int else COMPLAINT_MS

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
                tx_type, subject, subject_key, voters, *extra = msgpack.unpackb(value, raw=False)
                st.votes[key[5:]] = (tx_type, subject, subject_key, set(voters), tuple(extra))
            elif key.startswith(EPOCH_PREFIX):
                st.epochs.add_stored(int.from_bytes(key[len(EPOCH_PREFIX):], "big"), value)
            elif key.startswith(PSK_PREFIX):
                start = int.from_bytes(key[len(PSK_PREFIX):], "big")
                st.psk_rotations[start] = decode_psk_value(start, value)
            else:
                st.research.load_item(key, value)
        st.root = root
        return st

    # ------------------------------------------------------------------ queries
    def authorized(self, member: str, client: bytes) -> bool:
        return self.client_of.get(client) == member and member in self.members

    def rule_violation(self, fields: dict, now_ms: int) -> str | None:
        """Why a tx would be rejected by a research rule if executed now (admission's check), or None."""
        if fields["type"] not in _RESEARCH_RULED:
            return None
        return self.research.decide(fields, now_ms, self.members, quorum(len(self.members)))

    # ------------------------------------------------------------------ execution
    def apply(self, tx: Tx, tx_hash: bytes, writes: list) -> bool:
        """Apply a state-changing tx (type in STATE_TYPES) whose signer is authorised; False = rejected."""
        f = tx.fields
        t = f["type"]
        member = f["member"]
        if t in _RESEARCH_RULED:
            reason = self.research.apply(f, tx_hash, writes, self.block_time, self.members,
                                         quorum(len(self.members)))
            if reason is None:
                return True
            self.rejections[tx_hash] = reason
            if len(self.rejections) > REMEMBER_REJECTIONS:
                self.rejections.popitem(last=False)
            return False
        if t == "evidence.equivocation":
            ev = hashlib.sha256(_pack(f["evidence"])).digest()
            writes.append((b"evidence/" + f["offender"].to_bytes(2, "big") + ev, tx_hash))
            return True
        # Registry changes and OPRF key dealings: only the member key itself may ask for them (a dealing
        # receives the member's new key share and speaks for it in complaints and acks: a client key that
        # could post one in the member's name could make dealers reveal that share; node.ledger.oprf_reshare)
        if self.members.get(member) != f["client"]:
            return False
        if t == "oprf.dealing":
            return True  # no state of its own: node.ledger.oprf_reshare reads the applied ones in chain order
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
        latest = self.epochs.latest
        if t == "network.psk_rotated":
            reason = self._psk_vote(member, f, writes)
            if reason is None:
                return True
            self._reject(tx_hash, reason)
            return False
        if t == "member.key_rotated":
            return self._rotate(member, f, latest, writes)
        if t == "params.changed":
            name, value = f["param"], f["value"]
            bounds = VOTABLE_PARAMS.get(name)
            if bounds is None or not bounds[0] <= value <= bounds[1]:
                return False
            if name == "max_clock_skew_ms" and value * SKEW_FACTOR > self.oprf_complaint_ms:
                return False  # the OPRF complaint window must stay well above what a primary can skew
            subject, key, what = name, b"", proposal_what(f)
        elif t == "member.added":
            subject, key = f["subject"], f["subject_key"]
            if subject in self.members or key in self.client_of or not subject.isprintable():
                return False
            if subject in latest.names or key in latest.pubkeys:
                return False  # still in the consensus set until its removal takes effect
            if len(latest.members) >= MAX_RESHARE_MEMBERS:
                return False  # the OPRF key could not be reshared to a larger set on chain
            peer_id = f.get("peer_id", "")
            if peer_id and any(m.peer_id == peer_id for m in latest.members):
                return False
            what = proposal_what(f)
        elif t == "member.removed":
            subject, key = f["subject"], b""
            if subject not in self.members or latest.names == (subject,):
                return False
            what = proposal_what(f)
        else:  # pragma: no cover - STATE_TYPES and this function disagree
            raise AssertionError(t)
        vote_id = proposal_id(what)
        voters = self.votes.setdefault(vote_id, (t, subject, key, set(), tuple(what[3:])))[3]
        voters.add(member)
        if len(voters & self.members.keys()) < quorum(len(self.members)):
            writes.append((b"vote/" + vote_id, _pack([t, subject, key, sorted(voters), *what[3:]])))
            return True
        del self.votes[vote_id]
        writes.append((b"vote/" + vote_id, None))
        if t == "params.changed":
            params = dict(latest.params)
            params[subject] = f["value"]
            self._set_next_epoch(latest.members, writes, tuple(sorted(params.items())))
            return True
        if t == "member.added":
            self.members[subject] = key
            self.client_of[key] = subject
            writes.append((b"member/" + subject.encode(), key))
            writes.append((b"client/" + key, subject.encode()))
            addr = f.get("addr")
            new = latest.members + (EpochMember(subject, key, f.get("peer_id", ""), (addr,) if addr else ()),)
        else:
            del self.members[subject]
            writes.append((b"member/" + subject.encode(), None))
            for ck in sorted(k for k, m in self.client_of.items() if m == subject):
                del self.client_of[ck]
                writes.append((b"client/" + ck, None))
            new = tuple(m for m in latest.members if m.name != subject)
        self._set_next_epoch(new, writes)
        return True

    def _reject(self, tx_hash: bytes, reason: str) -> None:
        self.rejections[tx_hash] = reason
        if len(self.rejections) > REMEMBER_REJECTIONS:
            self.rejections.popitem(last=False)

    def _psk_vote(self, member: str, f: dict, writes: list) -> str | None:
        """A vote for a PSK rotation (node.ledger.epochs): the first vote carries a box for every current
        member (sealed to its current member key); 2f+1 votes for the same commitment approve it, from the
        first height after the next epoch boundary. Returns why the vote is rejected, or None."""
        commit, boxes = f["psk_commit"], f.get("psk_boxes")
        registry = dict(sorted(self.members.items()))
        vote_id = proposal_id(proposal_what(f))
        open_vote = self.votes.get(vote_id)
        created = open_vote is None
        if created:
            if boxes is None:
                return "no open PSK rotation with this commitment: a proposal carries the boxes"
            if {n: k for n, k, _ in boxes} != registry:
                return "the boxes must be sealed to exactly the current members' keys"
            if any(r.commit == commit for r in self.psk_rotations.values()):
                return "this PSK was rotated to before"
            open_vote = self.votes[vote_id] = ("network.psk_rotated", "psk", commit, set(), (boxes,))
        elif boxes is not None and boxes != open_vote[4][0]:
            return "an approval must carry the proposal's boxes or none"
        voters = open_vote[3]
        had_voted = member in voters
        voters.add(member)
        boxes = open_vote[4][0]
        if len(voters & self.members.keys()) < quorum(len(self.members)):
            writes.append((b"vote/" + vote_id, _pack([*open_vote[:3], sorted(voters), boxes])))
            return None
        start = switch_height(self.height, self.epochs.interval) + 1
        reason = None
        if {n: k for n, k, _ in boxes} != registry:
            reason = "the member set changed since this rotation was proposed: propose a new one"
        elif start in self.psk_rotations:
            reason = f"a PSK rotation already starts at height {start}: approve this one after it"
        if reason is not None:  # the vote stays as it was (or never existed)
            if created:
                del self.votes[vote_id]
            elif not had_voted:
                voters.discard(member)
            return reason
        del self.votes[vote_id]
        writes.append((b"vote/" + vote_id, None))
        retire = psk_retire_height(start, self.epochs.psk_retire_blocks)
        self.psk_rotations[start] = PskRotation(start, commit, tuple((n, k, b) for n, k, b in boxes), self.height,
                                                retire)
        writes.append((psk_key(start), encode_psk_value(commit, boxes, self.height, retire)))
        return None

    def _rotate(self, member: str, f: dict, latest, writes: list) -> bool:
        """A member replaces its own signing key and/or libp2p identity and address (no vote: its keys are
        its own business). Txs are signed with the new key from this block on; consensus switches to it at
        the next epoch boundary, where the member keeps its replica index."""
        new, peer_id, addr = f["subject_key"], f.get("peer_id"), f.get("addr")
        index = latest.index_of(member)
        if index is None or new in self.client_of or new in latest.pubkeys:
            return False
        if peer_id and any(m.peer_id == peer_id for m in latest.members if m.name != member):
            return False
        old = self.members[member]
        del self.client_of[old]
        self.client_of[new] = member
        self.members[member] = new
        writes.append((b"client/" + old, None))
        writes.append((b"client/" + new, member.encode()))
        writes.append((b"member/" + member.encode(), new))
        entry = latest.members[index]
        entry = EpochMember(member, new, peer_id or entry.peer_id, (addr,) if addr else entry.addrs)
        self._set_next_epoch(latest.members[:index] + (entry,) + latest.members[index + 1:], writes)
        return True

    def _set_next_epoch(self, members: tuple[EpochMember, ...], writes: list, params=None) -> None:
        """The consensus set after the first epoch boundary past this block (node.ledger.epochs)."""
        assert self.height >= 1, "a membership change outside a block"
        start = switch_height(self.height, self.epochs.interval) + 1
        assert start >= self.epochs.latest.start, "epochs only go forward"
        params = self.epochs.latest.params if params is None else params
        self.epochs.set(start, members, params)
        writes.append((epoch_key(start), encode_epoch_value(members, params)))
