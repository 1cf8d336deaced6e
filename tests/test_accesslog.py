"""The access log's lines, its batches, and what it does when it cannot write."""

from __future__ import annotations

import asyncio
import io
import logging
import re

import orjson
import pytest

from proxy.accesslog import AccessLog
from proxy.log import JsonFormatter, LogStyle, TextFormatter

FIELDS = {"method": "GET", "kind": "stats", "status": 200, "rules": ["moodle"]}


def test_json_line_has_the_keys_of_every_other_log_line() -> None:
    stream = io.BytesIO()
    log = AccessLog(stream)

    log.write("GET stats 200", FIELDS)
    log.flush()

    line = orjson.loads(stream.getvalue())
    assert re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z", line.pop("time"))
    assert {
        "level": "info",
        "logger": "kstats.access",
        "message": "GET stats 200",
        **FIELDS,
    } == line


def test_json_line_matches_the_logging_formatter_but_for_the_time() -> None:
    stream = io.BytesIO()
    AccessLog(stream).write("GET stats 200", FIELDS)
    record = logging.LogRecord("kstats.access", logging.INFO, "", 0, "", None, None)
    record.msg = "GET stats 200"
    record.fields = FIELDS

    ours = orjson.loads(stream.getvalue())
    theirs = orjson.loads(JsonFormatter().format(record))
    ours.pop("time"), theirs.pop("time")
    assert theirs == ours


def test_text_line_reads_like_the_text_formatter() -> None:
    stream = io.BytesIO()
    log = AccessLog(stream, style=LogStyle.TEXT)

    log.write("GET stats 200", {"status": 200, "events": 1})
    log.flush()

    line = stream.getvalue().decode()
    pattern = r"\d{4}-\d\d-\d\d \d\d:\d\d:\d\d,\d{3} INFO kstats.access: "
    assert re.fullmatch(pattern + r"GET stats 200 status=200 events=1\n", line)
    record = logging.LogRecord("kstats.access", logging.INFO, "", 0, "GET", None, None)
    record.fields = {"status": 200}
    assert re.fullmatch(pattern + "GET status=200", TextFormatter().format(record))


async def test_lines_wait_for_the_batch_then_are_written_together() -> None:
    stream = io.BytesIO()
    log = AccessLog(stream, flush_after=0.05)

    for status in (200, 502):
        log.write(f"GET stats {status}", {"status": status})
    assert b"" == stream.getvalue()

    await asyncio.sleep(0.15)
    statuses = [orjson.loads(line)["status"] for line in stream.getvalue().splitlines()]
    assert [200, 502] == statuses


async def test_a_full_batch_is_written_before_its_time() -> None:
    stream = io.BytesIO()
    log = AccessLog(stream, flush_after=60, max_buffered=300)

    for number in range(10):
        log.write("GET stats 200", {"n": number})

    written = [orjson.loads(line)["n"] for line in stream.getvalue().splitlines()]
    assert written == list(range(len(written))) and 0 < len(written) < 10
    log.flush()
    assert 10 == len(stream.getvalue().splitlines())


def test_without_a_running_loop_each_line_is_written_at_once() -> None:
    stream = io.BytesIO()
    AccessLog(stream).write("GET stats 200", FIELDS)
    assert b'"message":"GET stats 200"' in stream.getvalue()


def test_a_disabled_log_writes_nothing() -> None:
    stream = io.BytesIO()
    log = AccessLog(stream, enabled=False)
    log.write("GET stats 200", FIELDS)
    log.flush()
    assert b"" == stream.getvalue()


@pytest.mark.parametrize("error", [OSError(32, "Broken pipe"), ValueError("closed")])
def test_a_stream_that_fails_loses_the_lines_not_the_proxy(error: Exception) -> None:
    class Failing(io.BytesIO):
        def write(self, data: object) -> int:
            raise error

    log = AccessLog(Failing())
    log.write("GET stats 200", FIELDS)  # written at once here: no loop
    log.flush()


def test_from_logging_follows_the_access_loggers_level() -> None:
    access = logging.getLogger("kstats.access")
    before = access.level
    try:
        access.setLevel(logging.WARNING)
        assert not AccessLog.from_logging().enabled
        access.setLevel(logging.INFO)
        assert AccessLog.from_logging().enabled
    finally:
        access.setLevel(before)
