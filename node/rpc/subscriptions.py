"""WebSocket subscriptions on /ws: new blocks, or events matching an audit filter, resumable by height.

Protocol (JSON-RPC 2.0 messages over one WebSocket; token as ``Authorization: Bearer`` or ``?token=``)::

    -> {"jsonrpc": "2.0", "id": 1, "method": "subscribe",
        "params": {"kind": "events", "from_height": 120, "filter": {"study_uid": "1.2.840.1"}}}
    <- {"jsonrpc": "2.0", "id": 1, "result": {"subscription": "s1", "from_height": 120, "height": 131}}
    <- {"jsonrpc": "2.0", "method": "subscription",
        "params": {"subscription": "s1", "type": "event", "height": 120, "index": 3, "event": {...}}}
    <- {"jsonrpc": "2.0", "method": "subscription",
        "params": {"subscription": "s1", "type": "progress", "height": 131}}
    -> {"jsonrpc": "2.0", "id": 2, "method": "unsubscribe", "params": {"subscription": "s1"}}

``kind`` is ``blocks`` (one ``block`` message per height) or ``events`` (one ``event`` message per matching
applied tx, then a ``progress`` message after each run of blocks: everything up to that height has been
sent). ``from_height`` defaults to the next block (live only).

No event is ever lost silently: every message is read from the store in height order, history first and
then live (a commit only wakes the sender up; it never carries data that could be dropped). A client that
disconnects resumes with ``from_height`` = the height of the last ``progress`` (or block) it processed
plus one — or the height of the last event it processed, skipping (height, index) pairs it already has;
node.client.Subscription does that by itself. A slow client is not buffered for: it simply lags behind the
head, reading from the store at its own pace.
"""

from __future__ import annotations

import itertools
import logging

import trio
from starlette.websockets import WebSocket, WebSocketDisconnect

from node.ledger.block import APPLIED
from node.rpc.audit_trail import FILTER_PARAMS, Filter, entry_json, parse_filter
from node.rpc.errors import (
    INVALID_PARAMS,
    INVALID_REQUEST,
    METHOD_NOT_FOUND,
    PARSE_ERROR,
    UNAUTHORIZED,
    RpcError,
)
from node.rpc.protocol import Caller, check_known, dumps, loads, param, ws_caller
from node.rpc.render import block_json, stored_tx

log = logging.getLogger("radchain.rpc.ws")

MAX_CONNECTIONS = 256
MAX_SUBSCRIPTIONS = 16          # per connection
MAX_MESSAGE_BYTES = 64 * 1024   # client -> server; subscribe requests are small
HISTORY_BATCH = 50              # blocks read per store scan before yielding to other tasks
# An events replay whose filter names a study, patient, actor or AE reads that identifier's index entries
# instead of every tx of every block since from_height (on a 1,000,000-tx ledger: a study's ~100 entries
# instead of a million txs). At most this many entries are held to sort them into height order; an
# identifier with more history (an AE title of a busy modality) is replayed by the block scan instead.
INDEXED_REPLAY_MAX = 50_000
_SELECTIVE = ("study", "patient", "actor", "ae")


class Subscriptions:
    def __init__(self, rpc_app):
        self.rpc = rpc_app
        self._changed = trio.Event()
        self.connections = 0

    # ------------------------------------------------------------------ node hook
    def on_commit(self, block) -> None:
        self._changed.set()
        self._changed = trio.Event()

    async def wait_beyond(self, height: int) -> None:
        store = self.rpc.node.store
        while store.height <= height:
            await self._changed.wait()

    # ------------------------------------------------------------------ the endpoint
    async def endpoint(self, websocket: WebSocket) -> None:
        await websocket.accept()
        caller = await ws_caller(self.rpc, websocket)
        token = websocket.query_params.get("token")
        if not self.rpc.may_read(caller):
            await _send_quietly(websocket, _error(None, RpcError(UNAUTHORIZED, "this node requires a token for reads")))
            await websocket.close(code=1008)
            return
        if self.connections >= MAX_CONNECTIONS:
            await _send_quietly(websocket, _error(None, RpcError(INVALID_REQUEST, "too many WebSocket connections")))
            await websocket.close(code=1013)  # try again later
            return
        self.connections += 1
        self.rpc.metrics.ws_connections += 1
        conn = _Connection(self, websocket, caller,
                           still_allowed=lambda: self.rpc.may_read(self.rpc.caller(websocket, token)))
        try:
            async with trio.open_nursery() as nursery:
                conn.nursery = nursery
                await conn.read_loop()
                nursery.cancel_scope.cancel()
        except* (WebSocketDisconnect, OSError, RuntimeError, trio.BrokenResourceError, trio.ClosedResourceError):
            pass  # the client went away; nothing to clean up beyond the counters
        finally:
            self.connections -= 1
            self.rpc.metrics.ws_connections -= 1
            self.rpc.metrics.ws_subscriptions -= len(conn.subs)


class _Connection:
    def __init__(self, hub: Subscriptions, websocket: WebSocket, caller: Caller, still_allowed=lambda: True):
        self.hub = hub
        self.ws = websocket
        self.caller = caller
        # The token is looked up again before every message handled and every batch streamed, so a token
        # revoked (or whose read role is taken away) stops an open connection too, not only new ones.
        self.still_allowed = still_allowed
        self.node = hub.rpc.node
        self.subs: dict[str, trio.CancelScope] = {}
        self.nursery: trio.Nursery | None = None
        self._ids = itertools.count(1)
        self._send_lock = trio.Lock()

    async def send(self, message: dict) -> None:
        async with self._send_lock:
            await self.ws.send_text(dumps(message).decode())  # a text frame, as clients expect

    async def read_loop(self) -> None:
        while True:
            message = await self.ws.receive()
            if message["type"] == "websocket.disconnect":
                return
            data = message.get("text")
            if data is None:
                data = (message.get("bytes") or b"").decode("utf-8", "replace")
            if len(data) > MAX_MESSAGE_BYTES:
                await self.send(_error(None, RpcError(INVALID_REQUEST, f"message over {MAX_MESSAGE_BYTES} bytes")))
                await self.ws.close(code=1009)
                return
            if not self.still_allowed():
                await self._close_revoked()
                return
            await self.send(await self.handle(data))

    async def _close_revoked(self) -> None:
        await _send_quietly(self.ws, _error(None, RpcError(UNAUTHORIZED, "token revoked or no longer allowed to read")))
        await self.ws.close(code=1008)
        if self.nursery is not None:
            self.nursery.cancel_scope.cancel()

    async def handle(self, data: str) -> dict:
        try:
            request = loads(data)
        except (ValueError, RecursionError) as exc:
            return _error(None, RpcError(PARSE_ERROR, f"message is not JSON: {exc}"))
        if not isinstance(request, dict) or request.get("jsonrpc") != "2.0" or not isinstance(
                request.get("method"), str):
            return _error(None, RpcError(INVALID_REQUEST, 'a call needs "jsonrpc": "2.0" and a string "method"'))
        rid = request.get("id")
        if not (rid is None or isinstance(rid, (str, int)) and not isinstance(rid, bool)):
            return _error(None, RpcError(INVALID_REQUEST, "id must be a string, a number or null"))
        params = request.get("params", {})
        try:
            if not isinstance(params, dict):
                raise RpcError(INVALID_PARAMS, "params must be an object")
            if request["method"] == "subscribe":
                result = await self.subscribe(params)
            elif request["method"] == "unsubscribe":
                check_known(params, {"subscription"})
                scope = self.subs.pop(param(params, "subscription", str), None)
                if scope is not None:
                    scope.cancel()
                    self.hub.rpc.metrics.ws_subscriptions -= 1
                result = scope is not None
            else:
                raise RpcError(METHOD_NOT_FOUND, "WebSocket methods: subscribe, unsubscribe "
                                                 "(other methods: POST / on the same port)")
        except RpcError as err:
            return _error(rid, err)
        return {"jsonrpc": "2.0", "id": rid, "result": result}

    async def subscribe(self, params: dict) -> dict:
        check_known(params, {"kind", "from_height", "filter"})
        kind = param(params, "kind", str)
        if kind not in ("blocks", "events"):
            raise RpcError(INVALID_PARAMS, "kind must be blocks or events")
        store = self.node.store
        start = param(params, "from_height", int, required=False, default=store.height + 1)
        if start < 1:
            raise RpcError(INVALID_PARAMS, "from_height must be >= 1")
        flt = None
        if kind == "events":
            spec = param(params, "filter", dict, required=False, default={})
            check_known(spec, FILTER_PARAMS)
            flt = await parse_filter(self.node, spec, self.caller)
        elif "filter" in params:
            raise RpcError(INVALID_PARAMS, "filter applies to kind events")
        if len(self.subs) >= MAX_SUBSCRIPTIONS:
            raise RpcError(INVALID_REQUEST, f"at most {MAX_SUBSCRIPTIONS} subscriptions per connection")
        sub_id = f"s{next(self._ids)}"
        scope = trio.CancelScope()
        self.subs[sub_id] = scope
        self.hub.rpc.metrics.ws_subscriptions += 1
        self.nursery.start_soon(self._stream, sub_id, scope, start, flt)
        return {"subscription": sub_id, "from_height": start, "height": store.height}

    async def _stream(self, sub_id: str, scope: trio.CancelScope, start: int, flt: Filter | None) -> None:
        store = self.node.store
        with scope:
            await trio.lowlevel.checkpoint()  # the subscribe answer goes out first
            nxt = start
            if flt is not None and start <= store.height:
                head = store.height
                done = await self._indexed_history(sub_id, flt, start, head)
                if done is None:  # the token was revoked meanwhile; the connection is closed
                    return
                if done:
                    nxt = head + 1
            while True:
                head = store.height
                while nxt <= head:
                    if not self.still_allowed():
                        await self._close_revoked()
                        return
                    upto = min(head, nxt + HISTORY_BATCH - 1)
                    for block in list(store.blocks(nxt, upto)):
                        if flt is None:
                            await self.send(_note(sub_id, {"type": "block", "height": block.height,
                                                           "block": block_json(block, store.get_certificate(block.height))}))
                        else:
                            await self._events(sub_id, block, flt)
                    nxt = upto + 1
                    if flt is not None:
                        await self.send(_note(sub_id, {"type": "progress", "height": upto}))
                    await trio.lowlevel.checkpoint()
                await self.hub.wait_beyond(head)

    async def _indexed_history(self, sub_id: str, flt: Filter, start: int, head: int) -> bool | None:
        """Every event of heights start..head matching `flt`, read through its index, then one progress
        message at `head`. False, having sent nothing, when the filter names no selective index or the
        identifier has over INDEXED_REPLAY_MAX entries: the caller then scans the blocks. None when the
        token was revoked meanwhile (the connection is then closed)."""
        index, keys = flt.index_keys()
        if index not in _SELECTIVE:
            return False
        store = self.node.store
        entries, scanned = [], 0
        for key in keys:  # one identifier's tokens in every key epoch held: one trail
            cursor = None
            while True:
                page, cursor = store.query(index, key, flt.since, flt.until, cursor, 1000)
                scanned += len(page)
                if scanned > INDEXED_REPLAY_MAX:
                    return False
                entries.extend(e for e in page if start <= e.height <= head)
                if cursor is None:
                    break
                await trio.lowlevel.checkpoint()
        # The index is in event-time order; the stream promises height order (resumption is by height).
        entries.sort(key=lambda e: (e.height, e.index))
        for n, e in enumerate(entries):
            if n % HISTORY_BATCH == 0:
                if not self.still_allowed():
                    await self._close_revoked()
                    return None
                await trio.lowlevel.checkpoint()
            rec = store.get_tx(e.tx_hash)
            if rec is None:
                continue
            fields, _sig = stored_tx(rec[2])
            if flt.matches(fields):
                await self.send(_note(sub_id, {"type": "event", "height": e.height, "index": e.index,
                                               "event": entry_json(e.tx_hash, e.height, e.index, fields)}))
        await self.send(_note(sub_id, {"type": "progress", "height": head}))
        return True

    async def _events(self, sub_id: str, block, flt: Filter) -> None:
        store = self.node.store
        for i, h in enumerate(block.tx_hashes):
            if block.statuses[i] != APPLIED:
                continue
            rec = store.get_tx(h)
            if rec is None:
                continue
            fields, _sig = stored_tx(rec[2])
            if flt.matches(fields):
                await self.send(_note(sub_id, {"type": "event", "height": block.height, "index": i,
                                               "event": entry_json(h, block.height, i, fields)}))


def _note(sub_id: str, body: dict) -> dict:
    return {"jsonrpc": "2.0", "method": "subscription", "params": {"subscription": sub_id, **body}}


def _error(rid, err: RpcError) -> dict:
    return {"jsonrpc": "2.0", "id": rid, "error": err.to_json()}


async def _send_quietly(websocket: WebSocket, message: dict) -> None:
    try:
        await websocket.send_text(dumps(message).decode())
    except Exception:
        pass
