"""Run a command with its stdout and stderr on a pseudo-terminal (what a person at a terminal sees)."""

from __future__ import annotations

import fcntl
import os
import pty
import struct
import subprocess
import termios
import time


def run_on_pty(argv: list[str], timeout: float = 90.0, env: dict | None = None) -> tuple[int, str]:
    """(exit code, everything written to the terminal). stdin is /dev/null: nothing waits for input."""
    master, slave = pty.openpty()
    # a fresh pty is 0 x 0; a terminal someone looks at has a size (rows, columns)
    fcntl.ioctl(slave, termios.TIOCSWINSZ, struct.pack("HHHH", 40, 120, 0, 0))
    proc = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=slave, stderr=slave, close_fds=True,
                            env={**os.environ, "COLUMNS": "120", **(env or {})})
    os.close(slave)
    out = bytearray()
    deadline = time.monotonic() + timeout
    try:
        while True:
            if time.monotonic() > deadline:
                raise TimeoutError(f"{argv}: no EOF within {timeout} s; so far: {bytes(out)[-2000:]!r}")
            try:
                chunk = os.read(master, 65536)
            except OSError:  # EIO: every writer closed the terminal (Linux)
                break
            if not chunk:
                break
            out += chunk
        return proc.wait(timeout=max(1.0, deadline - time.monotonic())), out.decode("utf-8", "replace")
    finally:
        os.close(master)
        if proc.poll() is None:
            proc.kill()
            proc.wait()
