"""Log set-up: plain lines for a terminal, or one JSON object per line for a log pipeline.

Under ``serve --workers N`` every worker writes to the same stderr, so each of its lines carries
its index (``worker 1`` in a plain line, ``"worker": 1`` in a JSON one).
"""

from __future__ import annotations

import json
import logging
import sys
import time

_RESERVED = set(logging.LogRecord("", 0, "", 0, "", (), None).__dict__) | {"message", "asctime"}
PLAIN = "%(asctime)s %(levelname)s %(name)s: %(message)s"


class JsonFormatter(logging.Formatter):
    """Every record as JSON, with the ``extra={...}`` fields a call site attached."""

    def format(self, record: logging.LogRecord) -> str:
        entry = {
            "ts": time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(record.created)) + f".{int(record.msecs):03d}Z",
            "level": record.levelname,
            "logger": record.name,
            "msg": record.getMessage(),
        }
        entry.update({k: v for k, v in record.__dict__.items() if k not in _RESERVED})
        if record.exc_info:
            entry["exc"] = self.formatException(record.exc_info)
        return json.dumps(entry, default=str)


class WorkerTag(logging.Filter):
    """Stamps every record with the index of the worker process that wrote it."""

    def __init__(self, index: int) -> None:
        super().__init__()
        self.index = index

    def filter(self, record: logging.LogRecord) -> bool:
        record.worker = self.index
        return True


def configure(level: str, as_json: bool, *, worker: int | None = None) -> None:
    """Logs to stderr at ``level``; ``worker`` (the index under ``serve --workers``) tags every line."""
    handler = logging.StreamHandler(sys.stderr)
    plain = PLAIN if worker is None else PLAIN.replace("%(name)s", "worker %(worker)s %(name)s")
    handler.setFormatter(JsonFormatter() if as_json else logging.Formatter(plain))
    if worker is not None:
        handler.addFilter(WorkerTag(worker))
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level.upper())
