"""Write methods: ``submit_tx`` (a client-signed tx) and ``submit_event`` (a raw event the node signs).

Modes (the answer is never ambiguous; resubmitting the same tx is always safe and gives the same answer):

- ``sync`` (default): the tx is decoded, its signature and key checked, and it is durably in this node's
  mempool before the answer ``{"status": "pending"}`` (or ``"committed"`` with its height if it already
  was). A tx that fails a check is a JSON-RPC error ``-32003`` whose message says why and whose ``data.field``
  names the field at fault.
- ``async``: the answer ``{"status": "pending", "checked": false}`` comes right after the hash is computed;
  checks and admission run after the answer (this is what batches of thousands want). ``get_tx`` then says
  ``pending``, ``committed`` or ``rejected`` with the reason. Not durable until checked: if ``get_tx``
  later says the tx is unknown (the node restarted), submit it again.
- ``commit``: as ``sync``, then wait up to ``timeout`` seconds (default 10, at most 60) for the tx's block.
  The answer is ``committed`` with the height, or — on timeout — ``pending`` with ``"timeout": true``:
  the tx is still in the mempool and will commit; ask again with ``get_tx`` or resubmit. Never an error
  that leaves the client guessing (unlike CometBFT's ``broadcast_tx_commit`` timeouts).

Backpressure: once the txs waiting to commit exceed what the chain commits in 1.5 s (its recent rate,
see node.runtime.mempool), a new tx is refused before any work is spent on it with ``-32004`` and
``data.retry_after`` (seconds; over plain HTTP also status 429 and a ``Retry-After`` header). A client
waits that long and submits again; the node stays at low latency instead of queueing minutes of txs.

A committed tx also carries ``outcome``: ``applied``, or ``rejected`` when execution refused it (its key
was revoked between admission and commit); a rejected tx is recorded in its block but has no effect.
"""

from __future__ import annotations

import logging
import math
import time
from collections import OrderedDict

import trio

from node.ledger.block import STATUS_NAMES
from node.ledger.intake import EventError
from node.ledger.pseudonym import TokenizeError
from node.ledger.refusals import DiskFull, MempoolFull
from node.ledger.tx import MAX_TX_BYTES, TxError, tx_hash
from node.rpc.errors import (
    INTERNAL_ERROR,
    INVALID_PARAMS,
    MEMPOOL_FULL,
    PSEUDONYM_UNAVAILABLE,
    RATE_LIMITED,
    REJECTED,
    RpcError,
)
from node.rpc.protocol import Caller, Later, check_known, let_consensus_in, param

log = logging.getLogger("radchain.rpc")

MODES = ("async", "sync", "commit")
DEFAULT_TIMEOUT = 10.0
MAX_TIMEOUT = 60.0
ASYNC_QUEUE = 20_000       # async-mode txs waiting for their check; beyond this: MEMPOOL_FULL (retry)
REMEMBER_REJECTED = 50_000  # recent rejections get_tx can still explain


class Admission:
    """Checks and admits txs for the RPC: synchronously (sync/commit) or after the answer (async).

    Remembers recent rejections so ``get_tx`` can say why a tx is not pending, and when each tx was
    submitted, for the commit-latency histogram.
    """

    def __init__(self, node, metrics):
        self.node = node
        self.metrics = metrics
        self.rejected: OrderedDict[bytes, str] = OrderedDict()
        self._queue_send, self._queue_recv = trio.open_memory_channel(ASYNC_QUEUE)
        self.queued: set[bytes] = set()

    # ------------------------------------------------------------------ admission
    def gate(self) -> None:
        """Refuse a new client tx while the backlog is over ~1.5 s of commits: RpcError(MEMPOOL_FULL) with
        data.retry_after. Costs no signature, hash or disk work, so a refusal answers at once."""
        over = self.node.mempool.overload(time.monotonic())
        if over is not None:
            raise RpcError(MEMPOOL_FULL, over.message(), _busy_data(over))

    def _full(self, exc: Exception) -> RpcError:
        over = self.node.mempool.overload(time.monotonic())
        data = _busy_data(over) if over is not None else {"retry_after": 1.0}
        return RpcError(MEMPOOL_FULL, f"{exc}; retry after {data['retry_after']:g} s (resubmitting is safe)", data)

    def admit(self, raw: bytes, h: bytes, checked: bool = False) -> dict:
        """Check and durably admit one tx; the answer, or RpcError(REJECTED / MEMPOOL_FULL). `checked`: the
        node built and checked it itself (submit_event)."""
        node = self.node
        found = node.chain.committed_tx(h)
        if found is not None:
            return committed_answer(node, h, found[0])
        try:
            node.submit([raw], checked=checked, hashes=[h])
        except DiskFull as exc:  # before MempoolFull, which the mempool's disk-full refusal also is
            raise RpcError(MEMPOOL_FULL, str(exc), exc.data) from None
        except MempoolFull as exc:
            raise self._full(exc) from None
        except TxError as exc:
            self._reject(h, str(exc))
            raise RpcError(REJECTED, f"rejected: {exc}", _ids(h, reason=str(exc), field=exc.field)) from None
        if self.rejected:
            self.rejected.pop(h, None)
        self.metrics.submitted(h)
        return _ids(h, status="pending")

    def enqueue(self, raw: bytes, h: bytes) -> dict:
        node = self.node
        found = node.chain.committed_tx(h)
        if found is not None:
            return committed_answer(node, h, found[0])
        if node.mempool.durable(h):  # a gossip copy held in memory only goes through the queue: written first
            return _ids(h, status="pending")
        if node.disk.full:
            exc = node.disk.refusal()
            raise RpcError(MEMPOOL_FULL, str(exc), exc.data)
        if h not in self.queued:
            self.gate()
            try:
                self._queue_send.send_nowait((raw, h))
            except trio.WouldBlock:
                raise self._full(Exception("async queue full")) from None
            self.queued.add(h)
            self.metrics.submitted(h)
        return _ids(h, status="pending", checked=False)

    async def run(self) -> None:
        async for raw, h in self._queue_recv:
            self.queued.discard(h)
            try:
                self.admit(raw, h)
            except RpcError as exc:
                if exc.code == MEMPOOL_FULL:
                    self._reject(h, "mempool full when the tx was checked; submit it again")
            except Exception:
                log.exception("async admission failed")
            await trio.lowlevel.checkpoint()

    def _reject(self, h: bytes, reason: str) -> None:
        self.rejected[h] = reason
        self.rejected.move_to_end(h)
        if len(self.rejected) > REMEMBER_REJECTED:
            self.rejected.popitem(last=False)


def _busy_data(over) -> dict:
    # No "reason"/"field" keys: those mean "this tx is invalid" to clients (they dead-letter it).
    return {"retry_after": over.retry_after, "backlog": over.backlog, "limit": over.limit,
            "commit_rate": round(over.commit_rate, 1)}


def _ids(h: bytes, **answer) -> dict:
    """An answer naming the tx both ways: `tx` (the network issue's submit_event contract) and `hash`."""
    return {"tx": h.hex(), "hash": h.hex(), **answer}


def committed_answer(node, h: bytes, height: int) -> dict:
    status = node.store.tx_status(h)
    answer = _ids(h, status="committed", height=height, outcome=STATUS_NAMES.get(status, "applied"))
    reason = node.chain.state.rejections.get(h) if answer["outcome"] == "rejected" else None
    if reason is not None:  # a ledger rule's reason (node.ledger.research), while this node remembers it
        answer["reason"] = reason
    return answer


def _mode_and_timeout(params: dict) -> tuple[str, float]:
    mode = param(params, "mode", str, required=False, default="sync")
    if mode not in MODES:
        raise RpcError(INVALID_PARAMS, f"mode must be one of {', '.join(MODES)}")
    timeout = param(params, "timeout", (int, float), required=False, default=DEFAULT_TIMEOUT)
    if not (isinstance(timeout, (int, float)) and math.isfinite(timeout) and 0 < timeout <= MAX_TIMEOUT):
        raise RpcError(INVALID_PARAMS, f"timeout must be a number of seconds in (0, {MAX_TIMEOUT:g}]")
    return mode, float(timeout)


def _answer(node, raw: bytes, mode: str, timeout: float, h: bytes | None = None, checked: bool = False):
    """The answer to one submitted tx (`h`: its hash when known; `checked`: built and checked by this node)."""
    admission: Admission = node.rpc.admission
    if h is None:
        h = tx_hash(raw)
    if mode == "async":
        return admission.enqueue(raw, h)
    if h not in node.mempool and not node.chain.has_committed(h):
        admission.gate()  # a resubmission of an admitted or committed tx is answered even when busy
    answer = admission.admit(raw, h, checked)
    if mode == "sync" or answer["status"] == "committed":
        return answer

    async def wait() -> dict:
        started = time.monotonic()
        height = await node.wait_committed(h, timeout)
        if height is None:
            return _ids(h, status="pending", timeout=True, waited_s=round(time.monotonic() - started, 3))
        return committed_answer(node, h, height)

    return Later(wait)


async def submit_tx(node, params: dict, caller: Caller):
    check_known(params, {"tx", "mode", "timeout"})
    mode, timeout = _mode_and_timeout(params)
    text = param(params, "tx", str)
    if len(text) > 2 * MAX_TX_BYTES:
        raise RpcError(REJECTED, f"tx: over {MAX_TX_BYTES} bytes")
    try:
        raw = bytes.fromhex(text.removeprefix("0x"))
    except ValueError:
        raise RpcError(INVALID_PARAMS, "tx must be the hex of the canonical signed tx bytes") from None
    if not raw:
        raise RpcError(INVALID_PARAMS, "tx is empty")
    return _answer(node, raw, mode, timeout)


async def submit_event(node, params: dict, caller: Caller):
    outcome = (await submit_events(node, [params], caller))[0]
    if isinstance(outcome, RpcError):
        raise outcome
    return outcome


def _refused(exc: TxError) -> RpcError:
    return RpcError(REJECTED, f"rejected: {exc}", {"field": exc.field})


async def submit_events(node, calls: list[dict], caller: Caller) -> list:
    """submit_event for the calls of one JSON-RPC batch (Method.batch): the events are signed together,
    under one signature (node.ledger.tx, node.runtime.own_txs), and each call is answered as its own."""
    outcomes: list = [None] * len(calls)
    ready: list[tuple[int, str, float, tuple[bytes, dict]]] = []
    worked_since = time.perf_counter()
    for i, params in enumerate(calls):
        try:
            ready.append((i, *await _event_body(node, params)))
        except RpcError as exc:
            outcomes[i] = exc
        if i % 16 == 15:  # as JsonRpcApp.run_batch does between calls: consensus goes first
            worked_since = await let_consensus_in(node, worked_since)
    if not ready:
        return outcomes
    txs = node.sign_own([body for _i, _mode, _timeout, body in ready])
    worked_since = time.perf_counter()
    for k, ((i, mode, timeout, _body), tx) in enumerate(zip(ready, txs, strict=True)):
        # not authorised (member removed, key revoked) or a ledger rule refuses it: this event alone, the
        # others of the batch go on
        if isinstance(tx, TxError):
            outcomes[i] = _refused(tx)
            continue
        try:
            outcomes[i] = _answer(node, tx.raw, mode, timeout, tx.hash, checked=True)
        except RpcError as exc:
            outcomes[i] = exc
        except Exception:  # a bug costs this call, not the batch's calls admitted already
            log.exception("submit_event failed in a batch")
            outcomes[i] = RpcError(INTERNAL_ERROR, "internal error")
        if k % 16 == 15:  # each admission is a durable mempool write and a gossip hand-off
            worked_since = await let_consensus_in(node, worked_since)
    return outcomes


async def _event_body(node, params: dict) -> tuple[str, float, tuple[bytes, dict]]:
    """A submit_event call's mode, timeout and unsigned tx body (Node.own_body), or RpcError."""
    check_known(params, {"event", "mode", "timeout"})
    mode, timeout = _mode_and_timeout(params)
    event = param(params, "event", dict)
    # Before any work: under overload the refusal must cost nothing (a resubmitted event is found by its
    # body only after that is built, so it too waits for the backlog to drain).
    node.rpc.admission.gate()
    try:
        return mode, timeout, await node.own_body(event)
    except TokenizeError as exc:
        raise tokenize_error(exc) from None
    except EventError as exc:
        raise RpcError(REJECTED, str(exc), {"field": exc.field}) from None
    except TxError as exc:  # the event mapped to fields the tx schema refuses
        raise RpcError(REJECTED, f"rejected: {exc}", {"field": exc.field}) from None


def tokenize_error(exc: TokenizeError) -> RpcError:
    """The consortium's pseudonyms could not be computed: a clear, retryable error (nothing was recorded)."""
    # Always a retry_after: the event is fine, the consortium is not answering now. A client (the DICOM
    # hook's spool) keeps the event and comes back, instead of dead-lettering it for its `reason`.
    data: dict = {"reason": f"pseudonym_{exc.code}",
                  "retry_after": round(exc.retry_after, 3) if exc.retry_after is not None else 5.0}
    code = RATE_LIMITED if exc.code == "rate_limited" else PSEUDONYM_UNAVAILABLE
    return RpcError(code, f"{exc}; nothing was recorded, submit again later", data)


def event_ready(node, params: dict) -> bool:
    """Method.ready of submit_event: the event's consortium tokens are all in memory already, or it is not
    an event at all (the call itself refuses it; there is nothing to warm up)."""
    event = params.get("event")
    return not isinstance(event, dict) or node.tokens_ready(event)


async def prepare_event(node, params: dict) -> None:
    """Batch warm-up (node.rpc.server.Method.prepare): this event's consortium tokens into the node's cache,
    together with the rest of the batch's. Errors are left for submit_event itself to report."""
    event = params.get("event")
    if isinstance(event, dict):
        try:
            await node.prefetch_tokens(event)
        except Exception:  # noqa: BLE001 - the call that follows reports whatever this hit
            pass
