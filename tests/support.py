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
