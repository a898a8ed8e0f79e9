"""JSON-RPC error codes. -326xx are the spec's; -320xx are RadChain's own, stable for integrators."""

from __future__ import annotations

PARSE_ERROR = -32700
INVALID_REQUEST = -32600
METHOD_NOT_FOUND = -32601
INVALID_PARAMS = -32602
INTERNAL_ERROR = -32603
UNAUTHORIZED = -32001
NOT_FOUND = -32002
REJECTED = -32003
MEMPOOL_FULL = -32004
RATE_LIMITED = -32005
TOO_LARGE = -32006
TIMEOUT = -32007
# Consortium pseudonyms (threshold OPRF) cannot be computed now: fewer than t members answered validly.
PSEUDONYM_UNAVAILABLE = -32008


class RpcError(Exception):
    def __init__(self, code: int, message: str, data=None):
        super().__init__(message)
        self.code = code
        self.message = message
        self.data = data

    def to_json(self) -> dict:
        err = {"code": self.code, "message": self.message}
        if self.data is not None:
            err["data"] = self.data
        return err
