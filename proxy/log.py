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
from collections.abc import Callable
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


class _Stamp:
    """Time stamps in one format; the formatted second is kept, as it changes
    once a second while lines come many times a second."""

    def __init__(
        self, form: str, convert: Callable[[float], time.struct_time], ms: str
    ) -> None:
        self._form = form
        self._convert = convert
        self._ms = ms  # how milliseconds follow: ".{:03d}Z" or ",{:03d}"
        self._second = (-1, "")

    def __call__(self, created: float) -> str:
        second = int(created)
        if second != self._second[0]:
            self._second = (second, time.strftime(self._form, self._convert(second)))
        return self._second[1] + self._ms.format(int((created - second) * 1000))


# ``created`` as UTC ISO 8601 with milliseconds: 2026-12-03T12:00:00.123Z
json_time = _Stamp("%Y-%m-%dT%H:%M:%S", time.gmtime, ".{:03d}Z")
# ``created`` in local time as logging's ``asctime`` writes it
text_time = _Stamp("%Y-%m-%d %H:%M:%S", time.localtime, ",{:03d}")


def error_gist(error: Exception) -> str:
    """An error's message up to the first quoted value, which may be personal
    (a target with its KS and userId): what logs say unless --log-sensitive."""
    return str(error).split(":", 1)[0]


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
