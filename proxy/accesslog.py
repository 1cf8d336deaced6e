"""The access log: one line per request, written in batches.

Every answered request gets one line on the ``kstats.access`` logger, in
the format of the other log lines (JSON or text, see :mod:`proxy.log`).
The standard ``logging`` machinery costs more per line than the whole
event rewrite, and one ``write`` per line costs a system call per
request, so access lines are built here directly and written together:
at most ``flush_after`` seconds after the first line of a batch, as soon
as ``max_buffered`` bytes are waiting, and when the proxy stops. Lines of
other loggers are written at once, so an access line may appear up to
``flush_after`` seconds after a line logged later; each carries its own
time.

Whether lines are written at all follows the ``kstats.access`` logger's
level when the log is made: ``--log-level warning`` turns them off.
"""

from __future__ import annotations

import asyncio
import itertools
import logging
import re
import secrets
import sys
import time
from collections.abc import Mapping
from typing import Any, BinaryIO, Final

import orjson

from proxy.log import LogStyle, current_style, json_time, text_time

ACCESS_LOGGER: Final = "kstats.access"
# a request id a front end set, taken as it is when it looks like one
_GIVEN_ID: Final = re.compile(r"[A-Za-z0-9._:-]{1,64}")


class RequestIds:
    """The id of each request's access line.

    A front end's ``X-Request-Id`` is kept when it looks like an id, so a
    request can be followed through both logs; otherwise the proxy makes
    one: a random prefix per process and a counter, unique within a run.
    """

    def __init__(self) -> None:
        self._prefix = secrets.token_hex(4)
        self._counter = itertools.count(1)

    def take(self, headers: Mapping[str, str]) -> str:
        given = headers.get("X-Request-Id")
        if given is not None and _GIVEN_ID.fullmatch(given):
            return given
        return f"{self._prefix}-{next(self._counter):x}"


class AccessLog:
    """Buffers access lines and writes them to ``stream`` in batches."""

    def __init__(
        self,
        stream: BinaryIO,
        *,
        style: LogStyle = LogStyle.JSON,
        enabled: bool = True,
        flush_after: float = 0.2,
        max_buffered: int = 64 * 1024,
    ) -> None:
        self.enabled = enabled
        self._stream = stream
        self._json = style is LogStyle.JSON
        self._flush_after = flush_after
        self._max_buffered = max_buffered
        self._lines: list[bytes] = []
        self._buffered = 0
        self._timer: asyncio.TimerHandle | None = None

    @classmethod
    def from_logging(cls) -> AccessLog:
        """An access log to standard error, as :mod:`proxy.log` was set up."""
        enabled = logging.getLogger(ACCESS_LOGGER).isEnabledFor(logging.INFO)
        return cls(sys.stderr.buffer, style=current_style(), enabled=enabled)

    def write(self, message: str, fields: dict[str, Any]) -> None:
        """Queue one line: ``message`` and its structured ``fields``."""
        if not self.enabled:
            return
        now = time.time()
        if self._json:
            line = {
                "time": json_time(now),
                "level": "info",
                "logger": ACCESS_LOGGER,
                "message": message,
                **fields,
            }
            data = orjson.dumps(line, default=str, option=orjson.OPT_APPEND_NEWLINE)
        else:
            pairs = " ".join(f"{key}={value}" for key, value in fields.items())
            text = f"{text_time(now)} INFO {ACCESS_LOGGER}: {message} {pairs}\n"
            data = text.encode("utf-8", "backslashreplace")
        self._lines.append(data)
        self._buffered += len(data)

        # write now when the batch is big, or make sure it is written soon
        if self._buffered >= self._max_buffered:
            self.flush()
        elif self._timer is None:
            self._schedule_flush()

    def flush(self) -> None:
        """Write every queued line now."""
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        if not self._lines:
            return
        data = b"".join(self._lines)
        self._lines.clear()
        self._buffered = 0
        try:
            self._stream.write(data)
            self._stream.flush()
        except (OSError, ValueError):
            # a closed or broken standard error must not stop the proxy;
            # the lines are lost, and so would any other log line be
            pass

    def _schedule_flush(self) -> None:
        try:
            loop = asyncio.get_running_loop()
        except RuntimeError:
            self.flush()  # no loop to wait on: write at once
            return
        self._timer = loop.call_later(self._flush_after, self.flush)
