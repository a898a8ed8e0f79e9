"""The chain store: LevelDB (plyvel), one atomic write batch per block.

Key layout (heights, indexes and timestamps big-endian so that key order is numeric order and every
lookup below is a point get or one range scan)::

    M head                      -> height u64 | block hash 32 | state root 32      (absent: empty chain)
    M genesis                   -> genesis hash 32
    B height u64                -> block record (node.ledger.block.Block.encode)
    C height u64                -> commit certificate (consensus.certificate.Certificate.encode)
    H block hash 32             -> height u64
    T tx hash 32                -> height u64 | index u32 | status u8 | tx wire bytes
    I name u8 | len u8 | key | ts u64 | height u64 | index u32  -> (empty)    (secondary indexes)
    I k | member | 00 | type code u8 | ts u64 | height u64 | index u32 -> (empty)  (member/type/time)
    M index.patient_stored      -> 01   (present: every block of this store has patient_stored entries)
    S state key                 -> state value                                   (node.ledger.state)
    O sha256(tx body) 32        -> tx hash 32    (this node's own member's txs: node.runtime.own_txs)
    M index.own                 -> msgpack [member, height]   (the O entries are complete up to height)

Index entries carry no value: (height, index) in the key locate the tx (its hash is in the block record),
which keeps every index entry at key size. Bytes written per block matter: the batch is fsynced.

A block, its certificate, its txs, their index entries, the state writes and the new head go in one
``WriteBatch``, so after a crash (kill -9 at any instant) the store holds either all of a block or none of
it, and ``M head`` always names the last complete block. With ``sync=True`` (default) the batch is also
fsynced, which extends the guarantee to power loss.

Indexes (name: key): ``study`` (study token), ``patient`` (patient token), ``actor`` (user token), ``ae``
(AE title of the actor), ``member`` (submitting member name), ``type`` (tx type), ``time`` (key ignored:
every applied tx). member, type and time are answered from one composite (member, type) entry per tx by
merging its few prefixes. Entries are ordered by (client timestamp, height, index). A tx that was a
duplicate of an earlier tx or was rejected at execution has no index entries.

``patient_stored`` (patient token) narrows ``patient`` to the successful store-like events (STORED_TYPES,
outcome 0, with a study): what the prior-imaging lookup reads, ~1/4 of a patient's events, written in the
same block batch as the others. Stores created before it existed lack the ``M index.patient_stored``
marker and the entries of their old blocks: readers check ``has_patient_stored_index`` and fall back to
``patient``.
"""

from __future__ import annotations

import heapq
import os
import struct
from collections import OrderedDict
from collections.abc import Iterator
from dataclasses import dataclass

import msgpack
import plyvel

from node.ledger.block import DUPLICATE, Block, BlockHeader, encode_payload
from node.ledger.merkle import MerkleProof, inclusion_path
from node.ledger.refusals import is_disk_full
from node.ledger.tx import TX_TYPE_ORDER, TX_TYPES, body_digest

__all__ = ["Store", "StoreError", "IndexEntry", "INDEXES", "QUERYABLE", "STORED_TYPES", "index_key_prefix",
           "index_tag", "OWN", "block_key", "cert_key", "hash_key", "tx_key", "state_key", "height_bytes"]

INDEXES = {"study": b"s", "patient": b"p", "actor": b"a", "ae": b"e", "patient_stored": b"q"}
# Tx types that record stored instances: the patient_stored index holds their successful events.
STORED_TYPES = frozenset({"instances.stored", "instances.transferred", "import"})
PATIENT_STORED_MARKER = b"Mindex.patient_stored"
OWN_MARKER = b"Mindex.own"
# member, type and time share one entry per tx, keyed (member, type): both are low-cardinality, so a query
# by one of them is a k-way merge over the few (member, type) pairs, and the hot path writes one LevelDB
# entry instead of three (each entry costs 1-2 us of memtable insertion).
MEMBER_TYPE = b"Ik"
QUERYABLE = tuple(INDEXES) + ("member", "type", "time")

# -- the key layout of the module docstring: every module that reads or writes chain keys builds them here
HEAD_KEY = b"Mhead"
GENESIS_KEY = b"Mgenesis"
STATE0_KEY = b"Mstate0"  # the state root after genesis (before block 1)
BLOCK, CERT, BLOCK_HASH, TX, STATE, INDEX, OWN = b"B", b"C", b"H", b"T", b"S", b"I", b"O"
BLOCK_END = b"C"  # the first key past every B key (B keys are followed by C keys)
_U64 = struct.Struct(">Q")
_LOC = struct.Struct(">QIB")   # height, index, status
_SUFFIX = struct.Struct(">QQI")  # ts, height, index


class StoreError(RuntimeError):
    """The store cannot be opened, or a record in it is missing or malformed."""


@dataclass(frozen=True, slots=True)
class IndexEntry:
    ts: int
    height: int
    index: int
    tx_hash: bytes


def index_key_prefix(name: str, key: bytes | str) -> bytes:
    try:
        tag = INDEXES[name]
    except KeyError:
        raise StoreError(f"unknown index {name!r}; one of {', '.join(QUERYABLE)}") from None
    if isinstance(key, str):
        key = key.encode()
    if len(key) > 255:
        raise StoreError("index key longer than 255 bytes")
    return INDEX + tag + bytes((len(key),)) + key


def index_tag(name: str, key_len: int) -> bytes:
    """The prefix of index `name`'s entries whose key is `key_len` bytes (tokens: TOKEN_BYTES)."""
    return INDEX + INDEXES[name] + bytes((key_len,))


# One byte per tx type in the (member, type) index: its position in TX_TYPE_ORDER (append only there: a
# code, once used, never changes).
TYPE_CODES = {t: i + 1 for i, t in enumerate(TX_TYPE_ORDER)}


def member_type_prefix(member: str, tx_type: str) -> bytes:
    """Prefix of the (member, type) index; member names never contain NUL (genesis and state check it)."""
    return MEMBER_TYPE + member.encode() + b"\x00" + bytes((TYPE_CODES[tx_type],))


def height_bytes(height: int) -> bytes:
    return _U64.pack(height)


def block_key(height: int) -> bytes:
    return BLOCK + _U64.pack(height)


def cert_key(height: int) -> bytes:
    return CERT + _U64.pack(height)


def hash_key(block_hash: bytes) -> bytes:
    return BLOCK_HASH + block_hash


def tx_key(tx_hash: bytes) -> bytes:
    return TX + tx_hash


def state_key(key: bytes) -> bytes:
    return STATE + key


class Store:
    """Blocks, txs, certificates, indexes and state of one node, in one LevelDB directory."""

    HASH_LIST_CACHE = 256  # blocks whose tx-hash lists queries keep at hand (at most 16 MiB)

    def __init__(self, path: str | os.PathLike, *, sync: bool = True, create: bool = True):
        self.path = os.fspath(path)
        self._hash_lists: OrderedDict[int, bytes] = OrderedDict()
        self.sync = sync
        if create:
            os.makedirs(self.path, exist_ok=True)
        self._open(create)

    def _open(self, create: bool) -> None:
        try:
            # bloom filter: has_tx() of a new tx is a miss, answered without reading a table block.
            # Uncompressed: Snappy cost LevelDB's compaction thread 10 us per tx at full load (15 against 5
            # us, about a tenth of a node's CPU per tx) for 28 % less disk, 474 against 660 bytes per tx
            # (docs/PERFORMANCE.md, "2026-12-03 late evening"). Stores written compressed open as they are:
            # LevelDB marks each block's compression.
            self._db = plyvel.DB(self.path, create_if_missing=create, bloom_filter_bits=10, compression=None,
                                 write_buffer_size=32 << 20, lru_cache_size=64 << 20)
        except plyvel.IOError as exc:
            if is_disk_full(exc):
                raise  # the caller waits for space (node.runtime.diskspace); not a store that cannot be opened
            raise StoreError(f"{self.path}: cannot open the chain store ({exc}); is a node running on it?") from None
        except plyvel.Error as exc:
            raise StoreError(f"{self.path}: cannot open the chain store ({exc})") from None
        head = self._db.get(HEAD_KEY)
        if head is None:
            self.height, self.head, self.state_root = 0, None, None
        else:
            if len(head) != 72:
                raise StoreError("M head: malformed")
            self.height = _U64.unpack_from(head)[0]
            self.head, self.state_root = head[8:40], head[40:72]
        self.has_patient_stored_index = self._db.get(PATIENT_STORED_MARKER) is not None

    # ------------------------------------------------------------------ lifecycle
    def close(self) -> None:
        if not self._db.closed:
            self._db.close()

    def reopen(self) -> None:
        """Close and reopen after a failed write (a full disk): LevelDB keeps a failed write's error, and
        may hold half a log record, until reopened, when it recovers to the last whole batch. The head is
        read again: a batch whose fsync failed may or may not have survived. Raises plyvel.IOError if the
        disk is still full."""
        self.close()
        self._hash_lists.clear()
        self._open(create=False)

    def __enter__(self) -> Store:
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    @property
    def db(self) -> plyvel.DB:
        """The raw LevelDB handle (tests and tools; do not write through it)."""
        return self._db

    # ------------------------------------------------------------------ genesis marker
    def genesis_hash(self) -> bytes | None:
        return self._db.get(GENESIS_KEY)

    def init_genesis(self, genesis_hash: bytes, state_root: bytes, state_writes: list[tuple[bytes, bytes]]) -> None:
        """Record which genesis this store belongs to, with the initial state, atomically."""
        with self._db.write_batch(sync=self.sync) as wb:
            wb.put(GENESIS_KEY, genesis_hash)
            for key, value in state_writes:
                wb.put(state_key(key), value)
            wb.put(STATE0_KEY, state_root)
            # A store starting at genesis writes patient_stored entries for every block it will hold.
            wb.put(PATIENT_STORED_MARKER, b"\x01")
        self.has_patient_stored_index = True

    def initial_state_root(self) -> bytes | None:
        return self._db.get(STATE0_KEY)

    def make_durable(self) -> None:
        """fsync what earlier writes with ``sync`` off left in the OS (one LevelDB log sync covers them all:
        the log is sequential): block sync writes a batch of certified blocks unsynced and calls this
        before anything acknowledges them. A no-op for a store opened with ``sync=False``."""
        if self.sync:
            head = self._db.get(HEAD_KEY)
            if head is not None:
                self._db.put(HEAD_KEY, head, sync=True)

    # ------------------------------------------------------------------ writing
    def batch(self):
        """A WriteBatch to fill with a block's tx records and index entries, then pass to write_block()."""
        return self._db.write_batch(sync=self.sync)

    def write_block(self, block: Block, certificate: bytes, puts=(), state_writes=(), *, batch=None) -> None:
        """Append ``block`` with its certificate, tx/index ``puts`` and state writes in ONE atomic batch.

        ``batch`` (from batch()) may already hold the block's tx records and index entries.
        """
        header = block.header
        if header.height != self.height + 1:
            raise StoreError(f"write_block: height {header.height} after head {self.height}")
        block_hash = header.hash()
        hb = _U64.pack(header.height)
        wb = self._db.write_batch(sync=self.sync) if batch is None else batch
        put = wb.put
        for key, value in puts:
            put(key, value)
        for key, value in state_writes:
            if value is None:
                wb.delete(state_key(key))
            else:
                put(state_key(key), value)
        put(BLOCK + hb, block.encode())
        put(CERT + hb, certificate)
        put(hash_key(block_hash), hb)
        put(HEAD_KEY, hb + block_hash + header.state_root)
        wb.write()
        self.height, self.head, self.state_root = header.height, block_hash, header.state_root

    # ------------------------------------------------------------------ blocks
    def get_block(self, height: int) -> Block | None:
        if not 0 < height <= self.height:
            return None
        data = self._db.get(block_key(height))
        return None if data is None else Block.decode(data)

    def get_block_record(self, height: int) -> bytes | None:
        return self._db.get(block_key(height))

    def get_block_by_hash(self, block_hash: bytes) -> Block | None:
        hb = self._db.get(hash_key(block_hash))
        return None if hb is None else self.get_block(_U64.unpack(hb)[0])

    def get_header(self, height: int) -> BlockHeader | None:
        block = self.get_block(height)
        return None if block is None else block.header

    def get_certificate(self, height: int) -> bytes | None:
        if not 0 < height <= self.height:
            return None
        return self._db.get(cert_key(height))

    def blocks(self, start: int = 1, end: int | None = None) -> Iterator[Block]:
        """Blocks of heights start..end, both inclusive (end defaults to the head), in height order."""
        end = self.height if end is None else min(end, self.height)
        start = max(start, 1)
        if start > end:
            return
        for _key, data in self._db.iterator(start=block_key(start), stop=block_key(end + 1)):
            yield Block.decode(data)

    def get_payload(self, height: int) -> bytes | None:
        """The certified payload of ``height``, rebuilt from the block and its txs (block sync sends this)."""
        block = self.get_block(height)
        if block is None:
            return None
        txs = []
        for h in block.tx_hashes:
            rec = self.get_tx(h)
            if rec is None:
                raise StoreError(f"height {height}: tx {h.hex()} missing")
            txs.append(rec[2])
        return encode_payload(block.header.proposal_header(), txs)

    # ------------------------------------------------------------------ txs
    def get_tx(self, tx_hash: bytes) -> tuple[int, int, bytes] | None:
        """(height, index in its block, wire bytes) of the first inclusion of a tx, or None."""
        rec = self._db.get(tx_key(tx_hash))
        if rec is None:
            return None
        height, index, _status = _LOC.unpack_from(rec)
        return height, index, rec[_LOC.size:]

    def tx_status(self, tx_hash: bytes) -> int | None:
        """node.ledger.block.APPLIED or REJECTED (execution refused it: e.g. client key not authorised), or None."""
        rec = self._db.get(tx_key(tx_hash))
        return None if rec is None else rec[12]

    def has_tx(self, tx_hash: bytes) -> bool:
        return self._db.get(tx_key(tx_hash)) is not None

    def own_tx(self, digest: bytes) -> bytes | None:
        """The hash of the committed tx of this node's member whose body has SHA-256 ``digest``, or None."""
        return self._db.get(OWN + digest)

    def own_index_height(self, member: str) -> int:
        """Up to which height the O entries of ``member`` are complete (Chain.execute moves it with each block)."""
        value = self._db.get(OWN_MARKER)
        if value is None:
            return 0
        indexed_member, height = msgpack.unpackb(value)
        return height if indexed_member == member else 0

    @staticmethod
    def own_marker(member: str, height: int) -> tuple[bytes, bytes]:
        return OWN_MARKER, msgpack.packb([member, height])

    def index_own(self, member: str) -> int:
        """Write the O entries of ``member``'s txs in the blocks past own_index_height (blocks executed by
        code without the index, or by an offline tool); returns how many blocks that read. One write batch
        per block, with the marker, so an interrupted run resumes where it stopped."""
        start = self.own_index_height(member) + 1
        done = 0
        for block in self.blocks(start):
            wb = self._db.write_batch(sync=self.sync)
            for h, status in zip(block.tx_hashes, block.statuses, strict=True):
                if status == DUPLICATE:
                    continue  # its first inclusion is indexed
                rec = self._db.get(tx_key(h))
                if rec is None:
                    raise StoreError(f"block {block.height} names tx {h.hex()} the store does not hold")
                body = msgpack.unpackb(rec[_LOC.size:])[0]
                if msgpack.unpackb(body).get("member") == member:
                    wb.put(OWN + body_digest(body), h)
            wb.put(*self.own_marker(member, block.height))
            wb.write()
            done += 1
        return done

    def tx_proof(self, tx_hash: bytes) -> MerkleProof | None:
        """Merkle audit path of a tx to its block's tx_root (RFC 9162), or None if the tx is unknown."""
        rec = self.get_tx(tx_hash)
        if rec is None:
            return None
        height, index, _raw = rec
        block = self.get_block(height)
        if block is None:
            raise StoreError(f"tx {tx_hash.hex()}: block {height} missing")
        return MerkleProof(height, index, block.header.tx_count, tuple(inclusion_path(list(block.tx_hashes), index)))

    # ------------------------------------------------------------------ indexes
    def query(self, index_name: str, key: bytes | str = b"", since_ms: int | None = None,
              until_ms: int | None = None, cursor: str | None = None,
              limit: int = 100) -> tuple[list[IndexEntry], str | None]:
        """Applied txs whose ``index_name`` entry equals ``key``, with since_ms <= ts < until_ms, oldest first.

        Returns (entries, next_cursor); pass next_cursor back to get the following page (None: no more).
        """
        if not 0 < limit <= 10_000:
            raise StoreError("limit: must be 1..10000")
        if isinstance(key, bytes) and index_name in ("member", "type"):
            key = key.decode("utf-8", "replace")
        if index_name == "member":
            prefixes = [member_type_prefix(key, t) for t in sorted(TX_TYPES)]
        elif index_name == "type":
            prefixes = [member_type_prefix(m, key) for m in self._members_indexed()]
        elif index_name == "time":
            prefixes = [member_type_prefix(m, t) for m in self._members_indexed() for t in sorted(TX_TYPES)]
        else:
            prefixes = [index_key_prefix(index_name, key)]
        after = None
        if cursor is not None:
            try:
                after = bytes.fromhex(cursor)
            except ValueError:
                after = b""
            if len(after) != _SUFFIX.size:
                raise StoreError("cursor: malformed")
        low = _U64.pack(since_ms or 0)
        high = _U64.pack(until_ms) if until_ms is not None else b"\xff" * _SUFFIX.size

        def scan(prefix: bytes):
            n = len(prefix)
            start, include_start = prefix + low, True
            if after is not None and after >= low:
                start, include_start = prefix + after, False
            for k, v in self._db.iterator(start=start, stop=prefix + high, include_start=include_start):
                yield k[n:], v

        stream = scan(prefixes[0]) if len(prefixes) == 1 else heapq.merge(*map(scan, prefixes))
        out: list[IndexEntry] = []
        hashes: dict[int, bytes] = {}  # height -> the block's concatenated tx hashes, for this page
        for suffix, _ in stream:
            if len(out) == limit:
                return out, _cursor(out[-1])
            ts, height, index = _SUFFIX.unpack(suffix)
            block_hashes = hashes.get(height)
            if block_hashes is None:
                block_hashes = hashes[height] = self._block_tx_hashes(height)
            out.append(IndexEntry(ts, height, index, block_hashes[32 * index:32 * index + 32]))
        return out, None

    def _block_tx_hashes(self, height: int) -> bytes:
        # Index entries carry no value (write cost), so a query maps (height, index) to a tx hash through the
        # block's hash list. Blocks never change once written: keep the recently used lists (<= 64 KiB each).
        cache = self._hash_lists
        hashes = cache.get(height)
        if hashes is not None:
            cache.move_to_end(height)
            return hashes
        data = self._db.get(block_key(height))
        if data is None:
            raise StoreError(f"index points at missing block {height}")
        try:
            hashes = msgpack.unpackb(data)[1]
        except Exception as exc:
            raise StoreError(f"block {height}: malformed record ({exc})") from None
        cache[height] = hashes
        if len(cache) > self.HASH_LIST_CACHE:
            cache.popitem(last=False)
        return hashes

    def _members_indexed(self) -> list[str]:
        """Every member with an entry in the (member, type) index: one seek per member (skip scan)."""
        members, start = [], MEMBER_TYPE
        while True:
            key = next(self._db.iterator(start=start, stop=b"Il", include_value=False), None)
            if key is None:
                return members
            end = key.index(0, 2)
            members.append(key[2:end].decode())
            start = key[:end] + b"\x01"

    # ------------------------------------------------------------------ state
    def state_get(self, key: bytes) -> bytes | None:
        return self._db.get(state_key(key))

    def state_items(self, prefix: bytes = b"") -> Iterator[tuple[bytes, bytes]]:
        for k, v in self._db.iterator(prefix=STATE + prefix):
            yield k[1:], v


def _cursor(entry: IndexEntry) -> str:
    return _SUFFIX.pack(entry.ts, entry.height, entry.index).hex()


SUFFIX = _SUFFIX  # (ts, height, index) at the end of every index key; cursors are its hex
LOC = _LOC  # (height, index, status) at the start of a tx record
