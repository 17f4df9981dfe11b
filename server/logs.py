"""Logging for the brand node and the CLI: readable on a terminal, JSON lines elsewhere.

``auto`` (the default) writes rich's human-readable lines when stderr is a
terminal and one JSON object per line otherwise (a file, a pipe, a log
collector); ``text`` and ``json`` force one or the other (``cleanroom
--log-format``, or ``CLEANROOM_LOG_FORMAT``).

Only messages the code writes reach the log: tokens, keys and identifiers
are never formatted into a message (tests/test_logs.py checks a whole
session's log for them).
"""

from __future__ import annotations

import json
import logging
import sys
from datetime import UTC, datetime
from typing import Literal, TextIO

from rich.console import Console
from rich.logging import RichHandler

LogFormat = Literal["auto", "text", "json"]
LOG_FORMATS: tuple[LogFormat, ...] = ("auto", "text", "json")


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


class _Choice:
    """The format the command line chose, for every later ``configure`` of the process."""

    format: LogFormat = "auto"


def handler_for(fmt: LogFormat, stream: TextIO) -> logging.Handler:
    """A handler writing ``fmt`` to ``stream`` (``auto``: text on a terminal, else JSON)."""
    if fmt == "auto":
        fmt = "text" if stream.isatty() else "json"
    if fmt == "text":
        console = Console(file=stream, stderr=stream is sys.stderr)
        return RichHandler(
            console=console, show_path=False, log_time_format="%H:%M:%S", markup=False
        )
    handler = logging.StreamHandler(stream)
    handler.setFormatter(JsonFormatter())
    return handler


def configure(
    level: int = logging.WARNING, fmt: LogFormat | None = None, stream: TextIO | None = None
) -> None:
    """Log ``cleanroom.*`` at ``level`` and others at WARNING, to stderr by default.

    ``fmt`` None keeps the format chosen last (``cleanroom --log-format``).
    """
    if fmt is not None:
        if fmt not in LOG_FORMATS:
            raise ValueError(f"log format is one of {', '.join(LOG_FORMATS)}, not {fmt!r}")
        _Choice.format = fmt
    root = logging.getLogger()
    root.handlers[:] = [handler_for(_Choice.format, stream or sys.stderr)]
    root.setLevel(logging.WARNING)
    logging.getLogger("cleanroom").setLevel(level)
