"""The explorer's multipart parser against the bodies an unauthenticated client can send to /explorer/login."""

from __future__ import annotations

import time

import pytest

from node.explorer.app import FormError, _parse_multipart

CTYPE = "multipart/form-data; boundary=x"


def test_a_normal_form_parses():
    body = (b'--x\r\nContent-Disposition: form-data; name="token"\r\n\r\nabc\r\n'
            b'--x\r\nContent-Disposition: form-data; name="file"; filename="r.json"\r\n\r\n{"a": 1}\r\n--x--\r\n')
    assert _parse_multipart(CTYPE, body) == {"token": b"abc", "file": b'{"a": 1}'}


def test_thousands_of_empty_parts_are_refused_before_parsing():
    body = b"--x\r\n\r\n\r\n" * 27_000 + b"--x--\r\n"  # 243 KB: took 1.16 s of the event loop before
    t0 = time.monotonic()
    with pytest.raises(FormError, match="too many form fields"):
        _parse_multipart(CTYPE, body)
    assert time.monotonic() - t0 < 0.1


def test_deeply_nested_multipart_is_a_form_error_not_a_500():
    body = b""
    for depth in range(2000, 0, -1):  # each level a multipart/mixed part holding the next
        inner = body or b"x"
        body = (f"--b{depth}\r\nContent-Type: multipart/mixed; boundary=b{depth + 1}\r\n\r\n".encode() + inner
                + f"\r\n--b{depth}--\r\n".encode())
    with pytest.raises(FormError):
        _parse_multipart("multipart/form-data; boundary=b1", body)


@pytest.mark.parametrize("ctype", ["multipart/form-data", "multipart/form-data; boundary=" + "y" * 71])
def test_missing_or_overlong_boundary_is_refused(ctype):
    with pytest.raises(FormError):
        _parse_multipart(ctype, b"--y\r\n\r\n\r\n--y--\r\n")

