"""Python SDK for RadChain's JSON-RPC API.

    from node.client import RadChainClient
    with RadChainClient("http://127.0.0.1:26601", token="...") as rc:
        answer = rc.submit_event({"type": "instances.accessed", "patient_id": "PAT-1", "issuer": "HOSP-A",
                                  "study_uid": "1.2.840.1", "actor": "dr.smith", "purpose": "TREAT"})
        print(rc.get_tx(answer["tx"]))

Every failure the node reports arrives as RpcCallError with the JSON-RPC code and message.
"""

from __future__ import annotations

import itertools

import httpx


class RpcCallError(Exception):
    def __init__(self, code: int, message: str, data=None):
        super().__init__(f"{message} (code {code})")
        self.code = code
        self.message = message
        self.data = data


class RadChainClient:
    def __init__(self, url: str, token: str | None = None, timeout: float = 30.0):
        self.url = url
        headers = {"Authorization": f"Bearer {token}"} if token else {}
        self._http = httpx.Client(headers=headers, timeout=timeout)
        self._ids = itertools.count(1)

    def __enter__(self) -> RadChainClient:
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def close(self) -> None:
        self._http.close()

    def call(self, method: str, params: dict | None = None):
        reply = self._http.post(self.url, json={"jsonrpc": "2.0", "id": next(self._ids), "method": method,
                                                "params": params or {}})
        reply.raise_for_status()
        body = reply.json()
        if "error" in body:
            err = body["error"]
            raise RpcCallError(err.get("code", 0), err.get("message", ""), err.get("data"))
        return body["result"]

    def batch(self, calls: list[tuple[str, dict]]) -> list:
        """Several calls in one HTTP request; results (or RpcCallError instances) in call order."""
        first = next(self._ids)
        ids = list(range(first, first + len(calls)))
        self._ids = itertools.count(first + len(calls))
        reply = self._http.post(self.url, json=[{"jsonrpc": "2.0", "id": i, "method": m, "params": p}
                                                for i, (m, p) in zip(ids, calls, strict=True)])
        reply.raise_for_status()
        by_id = {item.get("id"): item for item in reply.json()}
        out = []
        for i in ids:
            item = by_id.get(i, {"error": {"code": 0, "message": "no answer for this call"}})
            if "error" in item:
                err = item["error"]
                out.append(RpcCallError(err.get("code", 0), err.get("message", ""), err.get("data")))
            else:
                out.append(item["result"])
        return out

    # ------------------------------------------------------------------ methods
    def status(self) -> dict:
        return self.call("status")

    def submit_event(self, event: dict, mode: str | None = None, timeout: float | None = None) -> dict:
        params: dict = {"event": event}
        if mode is not None:
            params["mode"] = mode
        if timeout is not None:
            params["timeout"] = timeout
        return self.call("submit_event", params)

    def submit_tx(self, tx_hex: str, mode: str = "async", timeout: float | None = None) -> dict:
        params: dict = {"tx": tx_hex, "mode": mode}
        if timeout is not None:
            params["timeout"] = timeout
        return self.call("submit_tx", params)

    def get_tx(self, tx_hash: str) -> dict:
        return self.call("get_tx", {"hash": tx_hash})

    def get_block(self, height: int | None = None) -> dict:
        return self.call("get_block", {} if height is None else {"height": height})

    def blocks(self, start: int, end: int) -> list:
        return self.call("blocks", {"from": start, "to": end})

    def audit_trail(self, **filters) -> dict:
        return self.call("audit_trail", filters)

    def validators(self) -> list:
        return self.call("validators")

    def peers(self) -> list:
        return self.call("peers")

    def mempool(self) -> dict:
        return self.call("mempool")
