"""The PACS is an input like any other: answers are size-capped while streamed, malformed ones are an
ExportError (the export stops, nothing is written), never a traceback or an unbounded allocation."""

from __future__ import annotations

import http.server
import json
import threading

import pytest

from node.research.export import MAX_JSON_BYTES, ExportError, Pacs


class _Hostile(http.server.BaseHTTPRequestHandler):
    routes: dict = {}

    def log_message(self, *a):
        pass

    def _answer(self):
        status, body = self.routes.get(self.path, (404, b"{}"))
        if callable(body):
            body = body()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.end_headers()
        if isinstance(body, (bytes, bytearray)):
            self.wfile.write(body)
        else:  # a generator: stream without Content-Length
            for chunk in body:
                try:
                    self.wfile.write(chunk)
                except (BrokenPipeError, ConnectionResetError):
                    return

    do_GET = _answer

    def do_POST(self):
        self.rfile.read(int(self.headers.get("Content-Length", 0)))
        self._answer()


@pytest.fixture
def pacs():
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _Hostile)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    p = Pacs(f"http://127.0.0.1:{server.server_address[1]}", timeout=10)
    yield p
    p.close()
    server.shutdown()
    server.server_close()


def test_an_endless_answer_is_cut_at_the_cap(pacs):
    def endless():
        chunk = b" " * (1 << 20)
        for _ in range(MAX_JSON_BYTES // len(chunk) + 8):
            yield chunk

    _Hostile.routes = {"/tools/find": (200, endless)}
    with pytest.raises(ExportError, match="answer over"):
        pacs.study_files("1.2.3")


@pytest.mark.parametrize("routes, message", [
    ({"/tools/find": (200, b"[1, 2")}, "not JSON"),
    ({"/tools/find": (200, b"[]")}, "not found"),
    ({"/tools/find": (200, b'["a", "b"]')}, "2 matches"),
    ({"/tools/find": (200, b'{"a": 1}')}, "matches"),
    ({"/tools/find": (500, b"{}")}, "HTTP 500"),
    ({"/tools/find": (200, b'["s1"]'), "/studies/s1/instances": (200, json.dumps([{"ID": "../../etc"}]).encode())},
     "malformed instance id"),
    ({"/tools/find": (200, b'["s1"]'), "/studies/s1/instances": (200, json.dumps([7]).encode())},
     "malformed instance id"),
    ({"/tools/find": (200, b'["s1"]'), "/studies/s1/instances": (200, json.dumps([{}] * 5001).encode())},
     "more than 5000 instances"),
])
def test_malformed_answers_stop_the_export(pacs, routes, message):
    _Hostile.routes = routes
    with pytest.raises(ExportError, match=message):
        pacs.study_files("1.2.3")
