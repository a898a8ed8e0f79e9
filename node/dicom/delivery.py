"""Delivers spooled events to the node: JSON-RPC 2.0 `submit_event`, at least once, in spool order.

* success (`result.tx`)                 -> the spool file is removed, event_id -> tx logged in delivered.jsonl
* JSON-RPC error that names the event   -> moved to spool/dead/ with the reason; never retried
  (invalid params -32602 / invalid request -32600, or an error carrying `data.reason`/`data.field`)
* node busy (an error with `data.retry_after`, HTTP 429)
                                        -> retried after the delay the node asked for, the event stays pending
* anything else (refused connection, timeout, HTTP 5xx/401, -32603, "not ready")
                                        -> retried with exponential backoff, the event stays pending

Several processes may share one spool (proxy, ATNA receiver, Orthanc, import); an flock on
spool/deliver.lock lets exactly one of them deliver at a time, and the others stand by.
Standard library only (http.client), so the Orthanc plugin can deliver too. That is why this is not
node.client: the SDK needs httpx (pooled connections, WebSocket subscriptions), which Orthanc's interpreter
does not have, and the hook imports nothing of node/ but node.vocabulary (checked by `make lint`). What this
speaks is one method, submit_event, with the retry rules above; the SDK's rules for the same answers are
in node.client.
"""

from __future__ import annotations

import fcntl
import http.client
import json
import logging
import os
import threading
import time
from urllib.parse import urlsplit

from node.dicom.spool import Spool

log = logging.getLogger("radchain.dicom.delivery")

INVALID_CODES = {-32600, -32602}  # JSON-RPC invalid request / invalid params
REJECTED = -32003                 # node.rpc.errors.REJECTED: the node refused the event's tx
BATCH = 100                       # events per HTTP request (JSON-RPC batch; the node takes up to 1000)


class RetryLater(Exception):
    """The node could not take the event now; keep it and try again (after `retry_after` seconds when the
    node said how long: it is overloaded and sheds load; else with exponential backoff)."""

    def __init__(self, message: str, retry_after: float | None = None):
        super().__init__(message)
        self.retry_after = retry_after


MAX_RETRY_AFTER = 60.0  # a node's requested delay is honoured up to this


def _retry_after(data: dict) -> float | None:
    value = data.get("retry_after")
    if isinstance(value, (int, float)) and not isinstance(value, bool) and 0 <= value:
        return min(float(value), MAX_RETRY_AFTER)
    return None


def _wait_for(exc: RetryLater, backoff: float) -> float:
    return exc.retry_after if exc.retry_after is not None else backoff


class Deliverer:
    def __init__(self, spool: Spool, rpc_url: str, token: str | None, *, timeout: float = 10.0):
        self.spool = spool
        parts = urlsplit(rpc_url if "://" in rpc_url else f"http://{rpc_url}")
        if parts.scheme not in ("http", "https"):
            raise ValueError(f"RPC URL must be http(s)://HOST:PORT, got {rpc_url!r}")
        self._scheme, self._host, self._port = parts.scheme, parts.hostname, parts.port
        self._path = parts.path or "/"
        self.token = token
        self.timeout = timeout
        self._conn: http.client.HTTPConnection | None = None
        self._lock_fd: int | None = None
        self._next_id = 0
        self.stats = {"delivered": 0, "dead": 0, "retries": 0}
        self.batch_ok = True
        self.last_error: str | None = None

    # -- the single-deliverer lock -----------------------------------------------------------------
    def _acquire(self) -> bool:
        if self._lock_fd is not None:
            return True
        fd = os.open(self.spool.root / "deliver.lock", os.O_RDWR | os.O_CREAT, 0o600)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(fd)
            return False
        self._lock_fd = fd
        return True

    def close(self) -> None:
        if self._conn is not None:
            self._conn.close()
            self._conn = None
        if self._lock_fd is not None:
            os.close(self._lock_fd)  # closing releases the flock
            self._lock_fd = None

    # -- one RPC ------------------------------------------------------------------------------------
    def _post(self, body: bytes) -> tuple[int, bytes]:
        for attempt in (0, 1):  # one silent retry when a kept-alive connection turns out closed
            if self._conn is None:
                cls = http.client.HTTPSConnection if self._scheme == "https" else http.client.HTTPConnection
                self._conn = cls(self._host, self._port, timeout=self.timeout)
            headers = {"Content-Type": "application/json"}
            if self.token:
                headers["Authorization"] = f"Bearer {self.token}"
            try:
                self._conn.request("POST", self._path, body=body, headers=headers)
                resp = self._conn.getresponse()
                return resp.status, resp.read()
            except (http.client.RemoteDisconnected, BrokenPipeError, ConnectionResetError) as exc:
                self._conn.close()
                self._conn = None
                if attempt:
                    raise RetryLater(f"node closed the connection: {exc}") from exc
            except OSError as exc:  # refused, timeout, unreachable
                self._conn.close()
                self._conn = None
                raise RetryLater(f"node unreachable at {self._host}:{self._port}: {exc}") from exc
            except http.client.HTTPException as exc:
                # A node stopped mid-answer (IncompleteRead) or something else on its port answering nonsense
                # (BadStatusLine, LineTooLong): not an answer about these events, so they wait in the spool.
                self._conn.close()
                self._conn = None
                raise RetryLater(f"node at {self._host}:{self._port} sent a broken HTTP answer: "
                                 f"{type(exc).__name__}") from exc
        raise AssertionError("unreachable")

    def submit(self, event: dict) -> dict:
        """One event; returns the JSON-RPC result, raises RetryLater, or ValueError(reason) if refused."""
        outcome = self.submit_many([event])[0]
        if isinstance(outcome, Exception):
            raise outcome
        return outcome

    def submit_many(self, events: list[dict]) -> list:
        """A JSON-RPC batch (one HTTP request); per event: result dict, ValueError (refused: dead-letter) or
        RetryLater. Raises RetryLater when the whole request failed. Falls back to single calls if the
        server does not take batches."""
        if len(events) > 1 and not self.batch_ok:
            return [self._one(e) for e in events]
        calls = []
        for event in events:
            self._next_id += 1
            calls.append({"jsonrpc": "2.0", "id": self._next_id, "method": "submit_event",
                          "params": {"event": event}})
        payload = calls if len(calls) > 1 else calls[0]
        status, raw = self._post(json.dumps(payload).encode())
        try:
            doc = json.loads(raw)
        except ValueError:
            raise RetryLater(f"node answered HTTP {status} with a non-JSON body") from None
        if len(calls) == 1:
            return [self._classify(doc, status)]
        if not isinstance(doc, list):
            if isinstance(doc, dict) and isinstance(doc.get("error"), dict) and \
                    doc["error"].get("code") in INVALID_CODES:
                self.batch_ok = False  # a server without batch support
                return [self._one(e) for e in events]
            return [self._classify(doc, status) for _ in calls]
        # ids are ours (ints): anything else, say a list, is no answer to our calls (and is unhashable)
        by_id = {d["id"]: d for d in doc if isinstance(d, dict) and type(d.get("id")) is int}
        return [self._classify(by_id.get(c["id"]), status) for c in calls]

    def _one(self, event: dict):
        try:
            return self.submit_many([event])[0]
        except RetryLater as exc:
            return exc

    @staticmethod
    def _classify(doc, status: int):
        if not isinstance(doc, dict):
            return RetryLater(f"node answered HTTP {status} without a response for the event")
        result = doc.get("result")
        if isinstance(result, dict) and (result.get("tx") or result.get("hash")):
            # the node answers {"hash", "status"}; the first contract said {"tx", "status"}: take either
            result = {**result, "tx": result.get("tx") or result.get("hash")}
            if result.get("status") == "rejected":
                return ValueError(f"rejected: {result.get('reason') or 'no reason given'}")
            return result
        err = doc.get("error")
        if isinstance(err, dict):
            data = err.get("data") if isinstance(err.get("data"), dict) else {}
            busy = _retry_after(data)
            if busy is not None:  # refused for load, not for the event: keep it and come back
                return RetryLater(f"node busy ({err.get('code')}): {err.get('message') or 'retry later'}", busy)
            reason = data.get("reason") or err.get("message") or "refused"
            if data.get("field"):
                reason = f"{reason} (field {data['field']})"
            if err.get("code") in INVALID_CODES or err.get("code") == REJECTED or "reason" in data \
                    or "field" in data:
                return ValueError(f"{err.get('code')}: {reason}")
            return RetryLater(f"node error {err.get('code')}: {reason}")
        return RetryLater(f"node answered HTTP {status} without result or error")

    # -- the loop -----------------------------------------------------------------------------------
    def run_once(self) -> int:
        """Deliver everything pending; returns how many were handled. Raises RetryLater to back off.
        Returns -1 when another process holds the delivery lock."""
        if not self._acquire():
            return -1
        n = 0
        paths = self.spool.pending()
        for i in range(0, len(paths), BATCH):
            batch = []
            for path in paths[i:i + BATCH]:
                try:
                    record = self.spool.load(path)
                    batch.append((path, record, record["event"]))
                except FileNotFoundError:
                    continue
                except (ValueError, KeyError, TypeError) as exc:
                    self.spool.mark_dead(path, f"corrupt spool file: {exc}")
                    self.stats["dead"] += 1
                    n += 1
            if not batch:
                continue
            outcomes = self.submit_many([event for _, _, event in batch])
            retry = None
            for (path, record, event), outcome in zip(batch, outcomes, strict=True):
                if isinstance(outcome, RetryLater):
                    if retry is None or (outcome.retry_after or 0) > (retry.retry_after or 0):
                        retry = outcome
                elif isinstance(outcome, ValueError):
                    dead = self.spool.mark_dead(path, str(outcome), record)
                    log.warning("event %s refused by the node: %s (moved to %s)", event.get("event_id"),
                                outcome, dead)
                    self.stats["dead"] += 1
                    n += 1
                else:
                    self.spool.mark_delivered(path, event.get("event_id"), outcome)
                    self.stats["delivered"] += 1
                    n += 1
            if retry is not None:
                raise retry
        return n

    def run_forever(self, stop: threading.Event, *, idle_poll: float = 0.25, max_backoff: float = 5.0) -> None:
        """Until `stop` is set: deliver, wait for new events (or poll other processes' events), back off on
        errors. Meant for a thread (or trio.to_thread)."""
        backoff = 0.1
        try:
            while not stop.is_set():
                self.spool.wakeup.clear()
                try:
                    n = self.run_once()
                except RetryLater as exc:
                    self.stats["retries"] += 1
                    if self.last_error != str(exc):
                        log.warning("delivery paused, will retry: %s", exc)
                    self.last_error = str(exc)
                    stop.wait(_wait_for(exc, backoff))
                    if exc.retry_after is None:
                        backoff = min(backoff * 2, max_backoff)
                    continue
                except Exception as exc:  # noqa: BLE001 - see below
                    # A failure nobody foresaw in delivering must not end this loop: in the proxy it would
                    # abort every modality's association, while the events wait safely in the spool. Loud
                    # (traceback, counter, last_error in the proxy's status), then the same back-off.
                    log.exception("delivery failed unexpectedly, will retry")
                    self.stats["errors"] = self.stats.get("errors", 0) + 1
                    self.last_error = f"{type(exc).__name__}: {exc}"
                    if self._conn is not None:
                        self._conn.close()
                        self._conn = None
                    stop.wait(backoff)
                    backoff = min(backoff * 2, max_backoff)
                    continue
                backoff = 0.1
                self.last_error = None
                if n == -1:  # another process delivers; stand by
                    stop.wait(1.0)
                elif n == 0:
                    self.spool.wakeup.wait(idle_poll)
        finally:
            self.close()

    def drain(self, deadline: float) -> bool:
        """Deliver until the spool is empty or `deadline` (time.monotonic) passes; True when empty."""
        backoff = 0.1
        try:
            while time.monotonic() < deadline:
                try:
                    n = self.run_once()
                except RetryLater as exc:
                    self.last_error = str(exc)
                    time.sleep(min(_wait_for(exc, backoff), max(0.0, deadline - time.monotonic())))
                    if exc.retry_after is None:
                        backoff = min(backoff * 2, 2.0)
                    continue
                if n == -1:
                    return self.spool.count() == 0  # someone else delivers
                if self.spool.count() == 0:
                    return True
            return self.spool.count() == 0
        finally:
            self.close()


async def deliver_in_background(deliverer: Deliverer) -> None:
    """A trio task: runs the deliverer in a worker thread until cancelled."""
    import trio

    stop = threading.Event()
    try:
        await trio.to_thread.run_sync(deliverer.run_forever, stop, abandon_on_cancel=True)
    finally:
        stop.set()
        deliverer.spool.wakeup.set()
