"""The explorer: server-rendered pages for privacy officers, auditors and operators, on every node.

Mounted at /explorer by node.rpc.server.JsonRpcApp, so it sits behind the same edge (Host and Origin checks,
connection caps) as the JSON-RPC. Everything it shows needs a token with the read role, given once in the
login form (kept in a cookie signed with a key this process draws at start, so a restart logs everybody out)
or as ``Authorization: Bearer`` (the operator's tools). The token is looked up again on every request, so a
token removed with ``radchain token`` stops working at once, cookie or not.

CSRF: every POST must carry an Origin (or, failing that, a Referer) naming this node itself; the cookie is
SameSite=Strict and HttpOnly. The edge lets a same-origin Origin through only under /explorer. Pages send a
Content-Security-Policy without script-src: there is no JavaScript at all.

Raw identifiers (Study Instance UID, Patient ID + issuer) typed by the viewer travel in POST bodies, never in
URLs (which end up in logs and browser history); they are tokenized by the consortium's threshold OPRF
(node.tokenizer) and not kept. Pages show the tokens, labelled as pseudonyms, and echo only what the viewer typed.
"""

from __future__ import annotations

import base64
import email.message
import email.parser
import email.policy
import hashlib
import hmac
import json
import logging
import os
import re
import time
from functools import partial
from pathlib import Path
from urllib.parse import parse_qs, urlsplit

import jinja2
import trio
from markupsafe import Markup
from starlette.applications import Starlette
from starlette.requests import ClientDisconnect, Request
from starlette.responses import HTMLResponse, RedirectResponse, Response
from starlette.routing import Route

from node.explorer import PREFIX, data
from node.explorer.svg import grouped_bars
from node.ledger.pseudonym import PseudonymError, TokenizeError
from node.rpc.auth import READ, token_hash
from node.rpc.errors import RpcError

log = logging.getLogger("radchain.explorer")

COOKIE = "radchain_explorer"
SESSION_SECONDS = 8 * 3600
MAX_FORM_BYTES = data.MAX_RECEIPT_BYTES + 16 * 1024
MAX_FORM_FIELDS = 8
MAX_INPUT_CHARS = 256  # a UID is at most 64 characters, a patient id 64, an issuer 64
BLOCKS_PER_PAGE = 20
TXS_PER_PAGE = 100
AUDIT_PAGE = 100
REFRESH_SECONDS = 5
_UID = re.compile(r"[0-9]+(\.[0-9]+)*")  # PS3.5 9.1, length checked apart

_HERE = Path(__file__).parent
_CSS = (_HERE / "static" / "explorer.css").read_bytes()
_HEADERS = {
    # No script at all; styles and images only from this node; forms only post here; no framing.
    "Content-Security-Policy": "default-src 'none'; style-src 'self'; img-src 'self' data:; "
                               "form-action 'self'; frame-ancestors 'none'; base-uri 'none'",
    "X-Frame-Options": "DENY",
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "same-origin",
    "Cache-Control": "no-store",
}



def _parse_multipart(ctype: str, body: bytes) -> dict[str, bytes]:
    """{field: bytes} of a multipart/form-data body of at most MAX_FORM_FIELDS flat parts, or FormError."""
    header = email.message.Message()
    header["Content-Type"] = ctype
    boundary = header.get_param("boundary")
    if not isinstance(boundary, str) or not 1 <= len(boundary) <= 70:  # RFC 2046 §5.1.1
        raise FormError("unreadable multipart form")
    if body.count(b"--" + boundary.encode("latin-1")) > MAX_FORM_FIELDS + 1:
        raise FormError("too many form fields")
    try:
        msg = email.parser.BytesParser(policy=email.policy.HTTP).parsebytes(
            b"Content-Type: " + ctype.encode("latin-1") + b"\r\n\r\n" + body)
        if not msg.is_multipart():
            raise FormError("unreadable multipart form")
        out: dict[str, bytes] = {}
        for part in msg.iter_parts():
            if part.is_multipart():
                raise FormError("nested multipart parts are not accepted")
            name = part.get_param("name", header="content-disposition")
            payload = part.get_payload(decode=True)
            if isinstance(name, str) and isinstance(payload, bytes) and name not in out:
                out[name] = payload
    except RecursionError:
        raise FormError("unreadable multipart form: nested too deeply") from None
    return out

class FormError(ValueError):
    """A POST body the explorer does not accept (too large, too many fields, wrong encoding). ``unread``:
    the rest of the body was never read, so the answer must end the connection (as the RPC does)."""

    def __init__(self, message: str, unread: bool = False):
        super().__init__(message)
        self.unread = unread


class Explorer:
    def __init__(self, rpc):
        self.rpc = rpc  # node.rpc.server.JsonRpcApp: its node, token store, limiter and edge settings
        self.chart_limiter = trio.CapacityLimiter(1)
        self.peer_heights = data.PeerHeights()
        self.key = os.urandom(32)  # signs session cookies; per process on purpose (see module docstring)
        self.env = jinja2.Environment(loader=jinja2.FileSystemLoader(_HERE / "templates"),
                                      autoescape=True)  # optional tx fields render empty
        self.env.filters["when"] = data.fmt_time
        self.env.filters["ago"] = data.ago
        routes = [
            Route("/", self.index, methods=["GET"]),
            Route("/static/explorer.css", self.css, methods=["GET"]),
            Route("/login", self.login, methods=["GET", "POST"]),
            Route("/logout", self.logout, methods=["POST"]),
            Route("/consortium", self.consortium, methods=["GET"]),
            Route("/chain", self.chain, methods=["GET"]),
            Route("/find", self.find, methods=["POST"]),
            Route("/block/{height:int}", self.block, methods=["GET"]),
            Route("/tx/{hash}", self.tx, methods=["GET"]),
            Route("/study", self.study, methods=["GET", "POST"]),
            Route("/patient", self.patient, methods=["GET", "POST"]),
            Route("/research", self.research, methods=["GET"]),
            Route("/utilization", self.utilization, methods=["GET"]),
            Route("/receipt", self.receipt, methods=["GET", "POST"]),
        ]
        self.app = Starlette(routes=routes)

    # ------------------------------------------------------------------ sessions
    def _sign(self, payload: bytes) -> str:
        return hmac.new(self.key, payload, hashlib.sha256).hexdigest()

    def make_cookie(self, token: str) -> str:
        payload = base64.urlsafe_b64encode(json.dumps(
            {"h": token_hash(token), "e": int(time.time()) + SESSION_SECONDS}).encode()).decode()
        return f"{payload}.{self._sign(payload.encode())}"

    def cookie_token_hash(self, value: str | None) -> bytes | None:
        """The token's SHA-256 a valid, unexpired session cookie holds (never the token itself: a copied
        cookie must not work as a bearer token against the JSON-RPC)."""
        if not value or len(value) > 1024 or "." not in value:
            return None
        payload, sig = value.rsplit(".", 1)
        if not hmac.compare_digest(sig, self._sign(payload.encode())):
            return None
        try:
            doc = json.loads(base64.urlsafe_b64decode(payload.encode()))
            digest, expires = bytes.fromhex(doc["h"]), doc["e"]
        except (ValueError, KeyError, TypeError, AttributeError):
            return None
        if len(digest) != 32 or type(expires) is not int or expires < time.time():
            return None
        return digest

    def viewer(self, request: Request) -> str | None:
        """The name of the read token this request carries (bearer header or session cookie), or None."""
        header = request.headers.get("authorization", "")
        if header.lower().startswith("bearer "):
            grant = self.rpc.tokens.lookup(header[7:].strip())
        else:
            digest = self.cookie_token_hash(request.cookies.get(COOKIE))
            grant = self.rpc.tokens.lookup_digest(digest) if digest is not None else None
        return grant.name if grant is not None and READ in grant.roles else None

    # ------------------------------------------------------------------ CSRF and forms
    def same_origin(self, request: Request) -> bool:
        """A POST must say where it comes from, and that must be this node (or a configured origin)."""
        source = request.headers.get("origin")
        if source is None or source == "null":
            referer = request.headers.get("referer")
            if not referer:
                return False
            parts = urlsplit(referer)
            source = f"{parts.scheme}://{parts.netloc}"
        source = source.strip().lower().rstrip("/")
        own = f"{request.url.scheme}://{request.headers.get('host', '')}".lower()
        allowed = {o.lower().rstrip("/") for o in self.rpc.edge.allowed_origins}
        return source == own or source in allowed

    async def form(self, request: Request) -> dict[str, bytes]:
        """The POST body as {field: bytes}: urlencoded or multipart, bounded in size and field count."""
        try:
            body = await self.rpc._read_body(request)  # size cap and whole-body deadline of the RPC edge
        except RpcError as exc:
            raise FormError(exc.message, unread=True) from None
        except ClientDisconnect:
            raise FormError("client went away", unread=True) from None
        if len(body) > MAX_FORM_BYTES:
            raise FormError(f"form over {MAX_FORM_BYTES // 1024} KiB")
        ctype = request.headers.get("content-type", "")
        if ctype.startswith("application/x-www-form-urlencoded"):
            try:
                parsed = parse_qs(body.decode("utf-8"), keep_blank_values=True,
                                  max_num_fields=MAX_FORM_FIELDS)
            except (UnicodeDecodeError, ValueError) as exc:
                raise FormError(f"unreadable form: {exc.__class__.__name__}") from None
            return {k: v[0].encode() for k, v in parsed.items()}
        if ctype.startswith("multipart/form-data"):
            if len(ctype) > 200:
                raise FormError("content-type too long")
            # The stdlib parser is pure Python and recursive: a worker thread keeps the node's event loop
            # (consensus included) running while it works, and the part count is bounded before it starts.
            return await trio.to_thread.run_sync(_parse_multipart, ctype, body)
        raise FormError("forms must be application/x-www-form-urlencoded or multipart/form-data")

    # ------------------------------------------------------------------ rendering
    def page(self, template: str, request: Request, code: int = 200, **ctx) -> Response:
        html = self.env.get_template(template).render(
            prefix=PREFIX, viewer=ctx.pop("viewer", None), node=self.rpc.node.cfg.name
            if hasattr(self.rpc.node, "cfg") else "", refresh=ctx.pop("refresh", None), **ctx)
        return HTMLResponse(html, status_code=code, headers=_HEADERS)

    def bad_form(self, template: str, request: Request, exc: FormError, **ctx) -> Response:
        response = self.page(template, request, 413 if exc.unread else 400, **ctx)
        if exc.unread:
            response.headers["Connection"] = "close"  # the rest of the body is never read
        return response

    def refuse(self, request: Request, why: str, code: int = 403) -> Response:
        return self.page("message.html", request, code, title="Refused", message=why)

    async def gate(self, request: Request) -> tuple[str | None, Response | None]:
        """(viewer, None) to go on, or (None, the answer): rate limit, CSRF, then the read token."""
        address = self.rpc.address(request.client.host if request.client else "?", request.headers)
        if not self.rpc.limiter.allow(address):
            return None, Response("rate limit exceeded; slow down and retry\n", 429, {"Retry-After": "1"})
        if request.method == "POST" and not self.same_origin(request):
            return None, self.refuse(request, "This form did not come from this node's explorer "
                                              "(missing or foreign Origin): refused.")
        name = self.viewer(request)
        if name is None:
            if request.method == "GET":
                return None, RedirectResponse(f"{PREFIX}/login", 303, headers=_HEADERS)
            return None, self.refuse(request, "Log in with a read token first.", 401)
        return name, None

    # ------------------------------------------------------------------ routes
    async def css(self, request: Request) -> Response:
        return Response(_CSS, media_type="text/css", headers={"Cache-Control": "max-age=3600"})

    async def index(self, request: Request) -> Response:
        return RedirectResponse(f"{PREFIX}/consortium", 303)

    async def login(self, request: Request) -> Response:
        if request.method == "GET":
            return self.page("login.html", request, error=None)
        address = self.rpc.address(request.client.host if request.client else "?", request.headers)
        if not self.rpc.limiter.allow(address, 10):  # a guess costs ten requests' worth
            return Response("rate limit exceeded; slow down and retry\n", 429, {"Retry-After": "1"})
        if not self.same_origin(request):
            return self.refuse(request, "This form did not come from this node's explorer "
                                        "(missing or foreign Origin): refused.")
        try:
            form = await self.form(request)
            token = form.get("token", b"").decode("utf-8").strip()
        except FormError as exc:
            return self.bad_form("login.html", request, exc, error=str(exc))
        except UnicodeDecodeError as exc:
            return self.page("login.html", request, 400, error=str(exc))
        grant = self.rpc.tokens.lookup(token) if 0 < len(token) <= MAX_INPUT_CHARS else None
        if grant is None or READ not in grant.roles:
            return self.page("login.html", request, 401,
                             error="This token is not accepted here (unknown, or without the read role).")
        response = RedirectResponse(f"{PREFIX}/consortium", 303, headers=_HEADERS)
        response.set_cookie(COOKIE, self.make_cookie(token), max_age=SESSION_SECONDS, path=PREFIX,
                            httponly=True, samesite="strict", secure=request.url.scheme == "https")
        return response

    async def logout(self, request: Request) -> Response:
        if not self.same_origin(request):
            return self.refuse(request, "Foreign Origin: refused.")
        response = RedirectResponse(f"{PREFIX}/login", 303, headers=_HEADERS)
        response.delete_cookie(COOKIE, path=PREFIX)
        return response

    async def consortium(self, request: Request) -> Response:
        viewer, stop = await self.gate(request)
        if stop:
            return stop
        info = await data.consortium(self.rpc.node, self.peer_heights)
        return self.page("consortium.html", request, viewer=viewer, refresh=REFRESH_SECONDS, **info)

    async def chain(self, request: Request) -> Response:
        viewer, stop = await self.gate(request)
        if stop:
            return stop
        store = self.rpc.node.store
        try:
            top = int(request.query_params.get("top", store.height))
        except ValueError:
            top = store.height
        top = max(0, min(top, store.height))
        rows = data.block_rows(store, top, BLOCKS_PER_PAGE) if top else []
        older = top - BLOCKS_PER_PAGE if top > BLOCKS_PER_PAGE else None
        newer = min(store.height, top + BLOCKS_PER_PAGE) if top < store.height else None
        return self.page("chain.html", request, viewer=viewer, rows=rows, height=store.height, older=older,
                         newer=newer)

    async def block(self, request: Request) -> Response:
        viewer, stop = await self.gate(request)
        if stop:
            return stop
        height = request.path_params["height"]
        try:
            first = max(0, int(request.query_params.get("from", "0")[:9]))
        except ValueError:
            first = 0
        detail = data.block_detail(self.rpc.node, height, first, TXS_PER_PAGE) \
            if 0 < height <= self.rpc.node.store.height else None
        if detail is None:
            return self.page("message.html", request, 404, viewer=viewer, title="No such block",
                             message=f"This node has no block at height {height}.")
        return self.page("block.html", request, viewer=viewer, **detail)

    async def tx(self, request: Request) -> Response:
        viewer, stop = await self.gate(request)
        if stop:
            return stop
        text = request.path_params["hash"]
        try:
            h = bytes.fromhex(text) if len(text) == 64 else b""
        except ValueError:
            h = b""
        detail = data.tx_detail(self.rpc.node, h) if len(h) == 32 else None
        if detail is None and len(h) == 32 and self.rpc.node.mempool.get(h) is not None:
            return self.page("message.html", request, 404, viewer=viewer, title="Pending transaction",
                             message="This transaction is waiting in this node's mempool: it is not in a block "
                                     "yet, so it has no receipt. Reload in a few seconds.")
        if detail is None:
            return self.page("message.html", request, 404, viewer=viewer, title="No such transaction",
                             message="This node has no committed transaction with that hash.")
        return self.page("tx.html", request, viewer=viewer, **detail)

    async def find(self, request: Request) -> Response:
        """The chain page's search box: a block height or a tx hash (neither is an identifier of anyone)."""
        viewer, stop = await self.gate(request)
        if stop:
            return stop
        try:  # POST, so that a UID pasted here by mistake stays out of URLs and logs
            q = (await self.form(request)).get("q", b"").decode("utf-8").strip().lower()[:80]
        except (FormError, UnicodeDecodeError):
            q = ""
        if q.isdigit() and 0 < int(q) <= self.rpc.node.store.height:
            return RedirectResponse(f"{PREFIX}/block/{int(q)}", 303, headers=_HEADERS)
        if len(q) == 64 and all(c in "0123456789abcdef" for c in q):
            return RedirectResponse(f"{PREFIX}/tx/{q}", 303, headers=_HEADERS)
        return self.page("message.html", request, 404, viewer=viewer, title="Not found",
                         message="Give a block height of this chain or a transaction hash (64 hex digits). "
                                 "To find a study or a patient, use the Study timeline or Patient pages.")

    async def _search(self, request: Request, template: str, names: tuple[str, ...], tokenize) -> Response:
        """Study or patient search: raw input from the form -> token -> the audit trail page."""
        viewer, stop = await self.gate(request)
        if stop:
            return stop
        if request.method == "GET":
            return self.page(template, request, viewer=viewer, given={}, token=None, result=None, error=None,
                             note=None)
        try:
            form = await self.form(request)
            given = {n: form.get(n, b"").decode("utf-8").strip() for n in names}
            cursor = form.get("cursor", b"").decode("ascii").strip() or None
        except (FormError, UnicodeDecodeError) as exc:
            if isinstance(exc, FormError):
                return self.bad_form(template, request, exc, viewer=viewer, given={}, token=None, result=None,
                                     error=f"unreadable form: {exc}", note=None)
            return self.page(template, request, 400, viewer=viewer, given={}, token=None, result=None,
                             error=f"unreadable form: {exc}", note=None)
        error = None
        if any(len(v) > MAX_INPUT_CHARS for v in given.values()):
            error = f"each field is at most {MAX_INPUT_CHARS} characters"
        elif not all(given.values()):
            error = "fill in every field"
        token = None
        result = None
        if error is None:
            try:
                token = await tokenize(*given.values())
            except (PseudonymError, TokenizeError) as exc:
                error = str(exc)
        if token is not None:
            if cursor is not None and (len(cursor) > 64 or any(c not in "0123456789abcdef" for c in cursor)):
                cursor = None
            field = "study" if "uid" in names else "patient"
            try:
                result = data.audit_page(self.rpc.node, {field: token}, cursor, AUDIT_PAGE)
            except RpcError as exc:
                error = str(exc)
        note = None
        if token is not None and "uid" in given and not (len(given["uid"]) <= 64 and _UID.fullmatch(given["uid"])):
            # Tokenized as typed all the same: a PACS may have recorded a non-conformant UID that way.
            note = "This is not a well-formed DICOM UID (digits and dots, at most 64 characters); searched as typed."
        return self.page(template, request, 400 if error else 200, viewer=viewer, given=given,
                         token=token.hex() if token else None, result=result, error=error, note=note)

    async def study(self, request: Request) -> Response:
        return await self._search(request, "study.html", ("uid",), partial(self.rpc.node.tokenizer.token, "study"))

    async def patient(self, request: Request) -> Response:
        return await self._search(request, "patient.html", ("patient_id", "issuer"),
                                  partial(self.rpc.node.tokenizer.token, "patient"))

    async def research(self, request: Request) -> Response:
        viewer, stop = await self.gate(request)
        if stop:
            return stop
        return self.page("research.html", request, viewer=viewer, consents=data.consents(self.rpc.node))

    async def utilization(self, request: Request) -> Response:
        viewer, stop = await self.gate(request)
        if stop:
            return stop
        # One chart computed at a time, off the event loop: a big chain must not stall consensus.
        u = await trio.to_thread.run_sync(data.utilization, self.rpc.node, limiter=self.chart_limiter)
        chart = Markup(grouped_bars(u["series"], u["edges"])) if u["total"] else None  # escaped in svg.py
        return self.page("utilization.html", request, viewer=viewer, chart=chart, **u)

    async def receipt(self, request: Request) -> Response:
        viewer, stop = await self.gate(request)
        if stop:
            return stop
        if request.method == "GET":
            return self.page("receipt.html", request, viewer=viewer, result=None)
        try:
            form = await self.form(request)
        except FormError as exc:
            return self.bad_form("receipt.html", request, exc, viewer=viewer,
                                 result={"valid": False, "reason": str(exc)})
        raw = form.get("file") or form.get("receipt") or b""
        result = data.check_receipt_text(self.rpc.node, raw)
        return self.page("receipt.html", request, viewer=viewer, result=result)

