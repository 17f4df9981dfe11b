"""Structured (JSON lines) logging for the brand node and the CLI.

Only messages the code writes reach the log: tokens, keys and identifiers
are never formatted into a message (tests/test_logs.py checks a whole
session's log for them).
"""

from __future__ import annotations

import json
import logging
from datetime import UTC, datetime


class JsonFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        data = {
            "time": datetime.fromtimestamp(record.created, UTC).isoformat(timespec="milliseconds"),
            "level": record.levelname,
            "logger": record.name,
            "msg": record.getMessage(),
        }
        if record.exc_info:
            data["exc"] = self.formatException(record.exc_info)
        return json.dumps(data)


def configure(level: int = logging.WARNING) -> None:
    """JSON lines on stderr; ``cleanroom.*`` at ``level``, others at WARNING."""
    handler = logging.StreamHandler()
    handler.setFormatter(JsonFormatter())
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(logging.WARNING)
    logging.getLogger("cleanroom").setLevel(level)
