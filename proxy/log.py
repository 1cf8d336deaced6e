"""Logging: loggers per subsystem, JSON lines by default, text on request.

Loggers are named ``kstats.<subsystem>``: ``access`` (one line per
request), ``proxy``, ``rules``, ``upstream``, ``admin``. Structured fields
travel in a log call's ``extra={"fields": {...}}`` and become keys of the
JSON line. No user id, cookie value or KS is ever put in those fields.
"""

from __future__ import annotations

import logging
import sys
import time
from enum import Enum
from typing import Any

import orjson


class LogStyle(Enum):
    """How log lines are written: ``--log-format``."""

    JSON = "json"
    TEXT = "text"


_style = LogStyle.JSON


def current_style() -> LogStyle:
    """The style :func:`configure_logging` last set."""
    return _style


# time stamps change once a second: the formatted second is kept
_json_second: tuple[int, str] = (-1, "")
_text_second: tuple[int, str] = (-1, "")


def json_time(created: float) -> str:
    """``created`` as UTC ISO 8601 with milliseconds: 2026-12-03T12:00:00.123Z."""
    global _json_second
    second = int(created)
    if second != _json_second[0]:
        text = time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(second))
        _json_second = (second, text)
    return f"{_json_second[1]}.{int((created - second) * 1000):03d}Z"


def text_time(created: float) -> str:
    """``created`` in local time as logging's ``asctime`` writes it."""
    global _text_second
    second = int(created)
    if second != _text_second[0]:
        text = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(second))
        _text_second = (second, text)
    return f"{_text_second[1]},{int((created - second) * 1000):03d}"


class JsonFormatter(logging.Formatter):
    """One JSON object per line: time, level, logger, message, fields."""

    def format(self, record: logging.LogRecord) -> str:
        line: dict[str, Any] = {
            "time": json_time(record.created),
            "level": record.levelname.lower(),
            "logger": record.name,
            "message": record.getMessage(),
        }
        fields = getattr(record, "fields", None)
        if isinstance(fields, dict):
            line.update(fields)
        if record.exc_info:
            line["exception"] = self.formatException(record.exc_info)
        return orjson.dumps(line, default=str).decode()


class TextFormatter(logging.Formatter):
    """Human-readable lines, with the structured fields as ``key=value``."""

    def __init__(self) -> None:
        super().__init__("%(asctime)s %(levelname)s %(name)s: %(message)s")

    def format(self, record: logging.LogRecord) -> str:
        text = super().format(record)
        fields = getattr(record, "fields", None)
        if isinstance(fields, dict) and fields:
            text += " " + " ".join(f"{k}={v}" for k, v in fields.items())
        return text


def configure_logging(level: str = "info", log_format: str = "json") -> None:
    """Send every ``kstats`` and ``aiohttp`` logger to standard error.

    Access lines have a writer of their own (:mod:`proxy.accesslog`) that
    follows the level and format set here.
    """
    global _style
    _style = LogStyle(log_format)
    handler = logging.StreamHandler(sys.stderr)
    formatter = JsonFormatter() if _style is LogStyle.JSON else TextFormatter()
    handler.setFormatter(formatter)
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level.upper())
