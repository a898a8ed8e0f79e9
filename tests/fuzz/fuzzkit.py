"""Fuzzing every decoder a member or a client can reach: corpora of valid encodings, a mutator, targets.

Each target is (name, seeds, check) where ``check(data)`` feeds one input to the real decoder or handler and
returns normally when the input was accepted or refused with the decoder's *own* error type; anything
else raised is a finding. Inputs are mutations of valid encodings, so they get past the first check:

- byte level: bit flips, interesting bytes, truncation, extension, slice duplication/deletion, msgpack
  headers with huge lengths spliced in;
- structure level (the seed decoded, its tree mutated, re-encoded): str <-> bin (keys and values), int
  extremes, bool/float/None/ext swaps, list <-> map, deep nesting, duplicated or dropped entries, and the
  same again *inside* nested encodings (a tx body inside a tx inside a payload inside a sync reply).

``run(target, n, seed)`` is deterministic: input i of a run is reproducible from (target, seed, i). The
hypothesis tests in test_fuzz_decoders.py draw the same mutation operations, so a finding shrinks.
Run directly for the soak figures: ``python tests/fuzz/fuzzkit.py --inputs 100000``.
"""

from __future__ import annotations

import os
import random
import sys
import time
import traceback
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import msgpack

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.join(os.path.dirname(HERE), "testkit"))  # ledger_helpers

# ---------------------------------------------------------------------------------------------- mutator

INTERESTING_BYTES = [0x00, 0x01, 0x7f, 0x80, 0xff, 0xc0, 0xc1, 0xc2, 0xc3, 0xc4, 0xc5, 0xc6, 0xca, 0xcb,
                     0xcc, 0xcf, 0xd0, 0xd3, 0xd4, 0xd9, 0xda, 0xdb, 0xdc, 0xdd, 0xde, 0xdf, 0x90, 0x9f,
                     0x80, 0x8f, 0xa0, 0xbf, 0xe0]
HUGE_HEADERS = [b"\xdd\xff\xff\xff\xff", b"\xdf\xff\xff\xff\xff", b"\xc6\xff\xff\xff\xff",
                b"\xdb\xff\xff\xff\xff", b"\xc9\xff\xff\xff\xff\x01", b"\xdc\xff\xff", b"\xde\xff\xff",
                b"\xc5\xff\xff", b"\xda\xff\xff", b"\x9f", b"\x8f", b"\xcf\xff\xff\xff\xff\xff\xff\xff\xff",
                b"\xd3\x80\x00\x00\x00\x00\x00\x00\x00"]
INTERESTING_INTS = [0, 1, -1, 2, 3, 4, 255, 256, 65535, 65536, 2 ** 31 - 1, 2 ** 32, 2 ** 63 - 1, 2 ** 63,
                    2 ** 64 - 1, -(2 ** 63), -(2 ** 31)]
BYTE_OPS = ("flip", "set", "truncate", "extend", "dup", "delete", "huge", "splice", "deep")
TREE_OPS = ("swap_str_bin", "int", "type", "container", "nest", "dup_entry", "drop_entry", "inner", "key")


def mutate_bytes(rng: random.Random, data: bytes, other: bytes | None = None) -> bytes:
    b = bytearray(data)
    op = rng.choice(BYTE_OPS)
    if not b:
        return bytes(rng.randbytes(rng.randrange(1, 16)))
    i = rng.randrange(len(b))
    if op == "flip":
        for _ in range(rng.choice((1, 1, 2, 4))):
            j = rng.randrange(len(b))
            b[j] ^= 1 << rng.randrange(8)
    elif op == "set":
        b[i] = rng.choice(INTERESTING_BYTES) if rng.random() < 0.7 else rng.randrange(256)
    elif op == "truncate":
        del b[rng.randrange(len(b)):]
    elif op == "extend":
        b += rng.randbytes(rng.randrange(1, 32))
    elif op == "dup":
        j = rng.randrange(i, min(len(b), i + 64) + 1)
        b[i:i] = b[i:j]
    elif op == "delete":
        del b[i:i + rng.randrange(1, 16)]
    elif op == "huge":
        b[i:i + rng.randrange(0, 6)] = rng.choice(HUGE_HEADERS)
    elif op == "deep":  # nesting deeper than msgpack's own packer allows: 1-item arrays or {"a": ...} maps
        b[i:i] = rng.choice((b"\x91", b"\x81\xa1a", b"\x92\x00")) * rng.choice((50, 600, 2000, 20000))
    elif op == "splice" and other:
        j = rng.randrange(len(other) + 1)
        b[i:] = other[j:]
    return bytes(b)


def _random_scalar(rng: random.Random):
    return rng.choice([None, True, False, 0.5, float("inf"), rng.choice(INTERESTING_INTS), "", "x" * 40,
                       b"", b"\x00" * 32, b"\xff" * 65, "type", b"type", msgpack.ExtType(1, b"x"), [], {}])


def _paths(obj, path=()):
    """Every position in a decoded tree, at most 40 levels down: (path, value)."""
    yield path, obj
    if len(path) >= 40:
        return
    if isinstance(obj, list):
        for i, v in enumerate(obj):
            yield from _paths(v, path + (i,))
    elif isinstance(obj, dict):
        for i, v in enumerate(list(obj.values())):
            yield from _paths(v, path + (("v", i),))


def _get(obj, path):
    for p in path:
        obj = obj[p] if isinstance(p, int) else list(obj.values())[p[1]]
    return obj


def _set(obj, path, value):
    if not path:
        return value
    parent = _get(obj, path[:-1])
    p = path[-1]
    if isinstance(p, int):
        parent[p] = value
    else:
        k = list(parent)[p[1]]
        parent[k] = value
    return obj


_OPS_FOR = {dict: ("key", "key", "dup_entry", "drop_entry", "container", "type", "nest"),
            list: ("dup_entry", "drop_entry", "container", "type", "nest"),
            str: ("swap_str_bin", "swap_str_bin", "type", "nest"),
            bytes: ("swap_str_bin", "type", "nest"),
            int: ("int", "int", "type", "swap_str_bin")}


def mutate_value(rng: random.Random, value):
    """One structural change somewhere in a decoded msgpack tree (returns the new tree)."""
    path, target = rng.choice(list(_paths(value)))
    op = rng.choice(_OPS_FOR.get(type(target), ("type", "int")))
    if op == "swap_str_bin":
        if isinstance(target, str):
            new = target.encode()
        elif isinstance(target, bytes):
            new = target.decode("latin-1")
        elif isinstance(target, int) and not isinstance(target, bool):
            new = str(target) if rng.random() < 0.5 else str(target).encode()
        else:
            new = _random_scalar(rng)
    elif op == "int":
        new = rng.choice(INTERESTING_INTS) if not isinstance(target, int) or rng.random() < 0.7 \
            else target + rng.choice((-1, 1))
        if rng.random() < 0.1:
            new = rng.choice((True, False, float(new) if abs(new) < 2 ** 53 else 0.0))
    elif op == "type":
        new = _random_scalar(rng)
    elif op == "container":
        if isinstance(target, list):
            new = {i: v for i, v in enumerate(target)} if rng.random() < 0.3 else \
                {(f"k{i}" if rng.random() < 0.5 else f"k{i}".encode()): v for i, v in enumerate(target)}
        elif isinstance(target, dict):
            new = list(target.values()) if rng.random() < 0.5 else list(target.keys())
        else:
            new = [target]
    elif op == "nest":
        new = target
        for _ in range(rng.choice((2, 10, 100, 400))):  # deeper than msgpack packs: see the "deep" byte op
            new = [new] if rng.random() < 0.5 else {"a": new}
    elif op == "dup_entry":
        if isinstance(target, list) and target:
            target.append(rng.choice(target))
            if rng.random() < 0.2:
                target.extend(target * rng.randrange(1, 50))
        elif isinstance(target, dict):
            target[rng.choice([b"zz", "zz", b"type", "v", "type", 1, "a" * 300])] = _random_scalar(rng)
        new = target
    elif op == "drop_entry":
        if isinstance(target, list) and target:
            del target[rng.randrange(len(target))]
        elif isinstance(target, dict) and target:
            del target[rng.choice(list(target))]
        new = target
    else:  # "key": a str key becomes bin (or back), or moves, so the order is no longer canonical
        if isinstance(target, dict) and target:
            k = rng.choice(list(target))
            v = target.pop(k)
            nk = k.encode() if isinstance(k, str) else k.decode("latin-1") if isinstance(k, bytes) else "k"
            if rng.random() < 0.3:
                nk = k  # same key, another position
            items = list(target.items())
            target.clear()
            pos = rng.randrange(len(items) + 1)
            target.update(items[:pos])
            target[nk] = v
            target.update(items[pos:])
        new = target
    return _set(value, path, new)


def _nested_encodings(value) -> list:
    """Paths of bins inside ``value`` that are themselves msgpack containers (tx body, payload header...)."""
    out = []
    for path, v in _paths(value):
        if type(v) is bytes and v[:1] and (v[0] >> 4 in (0x8, 0x9) or v[0] in (0xdc, 0xdd, 0xde, 0xdf)):
            try:
                inner = msgpack.unpackb(v, raw=False, strict_map_key=False)
            except Exception:
                continue
            if isinstance(inner, list | dict):
                out.append(path)
    return out


def _pack(obj, rng: random.Random) -> bytes | None:
    try:
        return msgpack.packb(obj, use_bin_type=rng.random() < 0.97, strict_types=False)
    except (ValueError, OverflowError, TypeError):  # too deep or out of range for msgpack itself
        return None


def mutate_encoding(rng: random.Random, data: bytes, depth: int = 0, other: bytes | None = None) -> bytes:
    """One mutation of a msgpack encoding. When it holds nested encodings (a tx body inside a tx inside a
    batch), usually one of those is mutated and the envelope re-packed canonically, so the input gets past
    the envelope's checks; else a structural change here, else (and sometimes anyway) a byte-level one."""
    try:
        value = msgpack.unpackb(data, raw=False, strict_map_key=False)
    except Exception:
        return mutate_bytes(rng, data, other)
    nested = _nested_encodings(value) if depth < 4 else []
    if nested and rng.random() < 0.8:
        path = rng.choice(nested)
        value = _set(value, path, mutate_encoding(rng, _get(value, path), depth + 1))
    elif rng.random() < 0.7:
        for _ in range(rng.choice((1, 1, 1, 2, 3))):
            value = mutate_value(rng, value)
    else:
        return mutate_bytes(rng, data, other)
    packed = _pack(value, rng)
    return packed if packed is not None else mutate_bytes(rng, data, other)


def generate(rng: random.Random, seeds: list[bytes]) -> bytes:
    data = rng.choice(seeds)
    for _ in range(rng.choice((1, 1, 1, 2, 3))):
        data = mutate_encoding(rng, data, other=rng.choice(seeds))
    return data


# ---------------------------------------------------------------------------------------------- targets

@dataclass
class Target:
    name: str
    seeds: list[bytes]
    check: Callable[[bytes], object]  # raises only on a finding
    errors: tuple[type[BaseException], ...]  # the decoder's own error type(s), for the report
    accepted: int = 0
    refused: int = 0
    findings: list[tuple[bytes, str]] = field(default_factory=list)


@dataclass
class Result:
    name: str
    inputs: int
    accepted: int
    refused: int
    findings: list[tuple[bytes, str]]
    seconds: float
    reasons: Counter = field(default_factory=Counter)  # refusals by what the error names first


def _reason(exc: BaseException) -> str:
    """What a refusal names first ("body", "signature", "type", "payload"...): shows how deep inputs got."""
    text = str(exc)
    if text.startswith("height ") and ": " in text:  # ChainError: "height 1: <what>: ..."
        text = text.partition(": ")[2]
    head = text.partition(": ")[0] if ": " in text[:40] else text[:24]
    return head[:24]


def run(target: Target, n: int, seed: int = 0, stop_after: int = 20) -> Result:
    """n generated inputs through ``target``; findings are (input, traceback) for up to ``stop_after``."""
    rng = random.Random(f"{target.name}/{seed}")
    accepted = refused = 0
    findings: list[tuple[bytes, str]] = []
    reasons: Counter = Counter()
    t0 = time.perf_counter()
    for _ in range(n):
        data = generate(rng, target.seeds)
        try:
            target.check(data)
        except target.errors as exc:
            refused += 1
            reasons[_reason(exc)] += 1
        except Exception:
            findings.append((data, traceback.format_exc()))
            if len(findings) >= stop_after:
                break
        else:
            accepted += 1
    return Result(target.name, accepted + refused + len(findings), accepted, refused, findings,
                  time.perf_counter() - t0, reasons)


# ---------------------------------------------------------------------------------------------- corpora

def build_targets(tmp: str) -> list[Target]:
    """Every decoder a member or client can reach, with a corpus of valid encodings each."""
    from ledger_helpers import CHAIN_ID, T0, Consortium

    from consensus import messages as m
    from consensus.certificate import Certificate, CertificateError, verify_certificate
    from consensus.crypto import Ed25519Crypto
    from consensus.evidence import encode_evidence
    from node.ledger.block import Block, BlockError, BlockHeader, ProposalHeader
    from node.ledger.chain import Chain, ChainError, ProposalError, proposal_digest
    from node.ledger.equivocation import evidence_tx_fields
    from node.ledger.genesis import NEW_CHAIN_PARAMS
    from node.ledger.intake import make_tx
    from node.ledger.store import Store
    from node.ledger.tx import TxError, decode_tx, sign_bodies, signable_body
    from node.runtime.gossip import BatchError, TxGossip, decode_batch
    from node.runtime.mempool import Mempool
    from node.runtime.peerscore import PeerScores
    from node.runtime.settings import MempoolConfig
    from node.runtime.sync import (
        BlockSync,
        SyncError,
        decode_blocks,
        decode_request,
        decode_status,
        decode_status_report,
    )

    c = Consortium(params=NEW_CHAIN_PARAMS)  # batched txs accepted, as on a new chain
    counter = [0]

    def fresh_chain() -> Chain:
        counter[0] += 1
        return Chain(c.genesis, Store(os.path.join(tmp, f"chain{counter[0]}")), clock=lambda: T0 / 1000,
                     seen_filter_bits=16)

    chain = fresh_chain()
    # ---- txs of every type
    txs = [c.tx(i % 4, t) for i in range(3) for t in ("instances.accessed", "instances.stored", "export", "query")]
    pseudo = c.pseudo
    txs.append(make_tx("consent.granted", c.keys[0], chain_id=CHAIN_ID, member=c.name(0), ts=T0, nonce=b"n" * 16,
                       patient=pseudo.patient("P", "H"), grantee=pseudo.grantee("hosp-b"), scope="IMG",
                       purpose="TREAT"))
    txs.append(make_tx("member.added", c.keys[0], chain_id=CHAIN_ID, member=c.name(0), ts=T0, nonce=b"m" * 16,
                       subject="hosp-x", subject_key=b"\x01" * 32))
    txs.append(make_tx("client.removed", c.keys[1], chain_id=CHAIN_ID, member=c.name(1), ts=T0, nonce=b"c" * 16,
                       subject_key=b"\x02" * 32))
    txs.append(make_tx("deidentified", c.keys[2], chain_id=CHAIN_ID, member=c.name(2), ts=T0, nonce=b"d" * 16,
                       patient=pseudo.patient("P", "H"), study=pseudo.study("1.2"), purpose="PUBHLTH", outcome=0,
                       action="E", ae="DEID", source_digest=b"\x03" * 32, derived_digest=b"\x04" * 32,
                       instances=[b"\x05" * 16, b"\x06" * 16]))
    crypto3 = Ed25519Crypto(c.keys[3], c.genesis.member_pubkeys)
    sig_a = crypto3.sign(m.vote_signing_bytes(CHAIN_ID, 0, 5, b"\xaa" * 32))
    sig_b = crypto3.sign(m.vote_signing_bytes(CHAIN_ID, 0, 5, b"\xbb" * 32))
    blob = encode_evidence("prepare", CHAIN_ID, 3, 0, 5, (b"\xaa" * 32, sig_a), (b"\xbb" * 32, sig_b))
    txs.append(make_tx("evidence.equivocation", c.keys[0], chain_id=CHAIN_ID, member=c.name(0), ts=T0,
                       nonce=b"e" * 16, **evidence_tx_fields(blob)))
    # three of member 1's events signed as one batch (node.ledger.tx: [body, sig, proof])
    batch_bodies = [signable_body(decode_tx(c.tx(1), verify=False).fields, c.keys[1]) for _ in range(3)]
    txs += [tx.raw for tx in sign_bodies(batch_bodies, c.keys[1])]
    for raw in txs:  # the corpus must be valid, or the fuzzer starts from refusals
        chain.check_tx(raw)

    # ---- proposals, blocks, certificates
    payloads = [chain.build_proposal(1, 0, T0, txs[:k]) for k in (0, 1, 3, len(txs))]
    for p in payloads:
        chain.validate_proposal(1, p, now_ms=T0)
    certs = [c.certificate(chain, p, 1, view=v) for p, v in zip(payloads, (0, 1, 0, 7), strict=True)]
    header = BlockHeader(CHAIN_ID, 1, b"\x00" * 32, b"\x11" * 32, 0, b"\x22" * 32, T0, 2, b"\x33" * 32)
    blocks = [Block(header, (b"\x44" * 32, b"\x55" * 32), b"\x00\x02").encode(),
              Block(BlockHeader(CHAIN_ID, 9, b"\x01" * 32, b"\x11" * 32, 3, b"\x22" * 32, T0, 0, b"\x33" * 32),
                    (), b"").encode(), header.encode(),
              ProposalHeader(CHAIN_ID, 1, 0, T0, 0, b"\x00" * 32).encode()]

    def check_proposal(data: bytes) -> None:
        proposal_digest(data)
        chain.validate_proposal(1, data, now_ms=T0)

    def check_block(data: bytes) -> None:
        for decoder in (Block.decode, BlockHeader.decode, ProposalHeader.decode):
            try:
                decoder(data)
            except BlockError:
                pass

    exec_chain = [fresh_chain()]
    exec_seeds = [msgpack.packb([p, cert], use_bin_type=True) for p, cert in zip(payloads, certs, strict=True)]

    def check_execute(data: bytes) -> None:
        """A synced block: (payload, certificate) as a peer sends them, through Chain.execute."""
        try:
            pair = msgpack.unpackb(data, raw=False, strict_map_key=False)
        except Exception:
            pair = None
        if type(pair) is list and len(pair) == 2 and type(pair[0]) is bytes and type(pair[1]) is bytes:
            payload, cert = pair
        else:
            payload, cert = data, data
        exec_chain[0].execute(payload, cert)
        exec_chain[0].store.close()
        exec_chain[0] = fresh_chain()  # it executed: a fresh chain keeps the corpus at height 1

    def check_certificate(data: bytes) -> None:
        cert = Certificate.decode(data)
        verify_certificate(cert, c.genesis.member_pubkeys, CHAIN_ID, 1, cert.digest)

    # ---- consensus messages, one target per kind
    n, max_bytes, window = 4, 1 << 20, 64
    crypto = [Ed25519Crypto(k, c.genesis.member_pubkeys) for k in c.keys]
    d = chain.digest(payloads[1])
    vote = crypto[1].sign(m.vote_signing_bytes(CHAIN_ID, 0, 1, d))
    vc_body = (1, 0, b"", ((0, vote), (1, vote)), ((1, 0, d, m.ENTRY_PREPARED, ((0, vote), (1, vote), (2, vote))),
                                                  (2, 0, d, m.ENTRY_COMMITTED, ((0, vote),))))
    vc = m.sign(crypto[1], CHAIN_ID, m.VIEWCHANGE, 1, vc_body).encode()
    bodies = {
        m.PREPREPARE: [(0, 1, d, payloads[1]), (3, 2, d, None)],
        m.PREPARE: [(0, 1, d)], m.COMMIT: [(2, 7, d)], m.CHECKPOINT: [(16, d)],
        m.VIEWCHANGE: [vc_body, (5, 16, d, (), ())],
        m.NEWVIEW: [(1, (vc, vc, vc), ((1, d, vote), (2, d, vote))), (4, (), ())],
        m.STATUS: [(0, False, 3, 0), (9, True, 100, 96)], m.FETCH: [(1, d)],
        m.PAYLOAD: [(1, d, payloads[1])], m.DECIDED: [(1, payloads[1], certs[1])],
    }
    consensus_targets = []
    for kind, kind_bodies in bodies.items():
        seeds = [m.sign(crypto[s], CHAIN_ID, kind, s, b).encode() for s in (0, 2) for b in kind_bodies]
        for s in seeds:
            m.decode(s, n, max_bytes, window)

        def check_message(data: bytes) -> None:
            msg = m.decode(data, n, max_bytes, window)
            m.verify(crypto[0], CHAIN_ID, msg)  # signing bytes of every decodable message can be built
            m.decode_cached(data, n, max_bytes, window)

        consensus_targets.append(Target(f"consensus.{m.KIND_NAMES[kind]}", seeds, check_message, (m.DecodeError,)))

    # ---- tx gossip frames through the real handler, and its decoder
    mempool = Mempool(Path(tmp) / "mempool", 100_000)
    scores = PeerScores(threshold=float("inf"), log_interval=3600)  # never block: every frame is handled
    gossip = TxGossip(lambda ch, data: 0, chain, mempool, MempoolConfig(), on_admitted=lambda: None, scores=scores)
    batches = [msgpack.packb(txs[:k], use_bin_type=True) for k in (1, 2, 5, len(txs))]

    def check_gossip(data: bytes) -> None:
        try:
            decode_batch(data)
        except BatchError:
            pass
        gossip.on_batch("peer", data)  # must not raise at all

    # ---- sync frames: requests through the real serve(), replies through the decoders
    sync = BlockSync(net=None, chain=chain, driver=None, peer_ids=["me", "peer"], scores=scores)
    requests = [msgpack.packb({"op": "status"}), msgpack.packb({"op": "blocks", "from": 1})]
    replies = [msgpack.packb({"height": 5, "head": b"\x01" * 32}, use_bin_type=True),
               msgpack.packb({"height": 5, "head": b"\x01" * 32, "time": 1_800_000_000_000, "view": 3,
                              "mempool": 40, "peers": 3}, use_bin_type=True),  # the status the explorer reads
               msgpack.packb({"blocks": [[1, payloads[1], certs[1]], [2, payloads[2], certs[2]]]}, use_bin_type=True),
               msgpack.packb({"error": "malformed sync request"})]

    def check_sync(data: bytes) -> None:
        coro = sync.serve("peer", data)
        try:
            coro.send(None)  # serve() never awaits: it runs to completion here
        except StopIteration as done:
            assert type(done.value) is bytes
        else:  # pragma: no cover
            coro.close()
            raise AssertionError("serve() awaited")
        for decoder in (decode_status, decode_status_report, lambda r: decode_blocks(r, 1), decode_request):
            try:
                decoder(data)
            except SyncError:
                pass

    def check_tx(data: bytes) -> None:
        decode_tx(data, verify=False)
        chain.check_tx(data)

    return [
        Target("tx", txs, check_tx, (TxError,)),
        Target("proposal", payloads, check_proposal, (ProposalError,)),
        Target("block", blocks, check_block, ()),
        Target("execute (synced block)", exec_seeds, check_execute, (ChainError,)),
        Target("certificate", certs, check_certificate, (CertificateError,)),
        *consensus_targets,
        Target("gossip frame", batches, check_gossip, ()),
        Target("sync frame", requests + replies, check_sync, ()),
    ]


# ---------------------------------------------------------------------------------------------- JSON-RPC

def _jsonable(value):
    """A mutated tree as JSON can carry it: bin becomes str, ext and non-str keys become str."""
    if isinstance(value, bytes):
        return value.decode("latin-1")
    if isinstance(value, list):
        return [_jsonable(v) for v in value]
    if isinstance(value, dict):
        return {(k if isinstance(k, str) else str(k)): _jsonable(v) for k, v in value.items()}
    if isinstance(value, msgpack.ExtType) or value == float("inf"):
        return None
    return value


def _short_waits(value):
    """commit-mode waits are bounded by the method (<= 60 s); keep them short so the run measures inputs."""
    if isinstance(value, list):
        for v in value:
            _short_waits(v)
    elif isinstance(value, dict):
        for k, v in value.items():
            if k == "timeout" and isinstance(v, int | float) and not isinstance(v, bool) and v > 0.01:
                value[k] = 0.01
            else:
                _short_waits(v)


class RpcTarget:
    """The real JSON-RPC handler (JsonRpcApp.handle_http with a real Starlette request) of a real Node built
    in-process from a generated testnet home: LevelDB store with a committed block, mempool, WAL; the p2p
    network is not started. A finding is an exception out of the handler, an answer that is not JSON-RPC,
    or a -32603 internal error anywhere in an answer."""

    name = "rpc (JSON params)"

    def __init__(self, tmp: str):
        import json

        from nacl.signing import SigningKey  # noqa: F401  (keys below are loaded from the homes)

        from node.ledger.intake import EXAMPLE_EVENT
        from node.rpc.openrpc import DOCUMENT
        from node.runtime.keys import load_member_key
        from node.runtime.node import Node
        from node.runtime.settings import load_config
        from node.testnet import generate

        infos = generate(4, Path(tmp) / "rpcnet", base_port=40000)
        cfg = load_config(infos[0].home)
        cfg.rpc.rate_limit_per_second = 1e12  # the limiter is not what is fuzzed
        self.node = node = Node(cfg)
        self.token = infos[0].token
        # one committed block, so reads find txs, blocks and audit entries
        from node.ledger.intake import event_to_tx_fields, sign_tx

        def event_to_tx(event: dict) -> bytes:
            # The node is not running, so no consortium OPRF: seed txs tokenized with the local key only.
            return sign_tx(event_to_tx_fields(event, node.pseudonymizer, chain_id=node.genesis.chain_id,
                                              member=node.cfg.name, client=bytes(node.member_key.verify_key)),
                           node.member_key)

        raws = [event_to_tx({**EXAMPLE_EVENT, "event_id": f"seed-{i}", "time": 1_800_000_000_000 + i})
                for i in range(3)]
        payload = node.chain.build_proposal(1, 0, int(time.time() * 1000), raws)
        from consensus.certificate import Certificate, commit_signing_bytes

        digest = node.chain.digest(payload)
        keys = [load_member_key(i.home / "keys" / "member.key") for i in infos]
        msg = commit_signing_bytes(node.genesis.chain_id, 0, 1, digest)
        cert = Certificate(1, 0, digest, tuple((i, keys[i].sign(msg).signature) for i in range(3))).encode()
        block = node.chain.execute(payload, cert)
        h = block.tx_hashes[0].hex()
        tx_hex = event_to_tx({**EXAMPLE_EVENT, "event_id": "fresh", "time": 1_800_000_000_500}).hex()
        calls = []
        for method in DOCUMENT["methods"]:
            for ex in method.get("examples", []):
                calls.append({"jsonrpc": "2.0", "id": 1, "method": method["name"],
                              "params": {p["name"]: p["value"] for p in ex["params"]}})
        calls += [
            {"jsonrpc": "2.0", "id": 2, "method": "submit_tx", "params": {"tx": tx_hex, "mode": "sync"}},
            {"jsonrpc": "2.0", "id": 3, "method": "submit_event",
             "params": {"event": {**EXAMPLE_EVENT, "event_id": "e", "time": 1_800_000_000_600}, "mode": "async"}},
            {"jsonrpc": "2.0", "id": "x", "method": "get_tx", "params": {"hash": h}},
            {"jsonrpc": "2.0", "id": 4, "method": "get_block", "params": {"height": 1}},
            {"jsonrpc": "2.0", "id": 5, "method": "blocks", "params": {"from": 1, "to": 1}},
            {"jsonrpc": "2.0", "id": 6, "method": "audit_trail", "params": {"patient_id": "PAT-1", "issuer": "HOSP-A"}},
            {"jsonrpc": "2.0", "method": "status"},
        ]
        self.seeds = [msgpack.packb(c, use_bin_type=True) for c in calls]
        self.seeds.append(msgpack.packb(calls[:3]))
        self._json = json
        self.outcomes: Counter = Counter()  # answer code (or "result") -> count, for the report

    def close(self) -> None:
        self.node.close()

    def generate(self, rng: random.Random) -> bytes:
        """An HTTP body: mostly a valid call whose params were mutated (what gets past the framing
        checks into the methods), else a mutation of the whole call or batch, or bytes."""
        r = rng.random()
        if r < 0.65:
            call = msgpack.unpackb(rng.choice(self.seeds[:-1]), raw=False)
            params = call.get("params", {})
            for _ in range(rng.choice((1, 1, 2, 3))):
                params = mutate_value(rng, params) if params or rng.random() < 0.5 else {"x": 1}
            call["params"] = params
            return self.to_body(rng, call)
        data = generate(rng, self.seeds)
        try:
            value = msgpack.unpackb(data, raw=False, strict_map_key=False)
        except Exception:
            if r < 0.9:
                return self.generate(rng)
            return data  # byte-level garbage goes in as is
        return self.to_body(rng, value)

    def to_body(self, rng: random.Random, value) -> bytes:
        """A generated tree as the JSON body of a request."""
        try:
            value = _jsonable(value)
            _short_waits(value)
            text = self._json.dumps(value)
        except RecursionError:  # deeper than Python's JSON can write: send deep JSON text instead
            depth = rng.choice((1000, 5000, 50_000))
            return b'{"jsonrpc": "2.0", "id": 1, "method": "status", "params": ' + b"[" * depth + b"]" * depth + b"}"
        if rng.random() < 0.2:  # and sometimes the JSON text itself is mutated
            text = mutate_bytes(rng, text.encode()).decode("utf-8", "replace")
        return text.encode()

    async def check(self, body: bytes) -> None:
        import trio
        from starlette.requests import Request

        from node.rpc.errors import INTERNAL_ERROR

        scope = {"type": "http", "method": "POST", "path": "/", "query_string": b"", "root_path": "",
                 "scheme": "http", "server": ("127.0.0.1", 8000), "client": ("127.0.0.1", 5000),
                 "headers": [(b"authorization", f"Bearer {self.token}".encode()),
                             (b"content-type", b"application/json"),
                             (b"content-length", str(len(body)).encode())]}
        sent = [False]

        async def receive():
            if sent[0]:
                return {"type": "http.disconnect"}
            sent[0] = True
            return {"type": "http.request", "body": body, "more_body": False}

        with trio.fail_after(30):
            response = await self.node.rpc.handle_http(Request(scope, receive))
        if response.status_code == 204:
            return
        assert response.status_code in (200, 413, 429), response.status_code
        answer = self._json.loads(response.body)
        for a in answer if isinstance(answer, list) else [answer]:
            assert a["jsonrpc"] == "2.0" and ("result" in a) != ("error" in a), a
            self.outcomes[a["error"]["code"] if "error" in a else a.get("result") and "result"] += 1
            if "error" in a:
                assert type(a["error"]["code"]) is int and a["error"]["message"], a
                assert a["error"]["code"] != INTERNAL_ERROR, a


async def run_rpc(target: RpcTarget, n: int, seed: int = 0, stop_after: int = 20) -> Result:
    rng = random.Random(f"rpc/{seed}")
    findings: list[tuple[bytes, str]] = []
    errors = accepted = 0
    t0 = time.perf_counter()
    for _ in range(n):
        body = target.generate(rng)
        try:
            await target.check(body)
        except Exception:
            findings.append((body, traceback.format_exc()))
            if len(findings) >= stop_after:
                break
        else:
            accepted += 1
    done = accepted + len(findings)
    del errors
    return Result(target.name, done, accepted, 0, findings, time.perf_counter() - t0)


def report(results: list[Result]) -> str:
    lines = [f"{'decoder':28} {'inputs':>9} {'accepted':>9} {'refused':>9} {'findings':>8} {'seconds':>8}"]
    for r in results:
        lines.append(f"{r.name:28} {r.inputs:9d} {r.accepted:9d} {r.refused:9d} {len(r.findings):8d} {r.seconds:8.1f}")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    import argparse
    import tempfile

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--inputs", type=int, default=100_000)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--only", default="")
    args = parser.parse_args(argv)
    with tempfile.TemporaryDirectory() as tmp:
        results = []
        for target in build_targets(tmp):
            if args.only and args.only not in target.name:
                continue
            r = run(target, args.inputs, args.seed)
            results.append(r)
            print(report([r]).splitlines()[1], flush=True)
            if r.reasons:
                print("   refused at:", ", ".join(f"{k} {100 * v / r.inputs:.1f}%" for k, v in r.reasons.most_common(8)))
            for data, tb in r.findings[:3]:
                print(f"  finding: {data.hex()}\n{tb}", flush=True)
        if not args.only or args.only in RpcTarget.name:
            import trio

            rpc = RpcTarget(tmp)
            try:
                r = trio.run(run_rpc, rpc, args.inputs, args.seed)
            finally:
                rpc.close()
            results.append(r)
            print(report([r]).splitlines()[1], dict(rpc.outcomes.most_common()), flush=True)
            for data, tb in r.findings[:3]:
                print(f"  finding: {data[:300]!r}\n{tb}", flush=True)
        print(report(results))
    return 1 if any(r.findings for r in results) else 0


if __name__ == "__main__":
    sys.exit(main())
