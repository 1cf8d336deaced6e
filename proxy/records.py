"""Recorded requests: the JSON Lines format of ``replay`` and ``demo``.

One request per line, with the keys ``seq``, ``label``, ``method``,
``raw_path`` (the request target exactly as sent), ``headers`` (a list of
``[name, value]`` pairs in wire order) and ``body_b64`` (the raw body).
Other keys are kept in :attr:`TrafficRecord.extra`.
"""

from __future__ import annotations

import base64
import binascii
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import orjson


class RecordError(ValueError):
    """A line of a records file is not a valid record."""


@dataclass(frozen=True, slots=True)
class TrafficRecord:
    """One recorded request."""

    seq: int
    label: str
    method: str
    raw_path: str
    headers: tuple[tuple[str, str], ...]
    body: bytes
    extra: dict[str, Any] = field(default_factory=dict, repr=False)

    def header(self, name: str) -> str | None:
        lower = name.lower()
        return next((v for k, v in self.headers if k.lower() == lower), None)


def parse_record(line: str, *, where: str) -> TrafficRecord:
    """One record from one line; RecordError names ``where`` and the cause."""
    try:
        data = orjson.loads(line)
        if not isinstance(data, dict):
            raise TypeError(f"a JSON object is expected, not {type(data).__name__}")
        headers = tuple((str(k), str(v)) for k, v in data.get("headers", []))
        record = TrafficRecord(
            seq=int(data.get("seq", 0)),
            label=str(data.get("label", "")),
            method=str(data["method"]),
            raw_path=str(data["raw_path"]),
            headers=headers,
            body=base64.b64decode(data.get("body_b64", ""), validate=True),
            extra=data,
        )
    except (orjson.JSONDecodeError, KeyError, TypeError, ValueError) as error:
        if isinstance(error, binascii.Error):
            error = ValueError(f"body_b64 is not base64 ({error})")
        elif isinstance(error, KeyError):
            error = ValueError(f"no {error.args[0]!r} key")
        raise RecordError(f"{where}: not a request record ({error})") from error
    return record


def read_records(path: Path | str) -> Iterator[TrafficRecord]:
    """The records of a JSON Lines file, skipping blank lines.

    OSError when the file cannot be opened; RecordError, naming the file
    and line, for a line that is not UTF-8 or not a record.
    """
    path = Path(path)
    with path.open("rb") as lines:
        for number, raw in enumerate(lines, start=1):
            where = f"{path}:{number}"
            try:
                line = raw.decode("utf-8")
            except UnicodeDecodeError as error:
                message = f"{where}: not UTF-8 text (byte {error.start + 1})"
                raise RecordError(message) from error
            if line.strip():
                yield parse_record(line, where=where)
