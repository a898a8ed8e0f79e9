"""Structured logs: one JSON object per line on stderr, so operators can ship them to any collector."""

from __future__ import annotations

import json
import logging
import sys
import time


class JsonFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        entry = {
            "ts": time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(record.created)) + f".{int(record.msecs):03d}Z",
            "level": record.levelname.lower(),
            "logger": record.name,
            "msg": record.getMessage(),
        }
        fields = getattr(record, "fields", None)
        if fields:
            entry.update(fields)
        if record.exc_info:
            entry["exc"] = self.formatException(record.exc_info)
        return json.dumps(entry, default=str)


class _StderrHandler(logging.StreamHandler):
    """stderr (often a file: node.log) may sit on a full disk. A line that cannot be written is counted,
    not turned into a "Logging error" traceback that cannot be written either; the first line written
    again says how many were lost."""

    def __init__(self, stream):
        super().__init__(stream)
        self.lost = 0

    def emit(self, record: logging.LogRecord) -> None:
        try:
            line = self.format(record) + self.terminator
            if self.lost:
                line = json.dumps({"level": "warning", "logger": "radchain.logs",
                                   "msg": f"{self.lost} log lines lost: their disk was full"}) + "\n" + line
            self.stream.write(line)
            self.flush()
            self.lost = 0
        except OSError:
            self.lost += 1
        except Exception:
            self.handleError(record)


def setup_logging(level: str = "INFO", node: str | None = None) -> None:
    handler = _StderrHandler(sys.stderr)
    handler.setFormatter(JsonFormatter())
    if node:
        handler.addFilter(_NodeName(node))
    logging.basicConfig(level=getattr(logging, level, logging.INFO), handlers=[handler], force=True)
    # hypercorn's access log would print a line per RPC call; errors still show.
    logging.getLogger("hypercorn.access").setLevel(logging.WARNING)
    logging.getLogger("hypercorn.error").setLevel(logging.WARNING)


class _NodeName(logging.Filter):
    def __init__(self, node: str):
        super().__init__()
        self.node = node

    def filter(self, record: logging.LogRecord) -> bool:
        fields = getattr(record, "fields", None) or {}
        record.fields = {"node": self.node, **fields}
        return True
