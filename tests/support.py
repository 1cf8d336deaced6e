"""Test helpers: the fixtures' recorded traffic, and a raw HTTP client.

Imported by tests as ``support`` (pytest puts ``tests/`` on the path).
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from proxy.records import TrafficRecord, read_records

REPO = Path(__file__).resolve().parents[1]
SHARED = REPO.parent / "shared"
FIXTURES = SHARED / "fixtures"
RULES = REPO / "rules"

# Realistic player traffic shared by the rewrite benchmark and tests/bench.
MWEMBED_STATS_TARGET = (
    "/api_v3/index.php?service=stats&action=collect&apiVersion=3.1.5"
    "&expiry=86400&clientTag=kwidget%3Av2.101&format=1&ignoreNull=1"
    "&event:eventType=3&event:clientVer=2.101&event:currentPoint=0"
    "&event:duration=634&event:eventTimestamp=1764752160123"
    "&event:isFirstInSession=false&event:objectType=KalturaStatsEvent"
    "&event:partnerId=1234&event:sessionId=4b7c2a1e-9f3d-4e8a-b1c6-2d5e8f9a0b3c"
    "&event:uiconfId=23448200&event:widgetId=_1234&event:seek=false"
    "&event:entryId=0_abcd1234"
    "&event:referrer=https%253A%252F%252Fmoodle.example.edu%252Fcourse%252F42"
)
KAVA_TARGET = (
    "/api_v3/index.php?service=analytics&action=trackEvent&eventType=3"
    "&partnerId=1234&entryId=0_abcd1234&sessionId=4b7c2a1e-9f3d-4e8a"
)
KAVA_BODY = (
    b'{"eventIndex":3,"referrer":"https://moodle.example.edu/course/42",'
    b'"deliveryType":"hls","playbackType":"vod","clientVer":"7.37.1",'
    b'"clientTag":"html5:v7.37.1","position":12.5,"playbackSpeed":1,'
    b'"playerSkin":"default","uiConfId":23448200,"apiVersion":"3.3.0","format":1}'
)

# Rules for the real Python client's traffic: a header the client is told
# to send, a value, and the course page mapped to a category.
PYTHON_CLIENT_RULES = """
[[rule]]
name = "python-client"
when.host = '^127\\.0\\.0\\.1(:\\d+)?$'
userId = [{ header = "X-Portal-User" }]
applicationName = [{ value = "PythonClient" }]
playbackContext = [{ page = 'course/view\\.php\\?id=(\\d+)', table = "courses" }]

[table.courses]
entries = { "42" = 86401 }
"""


def request_bytes(
    record: TrafficRecord, extra_headers: tuple[tuple[str, str], ...] = ()
) -> bytes:
    """A recorded request as it would be written on the wire."""
    lines = [f"{record.method} {record.raw_path} HTTP/1.1"]
    for name, value in (*record.headers, *extra_headers):
        if name.lower() not in ("content-length", "connection"):
            lines.append(f"{name}: {value}")
    if record.body or record.method == "POST":
        lines.append(f"Content-Length: {len(record.body)}")
    head = "\r\n".join(lines) + "\r\n\r\n"
    return head.encode("latin-1") + record.body


class Record(TrafficRecord):
    """A fixture record, with the helpers tests use."""

    __slots__ = ()

    @property
    def data(self) -> dict[str, Any]:
        return self.extra

    def to_bytes(self, extra_headers: tuple[tuple[str, str], ...] = ()) -> bytes:
        return request_bytes(self, extra_headers)


def load_records(name: str) -> list[Record]:
    """The records of ``../shared/fixtures/<name>``."""
    return [
        Record(r.seq, r.label, r.method, r.raw_path, r.headers, r.body, r.extra)
        for r in read_records(FIXTURES / name)
    ]


@dataclass
class RawResponse:
    status: int
    headers: list[tuple[str, str]]
    body: bytes

    def header(self, name: str) -> str | None:
        lower = name.lower()
        return next((v for k, v in self.headers if k.lower() == lower), None)

    def headers_named(self, name: str) -> list[str]:
        lower = name.lower()
        return [v for k, v in self.headers if k.lower() == lower]


async def send_raw(port: int, request: bytes, *, timeout: float = 10.0) -> RawResponse:
    """Write ``request`` as given on a new connection; read one response.

    Used where a client library would tidy the request (absolute-form
    targets, forged Host, ``//api_v3``, invalid bytes).
    """
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    try:
        writer.write(request)
        await writer.drain()
        async with asyncio.timeout(timeout):
            head = await reader.readuntil(b"\r\n\r\n")
            status_line, *header_lines = head.decode("latin-1").split("\r\n")
            status = int(status_line.split(" ", 2)[1])
            headers = []
            for line in header_lines:
                if line:
                    name, _, value = line.partition(":")
                    headers.append((name.strip(), value.strip()))
            response = RawResponse(status, headers, b"")
            length = response.header("Content-Length")
            if response.header("Transfer-Encoding") == "chunked":
                response.body = await _read_chunked(reader)
            elif length is not None:
                response.body = await reader.readexactly(int(length))
            return response
    finally:
        writer.close()


async def _read_chunked(reader: asyncio.StreamReader) -> bytes:
    chunks = []
    while True:
        size = int((await reader.readline()).split(b";")[0], 16)
        if size == 0:
            await reader.readline()
            return b"".join(chunks)
        chunks.append(await reader.readexactly(size))
        await reader.readline()
