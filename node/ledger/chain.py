"""The ledger application consensus drives: build, digest, validate and execute proposals.

``Chain(genesis, store)`` is also the ``app`` of ``consensus.replica.Replica`` (``digest``, ``validate``).

- ``build_proposal(height, proposer, timestamp_ms, txs)``: payload bytes (node.ledger.block) for consensus.
- ``proposal_digest(payload)``: SHA-256 of the proposal header, what members sign in commits. A receipt
  (tx + Merkle path + proposal header + certificate) is checkable without the block.
- ``validate_proposal(height, payload, now_ms)``: raise ProposalError unless the payload is well formed and
  within limits, its header names this chain and height, a known proposer and a timestamp within
  ``max_clock_skew_ms`` of ``now_ms``, every tx decodes canonically, belongs to this chain, is signed by
  a client key registered to its member (as of the last executed block), appears once, and tx_root is
  their Merkle root. Txs admitted through ``check_tx`` (the mempool) are not decoded or verified again;
  a validated proposal is kept (by digest) so ``execute`` does not parse it again.
- ``execute(payload, certificate)``: verify the certificate, apply the txs (node.ledger.state rules), derive the
  block header (prev_hash, state_root; nothing from the certificate) and write block, certificate, txs, indexes
  and state in one store batch. Txs already committed (or repeated in the payload) are marked DUPLICATE
  and not indexed again; txs whose key is no longer authorised are REJECTED. Both are deterministic, so
  every node derives the same block.
"""

from __future__ import annotations

import hashlib
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import msgpack

from consensus.certificate import Certificate, CertificateError, verify_certificate
from node.ledger.block import (
    APPLIED,
    DUPLICATE,
    PROPOSAL_DOMAIN,
    REJECTED,
    Block,
    BlockError,
    BlockHeader,
    ProposalHeader,
    encode_compact_payload,
    encode_payload,
    is_compact_payload,
    split_compact_payload,
    split_payload,
)
from node.ledger.epochs import Epoch
from node.ledger.equivocation import check_evidence_tx
from node.ledger.genesis import Genesis
from node.ledger.merkle import merkle_root
from node.ledger.sigbatch import verify_txs
from node.ledger.state import STATE_TYPES, LedgerState, next_state_root
from node.ledger.store import (
    LOC,
    OWN,
    STORED_TYPES,
    SUFFIX,
    TX,
    Store,
    index_tag,
    member_type_prefix,
    tx_key,
)
from node.ledger.tx import TOKEN_BYTES, Tx, TxError, body_digest, decode_tx

__all__ = ["Chain", "ChainError", "ProposalError", "TxNotAuthorised", "TxBreaksRule", "proposal_digest", "execute_txs",
           "SeenFilter", "SyncedPayload", "SyncedBlockError", "prepare_synced"]

_sha256 = hashlib.sha256


class ProposalError(ValueError):
    """A proposal payload is invalid; ``reason`` says why (and which tx)."""

    def __init__(self, reason: str):
        super().__init__(reason)
        self.reason = reason


class ChainError(RuntimeError):
    """The chain cannot execute (bad certificate, wrong height, wrong genesis, store mismatch)."""


class TxNotAuthorised(TxError):
    """A well-formed, correctly signed tx whose key is not (or no longer) authorised for its member, or
    that names another chain. An honest member may gossip one (a key revoked after it admitted the tx)."""


class TxBreaksRule(TxNotAuthorised):
    """A well-formed, authorised tx that a ledger rule would reject if executed now (node.ledger.research:
    consent ownership, projects, the export gate). Refused at admission with the rule's reason; if one is
    committed anyway (a member that skipped this check), every validator rejects it at execution. An honest
    member may gossip one (a consent revoked after it admitted the tx), so gossip does not score it."""


class SyncedBlockError(ChainError):
    """A synced block that must not be applied. ``peer_fault``: the serving peer alone can be blamed (the
    certificate does not verify, or the txs do not match the certified tx root); otherwise a quorum signed
    a block no honest member would have validated (a tx that does not decode or whose signature fails),
    which every honest peer would serve alike."""

    def __init__(self, reason: str, peer_fault: bool):
        super().__init__(reason)
        self.peer_fault = peer_fault


@dataclass(frozen=True, eq=False)
class SyncedPayload:
    """A block from block sync, checked by ``prepare_synced`` off the event loop: its certificate verified
    under ``epoch``, its txs match the certified root, each decoded canonically once, each signature
    verified. ``Chain.execute(payload, certificate, synced=this)`` applies it without repeating any of
    that, after checking that ``epoch`` is the member set the executed chain fixes for ``height``."""

    height: int
    payload: bytes
    certificate: bytes
    epoch: Epoch  # the member set (and voted limits) every check above used
    digest: bytes
    header: ProposalHeader
    txs: list[Tx]
    hashes: list[bytes]

    def __iter__(self):  # (height, payload, certificate), what a synced block was before it was prepared
        return iter((self.height, self.payload, self.certificate))


def prepare_synced(height: int, payload: bytes, certificate: bytes, epoch: Epoch, max_txs: int,
                   max_payload: int, known: Callable[[bytes], Tx | None] | None = None) -> SyncedPayload:
    """Check one synced block completely, reading nothing of a chain (so a worker thread may run it):
    certificate first (2f+1 of ``epoch``'s members signed this payload's header at this height; until it
    verifies no tx is read), then payload structure and limits, the txs against the certified tx root,
    each tx's canonical decoding and its signature. Raises SyncedBlockError (only).

    Why the signatures are still checked although a quorum certified the block: the certificate proves that
    2f+1 members committed these exact txs (the header binds the tx root, the root every tx hash, a hash
    the exact signed bytes), so with at most f faulty members every tx was verified by f+1 honest ones,
    and the serving peer cannot slip in another tx. Skipping the check would thus be safe within the fault
    model; it is kept because this ledger is evidence: a record whose signature does not verify must never
    be stored, even if more than f members colluded to certify it (the verifier and any auditor would then
    find a forged record). It costs one Ed25519 check per tx, done here in a worker thread, where libsodium
    releases the GIL: on a machine with a spare core it overlaps the execution of the previous batch.

    ``known(hash)``: a tx this node already decoded and verified (Chain.verified: gossip admitted it), used
    as is; the hash is SHA-256 of the exact signed bytes, so it is that very tx, signature included. A dict
    lookup, safe from a worker thread."""
    try:
        digest = proposal_digest(payload)
        cert = Certificate.decode(certificate)
        verify_certificate(cert, epoch.pubkeys, epoch.chain_id, epoch.local(height), digest)
    except (ProposalError, CertificateError) as exc:
        raise SyncedBlockError(f"height {height}: {exc}", peer_fault=True) from None
    try:
        header_bytes, raws = split_payload(payload, max_txs, max_payload)
    except BlockError as exc:  # the certified header is there, the rest is not what honest members store
        raise SyncedBlockError(f"height {height}: {exc}", peer_fault=True) from None
    try:
        header = ProposalHeader.decode(header_bytes)
    except BlockError as exc:  # the header itself is certified: the quorum signed it
        raise SyncedBlockError(f"height {height}: certified header: {exc}", peer_fault=False) from None
    if header.tx_count != len(raws):
        raise SyncedBlockError(f"height {height}: certified tx_count {header.tx_count}, {len(raws)} txs sent",
                               peer_fault=True)
    sha256 = _sha256
    hashes = [sha256(raw).digest() for raw in raws]
    if merkle_root(hashes) != header.tx_root:
        raise SyncedBlockError(f"height {height}: the txs do not match the certified tx root", peer_fault=True)
    txs: list[Tx] = []
    unchecked: list[tuple[int, Tx]] = []
    for i, (raw, h) in enumerate(zip(raws, hashes, strict=True)):
        tx = known(h) if known is not None else None
        if tx is None:
            try:
                tx = decode_tx(raw, hash=h, verify=False)
            except TxError as exc:
                raise SyncedBlockError(f"height {height}: certified tx {i}: {exc}", peer_fault=False) from None
            unchecked.append((i, tx))
        txs.append(tx)
    for (i, _tx), ok in zip(unchecked, verify_txs([tx for _i, tx in unchecked]), strict=True):
        if not ok:
            raise SyncedBlockError(f"height {height}: certified tx {i}: signature does not verify",
                                   peer_fault=False)
    return SyncedPayload(height, payload, certificate, epoch, digest, header, txs, hashes)


def prepare_synced_batch(items: Sequence[tuple[int, bytes, bytes, Epoch, int, int]],
                         known: Callable[[bytes], Tx | None] | None = None
                         ) -> tuple[list[SyncedPayload], tuple[int, SyncedBlockError] | None]:
    """prepare_synced for consecutive blocks (one worker-thread call per sync response): the prepared
    prefix, and (index, error) of the first block refused (None: all prepared)."""
    out: list[SyncedPayload] = []
    for i, item in enumerate(items):
        try:
            out.append(prepare_synced(*item, known=known))
        except SyncedBlockError as exc:
            return out, (i, exc)
    return out, None


def _batch_refusal(tx: Tx, max_batch: int) -> str:
    return (f"sig: signed in a batch of {tx.batch_size}, the consortium's max_sign_batch is {max_batch} "
            "(a parameter its members vote: params.changed)")


def proposal_digest(payload: bytes) -> bytes:
    """SHA-256 of the payload's proposal header (domain-separated); reads only the header."""
    # Only the header (a bin) is read: no container larger than the outer pair, no map, str or ext.
    unpacker = msgpack.Unpacker(raw=False, max_buffer_size=max(len(payload), 1), max_bin_len=len(payload),
                                max_array_len=2, max_map_len=0, max_str_len=0, max_ext_len=0)
    unpacker.feed(payload)
    try:
        if unpacker.read_array_header() != 2:
            raise ProposalError("payload: must be [proposal_header, txs]")
        header = unpacker.unpack()
    except ProposalError:
        raise
    except Exception as exc:
        raise ProposalError(f"payload: undecodable ({exc.__class__.__name__})") from None
    if type(header) is not bytes:
        raise ProposalError("payload: proposal header must be a bin")
    return _sha256(PROPOSAL_DOMAIN + header).digest()


# Index tags (node.ledger.store key layout), bound once for the hot loop.
# token keys are TOKEN_BYTES long: the length byte of the key layout is constant
_T_STUDY, _T_PATIENT, _T_ACTOR, _T_PATIENT_STORED = (
    index_tag(n, TOKEN_BYTES) for n in ("study", "patient", "actor", "patient_stored"))
_prefix_cache: dict[tuple[str, str], bytes] = {}
_mt_cache: dict[tuple[str, str], bytes] = {}


def _str_prefix(tag: str, value: str) -> bytes:
    p = _prefix_cache.get((tag, value))
    if p is None:
        raw = value.encode()
        p = _prefix_cache[(tag, value)] = index_tag(tag, len(raw)) + raw
    return p


_TAG_AE = "ae"


def authority_error(f: dict, chain_id: str, authorized: Callable[[str, bytes], bool]) -> str | None:
    """Why the tx with fields ``f`` may not enter this chain (None: it may): it names another chain, or its
    client key is not (or no longer) authorised for its member. Mempool admission and proposal validation
    ask this; execute_txs applies the same two conditions inlined (its loop runs for every tx of a block)."""
    if f["chain"] != chain_id:
        return f"chain: tx is for chain {f['chain']!r}, this is {chain_id!r}"
    if not authorized(f["member"], f["client"]):
        return f"client: key {f['client'].hex()[:16]} is not authorised for member {f['member']!r}"
    return None


def execute_txs(state: LedgerState, height: int, txs: list[Tx], first_seen: Callable[[bytes], bool],
                put: Callable[[bytes, bytes], None]) -> tuple[bytes, list, list[bytes]]:
    """Decide and apply ``txs`` of block ``height``; return (statuses, state writes, index keys).

    Tx records are emitted through ``put(key, value)`` (a WriteBatch's put). Index entries are returned
    as keys (their value is empty) for the caller to write: sorted, because LevelDB inserts a batch in
    order into its memtable skiplist, and ascending keys touch the same nodes again (cache-warm) where
    random ones miss; this saves ~0.4 us per entry. ``first_seen(hash)`` says whether a tx hash was NOT
    committed in an earlier block. Shared by Chain.execute and offline verification, so both derive the
    same statuses and state root.
    """
    statuses = bytearray(len(txs))
    state.height = height  # membership changes take effect relative to it (node.ledger.epochs)
    writes: list = []
    seen: set[bytes] = set()
    chain_id = state.chain_id
    client_of, members = state.client_of, state.members  # authority_error's conditions, inlined
    pack_loc, pack_suffix = LOC.pack, SUFFIX.pack
    applied_loc = pack_loc(height, 0, APPLIED)[:8]  # height u64; index and status follow
    str_prefix, mt_cache = _str_prefix, _mt_cache
    index_keys: list[bytes] = []
    index = index_keys.append
    for i, tx in enumerate(txs):
        h = tx.hash
        if h in seen or not first_seen(h):
            statuses[i] = DUPLICATE
            continue
        seen.add(h)
        f = tx.fields
        member, tx_type = f["member"], f["type"]
        if f["chain"] != chain_id or client_of.get(f["client"]) != member or member not in members or (
                tx_type in STATE_TYPES and not state.apply(tx, h, writes)):
            statuses[i] = REJECTED
            put(TX + h, pack_loc(height, i, REJECTED) + tx.raw)
            continue
        put(TX + h, applied_loc + i.to_bytes(4, "big") + b"\x00" + tx.raw)
        suffix = pack_suffix(f["ts"], height, i)
        mt = mt_cache.get((member, tx_type))
        if mt is None:
            mt = mt_cache[(member, tx_type)] = member_type_prefix(member, tx_type)
        index(mt + suffix)
        v = f.get("patient")
        if v is not None:
            index(_T_PATIENT + v + suffix)
            # the prior-imaging lookup's index: successful stores with a study (node.ledger.store)
            if tx_type in STORED_TYPES and "study" in f and not f.get("outcome"):
                index(_T_PATIENT_STORED + v + suffix)
        v = f.get("study")
        if v is not None:
            index(_T_STUDY + v + suffix)
        v = f.get("user")
        if v is not None:
            index(_T_ACTOR + v + suffix)
        v = f.get("ae")
        if v is not None:
            index(str_prefix(_TAG_AE, v) + suffix)
    return bytes(statuses), writes, index_keys


class SeenFilter:
    """Bloom filter of the hashes of txs the store holds: "absent" is certain, "maybe" asks LevelDB.

    Execution must know for every tx whether an earlier block committed it. A LevelDB get of a missing
    key walks the memtable skiplist and the tables' own filters: 2-6 us per tx here, growing with the
    memtable. Nearly every tx is new, and this filter answers that in well under a microsecond. Two bit
    positions come straight from the tx hash (SHA-256: uniform, independent bits). 2^27 bits (16 MiB)
    give ~2 % false positives at 10 million txs; beyond that it only gets slower, never wrong. Bits are
    set when a tx is first seen, before its block is written: if the write fails, a stale bit only costs
    a LevelDB lookup later. Rebuilt from the store's tx keys when the node starts.
    """

    def __init__(self, store: Store, bits_log2: int = 27, prefix: bytes = TX):
        self.mask = (1 << bits_log2) - 1
        self.bits = bytearray(1 << (bits_log2 - 3))
        # Any key family whose suffixes are SHA-256 digests works the same way (Chain.own_tx: OWN)
        for key in store.db.iterator(prefix=prefix, include_value=False):
            self.add(key[len(prefix):])

    def add(self, h: bytes) -> None:
        x = int.from_bytes(h[:8], "little")
        a, b = x & self.mask, (x >> 32) & self.mask
        self.bits[a >> 3] |= 1 << (a & 7)
        self.bits[b >> 3] |= 1 << (b & 7)

    def maybe(self, h: bytes) -> bool:
        """False: no block this node executed (or holds) has tx ``h``, certain; True: ask the store."""
        x = int.from_bytes(h[:8], "little")
        a, b = x & self.mask, (x >> 32) & self.mask
        bits = self.bits
        return bool(bits[a >> 3] & (1 << (a & 7)) and bits[b >> 3] & (1 << (b & 7)))

    def first_seen_fn(self, has: Callable[[bytes], bytes | None]) -> Callable[[bytes], bool]:
        """first_seen(h) for execute_txs: True if no earlier block holds h (and remember h from now on)."""
        bits, mask = self.bits, self.mask

        def first_seen(h: bytes) -> bool:
            x = int.from_bytes(h[:8], "little")
            a, b = x & mask, (x >> 32) & mask
            ia, ib, ba, bb = a >> 3, b >> 3, 1 << (a & 7), 1 << (b & 7)
            if bits[ia] & ba and bits[ib] & bb and has(tx_key(h)) is not None:
                return False
            bits[ia] |= ba
            bits[ib] |= bb
            return True

        return first_seen


class Chain:
    """Ledger state machine over one Store, for one genesis."""

    # Txs verified (mempool admission) but not yet executed, ~2.5 KB each decoded; bounded so a flood of
    # never-proposed txs cannot grow it. 30,000 covers several seconds of mempool at the 3,500 tx/s target;
    # a tx evicted before it is proposed is simply verified again by validate_proposal.
    VERIFIED_CACHE = 30_000
    # Validated proposals kept for execute(); a handful beyond the consensus pipelining depth.
    PROPOSAL_CACHE = 64

    def __init__(self, genesis: Genesis, store: Store, *, clock: Callable[[], float] = time.time,
                 seen_filter_bits: int = 27):
        self.genesis = genesis
        self.store = store
        self.chain_id = genesis.chain_id
        self.clock = clock
        self.max_txs = genesis.param("max_block_txs")
        self.max_payload = genesis.param("max_payload_bytes")
        self.max_skew = genesis.param("max_clock_skew_ms")
        ghash = genesis.hash()
        stored = store.genesis_hash()
        if stored is None:
            if store.height:
                raise ChainError(f"{store.path}: blocks without a genesis record")
            state, writes = LedgerState.from_genesis(genesis)
            store.init_genesis(ghash, state.root, writes)
        elif stored != ghash:
            raise ChainError(f"{store.path}: store belongs to another genesis ({stored.hex()[:16]}, "
                             f"this genesis {ghash.hex()[:16]})")
        self.state = self._load_state()
        self._seen = SeenFilter(store, seen_filter_bits)
        self._verified: dict[bytes, Tx] = {}
        # The cache is filled from gossip's worker thread too (remember_verified): every change under this lock.
        self._verified_lock = threading.Lock()
        self._proposals: dict[bytes, tuple[ProposalHeader, list[Tx], list[bytes]]] = {}
        # Where a compact proposal's txs are found besides the verified cache and the store: the node's
        # mempool (tx hash -> wire bytes or None). Unset (offline tools): only the cache and the store.
        self.tx_source: Callable[[bytes], bytes | None] | None = None
        # Called with a compact proposal's txs once it validated, before the vote on it can leave: the node
        # puts the ones it holds in memory only on disk, since after a kill -9 the vote (in the WAL) relies
        # on them. Raises ProposalError when it cannot (disk full). Unset (offline tools): nothing kept.
        self.keep_txs: Callable[[list[Tx]], None] | None = None
        # The member this node signs for: execute indexes that member's txs by body (Store.own_tx), which is
        # how an event submitted again finds the tx it got before (node.runtime.own_txs). Unset: no index.
        self.own_member: str | None = None
        self._own_seen: SeenFilter | None = None  # the O keys' digests (index_own_txs)
        # (height, decoded txs in block order) of the block execute applied last: what commit-time observers
        # (node.runtime.oprf_resharing) read instead of fetching and decoding every tx from the store again.
        self.last_executed: tuple[int, Sequence[Tx]] = (0, ())

    OWN_FILTER_BITS_LOG2 = 26  # 8 MiB: ~1 % false positives at 4 million own txs, ~6 % at 10 million

    def index_own_txs(self, member: str) -> int:
        """From now on index ``member``'s txs by body (execute writes O entries; own_tx finds them); first
        index the blocks executed without it (Store.index_own). Returns how many blocks that read."""
        self.own_member = member
        blocks = self.store.index_own(member)
        self._own_seen = SeenFilter(self.store, self.OWN_FILTER_BITS_LOG2, prefix=OWN)
        return blocks

    def own_tx(self, digest: bytes) -> bytes | None:
        """Store.own_tx behind an in-memory filter. Nearly every event a member signs is new, and a LevelDB
        get of a missing key is not only slower: each one that consults more than one table file counts
        against a file's "allowed seeks", and when they run out LevelDB compacts that file. One such miss
        per own tx more than doubled the store's background compaction CPU (docs/PERFORMANCE.md)."""
        if self._own_seen is not None and not self._own_seen.maybe(digest):
            return None
        return self.store.own_tx(digest)

    def _load_state(self) -> LedgerState:
        root = self.store.state_root if self.store.height else self.store.initial_state_root()
        return LedgerState.load(self.genesis, self.store.state_items(), root)

    def reload_state(self) -> None:
        """Rebuild the ledger state from the store (after it was reopened: it holds only whole blocks)."""
        self.state = self._load_state()

    @property
    def height(self) -> int:
        return self.store.height

    # ------------------------------------------------------------------ member sets (node.ledger.epochs)
    def epoch_at(self, height: int):
        """The consensus member set that certifies block ``height`` (certain up to ``epoch_known``)."""
        return self.state.epochs.at(height)

    def epoch_known(self, height: int) -> bool:
        """Whether the blocks executed so far fix the member set of ``height`` (a change approved in a later
        block takes effect only after the first epoch boundary past it)."""
        return height <= self.state.epochs.known_through(self.store.height)

    @property
    def members(self) -> tuple[bytes, ...]:
        """Member keys of the epoch of the next height (what the running replica signs with)."""
        return self.epoch_at(self.store.height + 1).pubkeys

    # ------------------------------------------------------------------ txs (mempool entry point)
    def check_tx(self, raw: bytes) -> Tx:
        """Decode, verify and authorise one tx (mempool admission); raises TxError. Result is cached."""
        h = _sha256(raw).digest()
        tx = self._verified.get(h)
        if tx is None:
            tx = decode_tx(raw, hash=h, verify=False)
            self.refuse_unauthorised(tx)  # before the costly check, so a stranger's tx costs no verification
            tx.verify()
            self._remember(tx)
        self._check_authorised(tx)
        return tx

    def refuse_unauthorised(self, tx: Tx) -> None:
        """Raise TxNotAuthorised when ``tx`` names another chain or a client key no member authorised (now).
        Asked before a tx's signature is checked: anyone can sign txs with a key of their own, and a member
        sending them cannot be told from an honest one whose key was revoked meanwhile (neither is scored),
        so they must cost a dict lookup, not an Ed25519 verification and a place in the verified cache."""
        reason = authority_error(tx.fields, self.chain_id, self.state.authorized)
        if reason is not None:
            raise TxNotAuthorised(reason)

    def check_own_tx(self, raw: bytes) -> Tx:
        """Like check_tx for a tx this node has just signed itself: its own fresh signature is not verified
        again (the costliest step of admission), every other check is."""
        h = _sha256(raw).digest()
        tx = self._verified.get(h)
        if tx is None:
            tx = decode_tx(raw, hash=h, verify=False)
            self._remember(tx)
        self._check_authorised(tx)
        return tx

    def committed_tx(self, h: bytes) -> tuple[int, int, bytes] | None:
        """Store.get_tx(h), without a LevelDB lookup for a tx no block holds (nearly every tx a node is
        offered: the seen filter's "absent" is certain, 2-6 us of LevelDB saved per tx)."""
        return self.store.get_tx(h) if self._seen.maybe(h) else None

    def has_committed(self, h: bytes) -> bool:
        """Store.has_tx(h), through the seen filter (see committed_tx)."""
        return self._seen.maybe(h) and self.store.has_tx(h)

    def verified(self, h: bytes) -> Tx | None:
        """The tx with hash ``h`` (SHA-256 of its exact signed bytes) if this node already verified it."""
        return self._verified.get(h)

    def check_verified_tx(self, tx: Tx) -> Tx:
        """check_tx for a tx decoded with ``decode_tx(raw, verify=False)`` whose signature the caller has
        just checked (node.ledger.sigbatch, in a worker thread); raises TxError. Never call it otherwise:
        the cache it fills lets proposals skip the signature check of this tx."""
        self._remember(tx)
        self._check_authorised(tx)
        return tx

    def remember_verified(self, tx: Tx) -> None:
        """Cache a tx decoded with ``verify=False`` whose signature the caller has just checked (a tx
        fetched for a compact proposal, or one gossip's worker thread has just checked: safe from any
        thread); authorisation is left to admission or proposal validation."""
        self._remember(tx)

    def _check_authorised(self, tx: Tx) -> None:
        f = tx.fields
        reason = authority_error(f, self.chain_id, self.state.authorized)
        if reason is not None:
            raise TxNotAuthorised(reason)
        if tx.proof:
            max_batch = self.param("max_sign_batch", self.store.height + 1)
            if tx.batch_size > max_batch:
                raise TxNotAuthorised(_batch_refusal(tx, max_batch))
        if f["type"] == "evidence.equivocation":
            epoch = self.epoch_at(self.store.height + 1)
            check_evidence_tx(f, epoch.chain_id, epoch.pubkeys)
        reason = self.state.rule_violation(f, int(self.clock() * 1000))
        if reason is not None:
            raise TxBreaksRule(reason)

    def _remember(self, tx: Tx) -> None:
        cache = self._verified
        with self._verified_lock:
            if len(cache) >= self.VERIFIED_CACHE:
                del cache[next(iter(cache))]
            cache[tx.hash] = tx

    # ------------------------------------------------------------------ proposals
    def build_proposal(self, height: int, proposer: int, timestamp_ms: int, txs: list[bytes]) -> bytes:
        hashes = [_sha256(t).digest() for t in txs]
        header = ProposalHeader(self.chain_id, height, proposer, timestamp_ms, len(txs), merkle_root(hashes))
        return encode_payload(header, list(txs))

    def build_compact_proposal(self, height: int, proposer: int, timestamp_ms: int, txs: list[bytes],
                               hashes: list[bytes] | None = None) -> bytes:
        """The payload a primary proposes when its replicas hold the txs already: the same proposal header
        (so the same digest, votes and certificate) as build_proposal's, the txs named by hash (`hashes`,
        when the caller has them already)."""
        if hashes is None:
            hashes = [_sha256(t).digest() for t in txs]
        if len(hashes) != len(txs):
            raise ValueError(f"{len(hashes)} hashes for {len(txs)} txs")
        header = ProposalHeader(self.chain_id, height, proposer, timestamp_ms, len(txs), merkle_root(hashes))
        return encode_compact_payload(header, hashes)

    def tx_raw(self, h: bytes) -> bytes | None:
        """Wire bytes of the tx with hash ``h`` if this node holds it (verified cache, mempool, store)."""
        tx = self._verified.get(h)
        if tx is not None:
            return tx.raw
        if self.tx_source is not None:
            raw = self.tx_source(h)
            if raw is not None:
                return raw
        rec = self.store.get_tx(h)
        return None if rec is None else rec[2]

    def missing_txs(self, payload: bytes, height: int | None = None) -> list[bytes]:
        """The distinct tx hashes a compact ``payload`` names that this node does not hold (at most the block
        limit, in payload order); [] for a full payload or one too malformed to name any (validation
        refuses those on its own)."""
        if not is_compact_payload(payload):
            return []
        max_txs, max_payload = self.max_txs, self.max_payload
        if height is not None and self.epoch_known(height):
            max_txs, max_payload = self.param("max_block_txs", height), self.param("max_payload_bytes", height)
        try:
            _header, hashes = split_compact_payload(payload, max_txs, max_payload)
        except BlockError:
            return []
        return self.not_held(hashes)

    def not_held(self, hashes: list[bytes]) -> list[bytes]:
        """The distinct hashes of ``hashes`` whose tx this node does not hold, in order."""
        verified, source, has = self._verified, self.tx_source, self.store.has_tx
        out: dict[bytes, None] = {}
        for h in hashes:
            if h in verified or h in out or (source is not None and source(h) is not None) or has(h):
                continue
            out[h] = None
        return list(out)

    proposal_digest = staticmethod(proposal_digest)

    def digest(self, payload: bytes) -> bytes:
        """consensus app interface."""
        return proposal_digest(payload)

    def validate(self, height: int, payload: bytes) -> bool:
        """consensus app interface: validate_proposal against this node's clock."""
        try:
            self.validate_proposal(height, payload)
        except ProposalError:
            return False
        return True

    def param(self, name: str, height: int):
        """A consortium parameter in force at ``height``: genesis's, or a value voted since (node.ledger.epochs)."""
        return self.epoch_at(height).param(name, self.genesis.param(name))

    def _parse(self, payload: bytes, verify_all: bool, height: int | None = None
               ) -> tuple[bytes, ProposalHeader, list[Tx], list[bytes]]:
        max_txs, max_payload = self.max_txs, self.max_payload
        if height is not None:
            max_txs, max_payload = self.param("max_block_txs", height), self.param("max_payload_bytes", height)
        compact = is_compact_payload(payload)
        try:
            if compact:
                header_bytes, hashes = split_compact_payload(payload, max_txs, max_payload)
            else:
                header_bytes, raws = split_payload(payload, max_txs, max_payload)
            header = ProposalHeader.decode(header_bytes)
        except BlockError as exc:
            raise ProposalError(str(exc)) from None
        digest = _sha256(PROPOSAL_DOMAIN + header_bytes).digest()
        count = len(hashes) if compact else len(raws)
        if header.tx_count != count:
            raise ProposalError(f"tx_count {header.tx_count} but {count} txs")
        cache = self._verified
        # A tx whose signature is checked here (the primary proposed it before its gossip reached us) is
        # cached like an admitted one, so its gossip copy, arriving later, is not checked again (it was, for
        # about a sixth of each replica's txs in a bench.throughput run).
        remember = self._remember
        txs: list[Tx] = []
        append = txs.append
        if compact:
            # Txs by hash: from the verified cache (gossip admitted them), else the mempool or the store,
            # decoded and verified here. A tx's hash is the SHA-256 of its exact bytes, so a tx found under
            # its hash is the one named.
            for i, h in enumerate(hashes):
                tx = cache.get(h)
                if tx is None:
                    raw = self.tx_raw(h)
                    if raw is None:
                        raise ProposalError(f"tx {i}: {h.hex()[:16]} is not held by this node")
                    try:
                        tx = decode_tx(raw, hash=h, verify=verify_all)
                    except TxError as exc:
                        raise ProposalError(f"tx {i}: {exc}") from None
                    if verify_all:
                        remember(tx)
                append(tx)
        else:
            hashes = []
            append_hash = hashes.append
            for i, raw in enumerate(raws):
                h = _sha256(raw).digest()
                append_hash(h)
                tx = cache.get(h)
                if tx is None:
                    try:
                        tx = decode_tx(raw, hash=h, verify=verify_all)
                    except TxError as exc:
                        raise ProposalError(f"tx {i}: {exc}") from None
                    if verify_all:
                        remember(tx)
                append(tx)
        if merkle_root(hashes) != header.tx_root:
            raise ProposalError("tx_root does not match the txs")
        return digest, header, txs, hashes

    def validate_proposal(self, height: int, payload: bytes, now_ms: int | None = None) -> None:
        digest, header, txs, hashes = self._parse(payload, verify_all=True, height=height)
        if header.chain_id != self.chain_id:
            raise ProposalError(f"chain_id {header.chain_id!r}, expected {self.chain_id!r}")
        if header.height != height:
            raise ProposalError(f"proposal is for height {header.height}, expected {height}")
        epoch = self.epoch_at(height)
        if header.proposer >= epoch.n:
            raise ProposalError(f"proposer {header.proposer} is not a member")
        now = int(self.clock() * 1000) if now_ms is None else now_ms
        max_skew = self.param("max_clock_skew_ms", height)
        if abs(header.timestamp - now) > max_skew:
            raise ProposalError(f"timestamp {header.timestamp} is {header.timestamp - now} ms from now "
                                f"(tolerance {max_skew} ms)")
        if len(set(hashes)) != len(hashes):
            raise ProposalError("a tx appears twice in the proposal")
        chain_id, authorized = self.chain_id, self.state.authorized
        max_batch = self.param("max_sign_batch", height)
        for i, tx in enumerate(txs):
            f = tx.fields
            reason = authority_error(f, chain_id, authorized)
            if reason is not None:
                raise ProposalError(f"tx {i}: {reason}")
            if tx.proof and tx.batch_size > max_batch:
                raise ProposalError(f"tx {i}: {_batch_refusal(tx, max_batch)}")
            if f["type"] == "evidence.equivocation":
                try:
                    check_evidence_tx(f, epoch.chain_id, epoch.pubkeys)
                except TxError as exc:
                    raise ProposalError(f"tx {i}: {exc}") from None
        if self.keep_txs is not None and is_compact_payload(payload):
            self.keep_txs(txs)
        props = self._proposals
        if len(props) >= self.PROPOSAL_CACHE:
            del props[next(iter(props))]
        props[digest] = (header, txs, hashes)

    # ------------------------------------------------------------------ execution
    def sync_context(self, height: int) -> tuple[Epoch, int, int, bool]:
        """(member set, max_block_txs, max_payload_bytes, certain) for checking synced block ``height`` with
        prepare_synced. Past ``epoch_known`` the member set is the one known now, tentatively (nearly
        always the right one: sets change only by governance); ``certain`` says which. Execution
        compares it with the set the executed chain fixes (Chain.execute), so a wrong guess only costs a
        refetch, never a block checked against the wrong members."""
        epoch = self.epoch_at(height)
        return (epoch, epoch.param("max_block_txs", self.genesis.param("max_block_txs")),
                epoch.param("max_payload_bytes", self.genesis.param("max_payload_bytes")),
                self.epoch_known(height))

    def check_certified(self, height: int, payload: bytes, certificate: bytes) -> tuple[bytes, Certificate]:
        """(proposal digest, certificate) if ``certificate`` proves a quorum committed ``payload`` at
        ``height``; raise ChainError otherwise. Reads only the payload's header bytes (one bounded msgpack
        item), so a peer's payload is never parsed before its certificate checks out. Stateless: block
        sync calls it before it hands blocks to the driver."""
        try:
            digest = proposal_digest(payload)
            cert = Certificate.decode(certificate)
            if not self.epoch_known(height):
                raise ChainError(f"height {height}: its member set is not known before height "
                                 f"{self.store.height + 1} executes")
            epoch = self.epoch_at(height)
            verify_certificate(cert, epoch.pubkeys, epoch.chain_id, epoch.local(height), digest)
        except (ProposalError, CertificateError) as exc:
            raise ChainError(f"height {height}: {exc}") from None
        return digest, cert

    def execute(self, payload: bytes, certificate: bytes, *, verify_certificate_sigs: bool = True,
                synced: SyncedPayload | None = None) -> Block:
        """Apply a committed payload as the next block; one atomic store write. Returns the block.

        Raises ChainError, and nothing else, for any payload or certificate that is not a certified valid
        next block (anything a peer can send through block sync): the certificate is checked first, the
        payload parsed only then. ``synced``: prepare_synced's result for exactly these bytes (block sync),
        whose checks are not repeated once its member set is confirmed as the one of this height."""
        height = self.store.height + 1
        if synced is not None:
            if synced.payload is not payload or synced.certificate is not certificate:
                raise AssertionError("execute: synced was prepared for other bytes")
            if synced.height != height:
                raise ChainError(f"synced block {synced.height}, next is {height}")
            if not self.epoch_known(height) or self.epoch_at(height) != synced.epoch:
                raise ChainError(f"height {height}: its certificate was checked against a member set that is "
                                 f"not the one the executed chain fixes")
            digest, header, txs, hashes = synced.digest, synced.header, synced.txs, synced.hashes
        elif verify_certificate_sigs:
            digest, cert = self.check_certified(height, payload, certificate)
        else:  # our own replica's commit: it checked the signatures as they arrived
            try:
                digest = proposal_digest(payload)
                cert = Certificate.decode(certificate)
            except (ProposalError, CertificateError) as exc:
                raise ChainError(f"height {height}: {exc}") from None
            if cert.height != self.epoch_at(height).local(height) or cert.digest != digest:
                raise ChainError(f"height {height}: certificate does not match the payload")
        if synced is None:
            cached = self._proposals.pop(digest, None)
            if cached is None:
                try:
                    digest, header, txs, hashes = self._parse(payload, verify_all=True, height=height)
                except ProposalError as exc:
                    raise ChainError(f"height {height}: committed payload is invalid: {exc.reason}") from None
            else:
                header, txs, hashes = cached
        if header.height != height or header.chain_id != self.chain_id:
            raise ChainError(f"payload for {header.chain_id}/{header.height}, next is {self.chain_id}/{height}")

        state = self.state
        state.block_time = header.timestamp  # expiries are judged by the agreed time, never a local clock
        store = self.store
        first_seen = self._seen.first_seen_fn(store.db.get)
        batch = store.batch()
        try:
            statuses, writes, index_keys = execute_txs(state, height, txs, first_seen, batch.put)
            index_keys.sort()
            put = batch.put
            for key in index_keys:
                put(key, b"")
            own = self.own_member
            if own is not None:  # this node's own txs by body, durable with the block (node.runtime.own_txs)
                key = state.members.get(own)  # signed with the member key: the events it signed itself
                seen = self._own_seen
                for tx, status in zip(txs, statuses, strict=True):
                    f = tx.fields
                    if status != DUPLICATE and f["member"] == own and f["client"] == key:
                        digest_of_body = body_digest(tx.body)
                        put(OWN + digest_of_body, tx.hash)
                        if seen is not None:  # before the write: a write that fails leaves a harmless bit
                            seen.add(digest_of_body)
                put(*store.own_marker(own, height))
            state_root = next_state_root(state.root, height, writes)
            prev = store.head if height > 1 else self.genesis.hash()
            # only agreed data: every honest node derives byte-identical headers, whatever certificate it holds
            block_header = BlockHeader(self.chain_id, height, prev, digest, header.proposer, state_root,
                                       header.timestamp, header.tx_count, header.tx_root)
            block = Block(block_header, tuple(hashes), statuses)
            store.write_block(block, certificate, state_writes=writes, batch=batch)
        except BaseException:
            batch.clear()
            self.state = self._load_state()  # in-memory registry may hold half a block; the store does not
            raise
        state.root = state_root
        self.last_executed = (height, txs)
        verified = self._verified
        if verified:
            with self._verified_lock:
                for t in txs:
                    verified.pop(t.hash, None)
        return block
