"""Python SDK for RadChain's JSON-RPC API (docs/RPC.md).

    from node.client import RadChainClient

    with RadChainClient("http://127.0.0.1:26601", token="...") as rc:
        answer = rc.submit_event({"type": "instances.accessed", "patient_id": "PAT-1", "issuer": "HOSP-A",
                                  "study_uid": "1.2.840.1", "actor": "dr.smith", "purpose": "TREAT",
                                  "event_id": "pacs-7781", "time": "2026-11-27T10:00:00Z"}, mode="commit")
        print(answer["status"], answer.get("height"))       # committed 42 (or pending, on timeout)
        receipt = rc.get_tx(answer["hash"])["receipt"]       # check offline: radchain verify-receipt
        for event in rc.audit_trail_all(study_uid="1.2.840.1"):
            print(event["height"], event["type"], event["member"])

Every failure the node reports arrives as RpcCallError with the JSON-RPC code and message; transport
failures are httpx exceptions. Submitting the same tx (or the same event with its event_id) again is safe.
A node under overload refuses new txs with a retry delay (``RpcCallError.retry_after``); ``submit_tx``,
``submit_event`` and ``submit_events`` wait that long and submit again, for up to ``retry_busy`` seconds
(constructor argument, default 60; 0 raises at once).

``Subscription`` (async, trio) follows new blocks or matching events over the node's WebSocket and
reconnects by itself, resuming from the last height it delivered, so no event is skipped or repeated.
"""

from __future__ import annotations

import itertools
import json
import random
import time
from collections.abc import Iterator

import httpx

__all__ = ["RadChainClient", "RpcCallError", "Subscription"]


class RpcCallError(Exception):
    def __init__(self, code: int, message: str, data=None):
        super().__init__(f"{message} (code {code})")
        self.code = code
        self.message = message
        self.data = data

    @property
    def retry_after(self) -> float | None:
        """Seconds to wait before submitting again, when the node refused for load (not for the tx)."""
        value = self.data.get("retry_after") if isinstance(self.data, dict) else None
        if isinstance(value, (int, float)) and not isinstance(value, bool) and 0 <= value <= 3600:
            return float(value)
        return None


def _pause(seconds: float, deadline: float) -> bool:
    """Sleep the node's retry delay (with jitter, so refused clients do not all return at once);
    False when that would pass `deadline`."""
    wait = seconds * random.uniform(1.0, 1.25)
    if time.monotonic() + wait > deadline:
        return False
    time.sleep(wait)
    return True


def _reply(response: httpx.Response):
    try:
        body = response.json()
    except ValueError:
        response.raise_for_status()
        raise RpcCallError(-32700, f"node answered HTTP {response.status_code} without JSON") from None
    return body


class RadChainClient:
    def __init__(self, url: str, token: str | None = None, timeout: float = 30.0, retry_busy: float = 60.0):
        self.url = url.rstrip("/") + "/"
        self.retry_busy = retry_busy
        self.token = token
        headers = {"Authorization": f"Bearer {token}"} if token else {}
        self._http = httpx.Client(headers=headers, timeout=timeout)
        self._ids = itertools.count(1)

    def __enter__(self) -> RadChainClient:
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def close(self) -> None:
        self._http.close()

    # ------------------------------------------------------------------ transport
    def call(self, method: str, params: dict | None = None, *, timeout: float | None = None):
        kwargs = {} if timeout is None else {"timeout": timeout}
        body = _reply(self._http.post(self.url, json={"jsonrpc": "2.0", "id": next(self._ids), "method": method,
                                                      "params": params or {}}, **kwargs))
        if "error" in body:
            err = body["error"]
            raise RpcCallError(err.get("code", 0), err.get("message", ""), err.get("data"))
        return body["result"]

    def batch(self, calls: list[tuple[str, dict]]) -> list:
        """Several calls in one HTTP request; results (or RpcCallError instances) in call order."""
        ids = [next(self._ids) for _ in calls]
        body = _reply(self._http.post(self.url, json=[{"jsonrpc": "2.0", "id": i, "method": m, "params": p}
                                                      for i, (m, p) in zip(ids, calls, strict=True)]))
        if isinstance(body, dict):  # the whole batch was refused (rate limit, size, ...)
            err = body.get("error", {})
            raise RpcCallError(err.get("code", 0), err.get("message", "batch refused"), err.get("data"))
        by_id = {item.get("id"): item for item in body}
        out = []
        for i in ids:
            item = by_id.get(i, {"error": {"code": 0, "message": "no answer for this call"}})
            if "error" in item:
                err = item["error"]
                out.append(RpcCallError(err.get("code", 0), err.get("message", ""), err.get("data")))
            else:
                out.append(item["result"])
        return out

    # ------------------------------------------------------------------ writes
    def submit_tx(self, tx: bytes | str, mode: str = "sync", timeout: float | None = None) -> dict:
        """Submit a signed tx (wire bytes, or their hex). mode: async | sync | commit."""
        params: dict = {"tx": tx.hex() if isinstance(tx, bytes) else tx, "mode": mode}
        return self._submit("submit_tx", params, mode, timeout)

    def submit_event(self, event: dict, mode: str = "sync", timeout: float | None = None) -> dict:
        """Submit a raw event (identifiers in clear: only to your own hospital's node)."""
        return self._submit("submit_event", {"event": event, "mode": mode}, mode, timeout)

    def submit_events(self, events: list[dict], mode: str = "sync") -> list:
        """Several events in one JSON-RPC batch; answers (or RpcCallError) in order. Events the node refused
        for load are submitted again after its retry delay, for up to ``retry_busy`` seconds."""
        answers: list = [None] * len(events)
        todo = list(range(len(events)))
        deadline = time.monotonic() + self.retry_busy
        while True:
            try:
                got = self.batch([("submit_event", {"event": events[i], "mode": mode}) for i in todo])
            except RpcCallError as exc:  # the whole request refused (rate limit)
                if exc.retry_after is None or not _pause(exc.retry_after, deadline):
                    raise
                continue
            busy = []
            for i, answer in zip(todo, got, strict=True):
                answers[i] = answer
                if isinstance(answer, RpcCallError) and answer.retry_after is not None:
                    busy.append(i)
            if not busy or not _pause(min(answers[i].retry_after for i in busy), deadline):
                return answers
            todo = busy

    def _submit(self, method: str, params: dict, mode: str, timeout: float | None) -> dict:
        if timeout is not None:
            params["timeout"] = timeout
        # the HTTP request must outlive the node's commit wait
        http_timeout = (timeout or 10.0) + 15.0 if mode == "commit" else None
        deadline = time.monotonic() + self.retry_busy
        while True:
            try:
                return self.call(method, params, timeout=http_timeout)
            except RpcCallError as exc:
                if exc.retry_after is None or not _pause(exc.retry_after, deadline):
                    raise

    def wait_committed(self, tx_hash: str, timeout: float = 30.0, interval: float = 0.2) -> dict:
        """Poll get_tx until the tx is committed or rejected; the last answer (status pending on timeout)."""
        import time

        deadline = time.monotonic() + timeout
        while True:
            answer = self.get_tx(tx_hash, receipt=False)
            if answer["status"] != "pending" or time.monotonic() >= deadline:
                return answer
            time.sleep(interval)

    # ------------------------------------------------------------------ reads
    def status(self) -> dict:
        return self.call("status")

    def get_tx(self, tx_hash: str, receipt: bool = True) -> dict:
        return self.call("get_tx", {"hash": tx_hash, "receipt": receipt})

    def get_block(self, height: int | None = None) -> dict:
        return self.call("get_block", {} if height is None else {"height": height})

    def blocks(self, start: int, end: int | None = None) -> Iterator[dict]:
        """Blocks start..end (default: the head), fetched 100 per call."""
        nxt: int | None = start
        while nxt is not None and (end is None or nxt <= end):
            page = self.call("blocks", {"from": nxt, **({} if end is None else {"to": end})})
            yield from page["blocks"]
            nxt = page["next"]

    def audit_trail(self, **filters) -> dict:
        """One page: {"entries": [...], "next_cursor": str | None}. Filters: see docs/RPC.md."""
        return self.call("audit_trail", filters)

    def audit_trail_all(self, **filters) -> Iterator[dict]:
        """Every matching entry, oldest first, following next_cursor."""
        cursor = filters.pop("cursor", None)
        while True:
            page = self.call("audit_trail", {**filters, **({"cursor": cursor} if cursor else {})})
            yield from page["entries"]
            cursor = page["next_cursor"]
            if cursor is None:
                return

    def validators(self) -> dict:
        return self.call("validators")

    def peers(self) -> dict:
        return self.call("peers")

    def mempool(self, limit: int = 100) -> dict:
        return self.call("mempool", {"limit": limit})

    def discover(self) -> dict:
        return self.call("rpc.discover")

    def metrics(self) -> str:
        reply = self._http.get(self.url + "metrics")
        reply.raise_for_status()
        return reply.text

    def health(self) -> bool:
        try:
            return self._http.get(self.url + "health").status_code == 200
        except httpx.HTTPError:
            return False


class Subscription:
    """Follow ``kind`` = "blocks" or "events" (with an audit filter) from ``from_height``, over WebSocket.

        async with Subscription(url, "events", from_height=1, filter={"study_uid": "1.2.840.1"},
                                token=token) as sub:
            async for event in sub:
                print(event["height"], event["index"], event["type"])

    Yields block objects (kind blocks) or audit entries (kind events; each has height and index). After a
    disconnect it reconnects with backoff and resumes where it stopped: ``position`` is (height, index) of
    the last delivered event; ``next_height`` the first height not yet fully delivered. Keep them to resume
    in another process: ``Subscription(..., from_height=pos[0], after=pos)``.
    """

    def __init__(self, url: str, kind: str = "events", *, from_height: int | None = None,
                 filter: dict | None = None, token: str | None = None, after: tuple[int, int] | None = None,
                 reconnect: bool = True, max_backoff: float = 5.0):
        if kind not in ("blocks", "events"):
            raise ValueError("kind must be blocks or events")
        base = url.rstrip("/")
        self.ws_url = ("wss://" + base[8:] if base.startswith("https://") else
                       "ws://" + base[7:] if base.startswith("http://") else base) + "/ws"
        self.kind = kind
        self.filter = filter or {}
        self.token = token
        self.next_height = from_height
        self.position = after if after is not None else (0, -1)
        self.reconnect = reconnect
        self.max_backoff = max_backoff
        self.reconnects = 0
        self._error: Exception | None = None

    async def __aenter__(self) -> Subscription:
        import trio

        # The connection lives in a task owned by this context, feeding an unbuffered channel: the
        # consumer's pace is the reading pace (the node reads from its store, so nothing piles up).
        self._send, self._recv = trio.open_memory_channel(0)
        self._nursery_cm = trio.open_nursery()
        nursery = await self._nursery_cm.__aenter__()
        nursery.start_soon(self._pump)
        self._cancel = nursery.cancel_scope
        return self

    async def __aexit__(self, *exc) -> bool:
        self._cancel.cancel()
        # _pump keeps its errors for __anext__, so the nursery ends quietly and whatever left the
        # `async with` body propagates as itself, not wrapped in an exception group.
        await self._nursery_cm.__aexit__(None, None, None)
        return False

    def __aiter__(self) -> Subscription:
        return self

    async def __anext__(self) -> dict:
        import trio

        try:
            return await self._recv.receive()
        except trio.EndOfChannel:
            if self._error is not None:
                raise self._error from None
            raise StopAsyncIteration from None

    async def _pump(self) -> None:
        async with self._send:
            try:
                await self._run(self._send.send)
            except Exception as exc:  # refused subscription, or disconnected with reconnect=False
                self._error = exc

    async def _run(self, emit) -> None:
        import trio
        from trio_websocket import ConnectionClosed, HandshakeError, open_websocket_url

        backoff = 0.2
        headers = [("Authorization", f"Bearer {self.token}")] if self.token else []
        while True:
            try:
                async with open_websocket_url(self.ws_url, extra_headers=headers) as ws:
                    params: dict = {"kind": self.kind}
                    if self.next_height is not None:
                        params["from_height"] = self.next_height
                    if self.kind == "events":
                        params["filter"] = self.filter
                    await ws.send_message(json.dumps({"jsonrpc": "2.0", "id": 1, "method": "subscribe",
                                                      "params": params}))
                    while True:
                        msg = json.loads(await ws.get_message())
                        if "error" in msg:
                            err = msg["error"]
                            raise RpcCallError(err.get("code", 0), err.get("message", ""), err.get("data"))
                        if "result" in msg:
                            if self.next_height is None:
                                self.next_height = msg["result"]["from_height"]
                            backoff = 0.2
                            continue
                        note = msg.get("params", {})
                        kind = note.get("type")
                        # The position moves only once the consumer has taken the item (the channel is
                        # unbuffered), so leaving the loop early never skips an undelivered one.
                        if kind == "block":
                            await emit(note["block"])
                            self.next_height = note["height"] + 1
                        elif kind == "event":
                            pos = (note["height"], note["index"])
                            if pos <= self.position:
                                continue  # delivered before the reconnect
                            await emit(note["event"])
                            self.position = pos
                            self.next_height = note["height"]  # this block may have more events
                        elif kind == "progress":
                            self.next_height = note["height"] + 1
            except (ConnectionClosed, HandshakeError, OSError, trio.BrokenResourceError):
                if not self.reconnect:
                    raise
                self.reconnects += 1
                await trio.sleep(backoff)
                backoff = min(backoff * 2, self.max_backoff)
