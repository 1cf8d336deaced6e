"""The spool: events Kaltura did not take, kept on disk until it does.

When Kaltura cannot be reached, resets, times out, or answers 5xx or 429,
an event request is written here, made durable (``fsync``), and only then
is the player answered (:mod:`proxy.answers`). A replayer
(:mod:`proxy.replayer`) sends the spooled requests again, oldest first.

On disk, ``--spool DIR`` holds segments ``segment-<n>.jsonl``: one JSON
object per line, one line per request as it was to be sent upstream::

    {"id": 17, "at": 1796300000.12, "kind": "stats", "method": "GET",
     "target": "/api_v3/index.php?service=stats&...", "headers": [["Host",
     "www.kaltura.com"], ...], "body_b64": ""}

(a value that is not valid UTF-8 is kept as ``target_b64``, or as a
``["name", null, "b64"]`` header). Beside a segment, ``segment-<n>.ack``
holds how many of its lines Kaltura has accepted; a segment accepted
whole is deleted, and its number never used again. ``jq`` reads them;
nothing else is kept anywhere.

Guarantees:

- a request whose player got the spooled answer is on disk (every write
  is followed by ``fsync`` before anyone is answered; requests spooled at
  the same moment share one ``fsync``);
- after a crash or ``kill -9`` the spool is read back at start, from the
  first line not acknowledged; a last line cut short by the crash (whose
  player was never answered) is dropped;
- delivery is at least once: a request is acknowledged only after
  Kaltura accepted it, so a crash between Kaltura's answer and the
  acknowledgement sends that one request again;
- the spool holds at most ``max_bytes``: past it, the oldest segment goes,
  and each request in it is counted in ``kstats_spool_dropped_total``.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import logging
import os
import re
import time
from collections import deque
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Final

import orjson

from proxy.metrics import Metrics

logger = logging.getLogger("kstats.spool")

# segments are numbered by the millisecond they were opened (or one past
# the newest, if the clock stepped back): a number is never used twice, so
# an acknowledgement file left over by a crash can never meet a new segment
_SEGMENT: Final = re.compile(r"segment-(\d{8,})\.jsonl")
# TODO: every request waiting is also held in memory, so a full spool costs
# its size in RAM too; reading them back from disk as the replayer goes
# would free that, and allow a larger default
DEFAULT_MAX_BYTES: Final = 64 * 1024 * 1024
DEFAULT_SEGMENT_BYTES: Final = 1024 * 1024


@dataclass(frozen=True, slots=True)
class SpooledRequest:
    """One event request, as it was to be sent upstream."""

    id: int
    at: float  # when it was spooled, unix seconds
    kind: str
    method: str
    target: str
    headers: tuple[tuple[str, str], ...]
    body: bytes


def _raw(text: str) -> bytes:
    return text.encode("utf-8", "surrogateescape")


def _encode(request: SpooledRequest) -> bytes:
    record: dict[str, Any] = {
        "id": request.id,
        "at": round(request.at, 3),
        "kind": request.kind,
        "method": request.method,
    }
    try:
        record["target"] = request.target.encode().decode()
    except UnicodeEncodeError:
        record["target_b64"] = base64.b64encode(_raw(request.target)).decode()
    headers: list[list[str | None]] = []
    for name, value in request.headers:
        try:
            headers.append([name, value.encode().decode()])
        except UnicodeEncodeError:
            headers.append([name, None, base64.b64encode(_raw(value)).decode()])
    record["headers"] = headers
    record["body_b64"] = base64.b64encode(request.body).decode()
    return orjson.dumps(record, option=orjson.OPT_APPEND_NEWLINE)


def _decode(line: bytes) -> SpooledRequest:
    record = orjson.loads(line)
    if "target" in record:
        target = record["target"]
    else:
        target = base64.b64decode(record["target_b64"]).decode(
            "utf-8", "surrogateescape"
        )
    headers = []
    for entry in record["headers"]:
        if entry[1] is None:
            value = base64.b64decode(entry[2]).decode("utf-8", "surrogateescape")
        else:
            value = entry[1]
        headers.append((entry[0], value))
    return SpooledRequest(
        int(record["id"]),
        float(record["at"]),
        str(record["kind"]),
        str(record["method"]),
        str(target),
        tuple(headers),
        base64.b64decode(record["body_b64"]),
    )


class _Segment:
    """One segment file: its requests in memory, its acknowledged count."""

    def __init__(self, number: int, directory: Path) -> None:
        self.number = number
        self.path = directory / f"segment-{number:013d}.jsonl"
        self.ack_path = self.path.with_suffix(".ack")
        self.requests: deque[tuple[SpooledRequest, int]] = deque()  # and its size
        self.acked = 0
        self.size = 0  # bytes on disk

    def write_ack(self) -> None:
        # a small file replaced whole: the count is either old or new
        temporary = self.ack_path.with_suffix(".ack.tmp")
        with temporary.open("w") as out:
            out.write(f"{self.acked}\n")
            out.flush()
            os.fsync(out.fileno())
        os.replace(temporary, self.ack_path)

    def remove(self) -> None:
        # the count first: an orphan count must never meet a new segment
        for path in (self.ack_path, self.path):
            path.unlink(missing_ok=True)


class Spool:
    """The spool directory, read at start and written as requests come.

    Every method runs on the event loop; disk writes and ``fsync`` go to a
    worker thread, one batch at a time.
    """

    def __init__(
        self,
        directory: Path,
        metrics: Metrics,
        *,
        max_bytes: int = DEFAULT_MAX_BYTES,
        segment_bytes: int = DEFAULT_SEGMENT_BYTES,
    ) -> None:
        self.directory = directory
        self._metrics = metrics
        self._max_bytes = max_bytes
        self._segment_bytes = segment_bytes
        self._segments: deque[_Segment] = deque()
        self._next_id = 1
        self._last_number = 0  # the newest segment number used
        self._bytes = 0
        self._count = 0
        # requests waiting for the next write, with their writers' futures
        self._pending: list[tuple[SpooledRequest, bytes, asyncio.Future[None]]] = []
        self._writing = False
        self.changed = asyncio.Event()  # set whenever a request is added

    # -- reading at start --------------------------------------------------------

    @classmethod
    def open(
        cls,
        directory: Path,
        metrics: Metrics,
        *,
        max_bytes: int = DEFAULT_MAX_BYTES,
        segment_bytes: int = DEFAULT_SEGMENT_BYTES,
    ) -> Spool:
        """The spool in ``directory`` (made if missing), with what it holds."""
        directory.mkdir(parents=True, exist_ok=True)
        spool = cls(
            directory, metrics, max_bytes=max_bytes, segment_bytes=segment_bytes
        )
        numbers = sorted(
            int(m[1]) for p in directory.iterdir() if (m := _SEGMENT.fullmatch(p.name))
        )
        for number in numbers:
            spool._read_segment(number)
            spool._last_number = max(spool._last_number, number)
        if spool._count:
            logger.info(
                "spool %s holds %d requests (%d bytes) to replay",
                directory,
                spool._count,
                spool._bytes,
            )
        spool._update_gauges()
        return spool

    def _read_segment(self, number: int) -> None:
        segment = _Segment(number, self.directory)
        data = segment.path.read_bytes()
        try:
            segment.acked = int(segment.ack_path.read_text().strip() or 0)
        except (OSError, ValueError):
            segment.acked = 0

        # every whole line; a last one without its newline was cut by a crash
        lines = data.split(b"\n")
        if lines[-1]:
            logger.warning("spool %s: a last line cut short is dropped", segment.path)
            with segment.path.open("r+b") as out:
                out.truncate(len(data) - len(lines[-1]))
        whole = [line for line in lines[:-1] if line]
        segment.size = sum(len(line) + 1 for line in whole)
        for position, line in enumerate(whole):
            try:
                request = _decode(line)
            except (ValueError, KeyError, TypeError, IndexError):
                logger.warning(
                    "spool %s: line %d is unreadable, dropped",
                    segment.path,
                    position + 1,
                )
                self._metrics.spool_dropped.inc()
                continue
            self._next_id = max(self._next_id, request.id + 1)
            if position >= segment.acked:
                segment.requests.append((request, len(line) + 1))
                self._count += 1
                self._bytes += len(line) + 1

        if segment.requests:
            self._segments.append(segment)
        else:
            segment.remove()

    # -- adding ---------------------------------------------------------------------

    def __len__(self) -> int:
        return self._count

    @property
    def size(self) -> int:
        """Bytes the requests waiting take on disk."""
        return self._bytes

    async def append(
        self,
        kind: str,
        method: str,
        target: str,
        headers: tuple[tuple[str, str], ...],
        body: bytes,
    ) -> SpooledRequest:
        """Keep one request; returns once it is on disk (raises OSError if not)."""
        request = SpooledRequest(
            self._next_id, time.time(), kind, method, target, headers, body
        )
        self._next_id += 1
        line = _encode(request)
        done: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._pending.append((request, line, done))
        if not self._writing:
            self._writing = True
            asyncio.get_running_loop().call_soon(self._start_write)
        await done
        return request

    def _start_write(self) -> None:
        batch, self._pending = self._pending, []
        loop = asyncio.get_running_loop()
        segment = self._writable_segment()
        data = b"".join(line for _, line, _ in batch)
        task = loop.create_task(
            self._write(segment, batch, data), name="kstats-spool-write"
        )
        task.add_done_callback(lambda _: None)

    async def _write(
        self,
        segment: _Segment,
        batch: list[tuple[SpooledRequest, bytes, asyncio.Future[None]]],
        data: bytes,
    ) -> None:
        try:
            await asyncio.to_thread(_append_durably, segment.path, data)
        except OSError as error:
            logger.error("spool %s: cannot write: %s", segment.path, error)
            # cut what was half written, and go on in a fresh segment
            with contextlib.suppress(OSError):
                await asyncio.to_thread(os.truncate, segment.path, segment.size)
            segment.size = self._segment_bytes
            for _, _, done in batch:
                if not done.done():
                    done.set_exception(error)
        else:
            for request, line, done in batch:
                segment.requests.append((request, len(line)))
                segment.size += len(line)
                self._count += 1
                self._bytes += len(line)
                if not done.done():
                    done.set_result(None)
            self._enforce_bound()
            self._update_gauges()
            self.changed.set()
        finally:
            # whoever came while this batch was written goes in the next
            if self._pending:
                asyncio.get_running_loop().call_soon(self._start_write)
            else:
                self._writing = False

    def _writable_segment(self) -> _Segment:
        if self._segments and self._segments[-1].size < self._segment_bytes:
            return self._segments[-1]
        newest = self._segments[-1].number if self._segments else self._newest_on_disk()
        number = max(int(time.time() * 1000), newest + 1, self._last_number + 1)
        self._last_number = number
        segment = _Segment(number, self.directory)
        segment.ack_path.unlink(missing_ok=True)  # never a stale count
        self._segments.append(segment)
        return segment

    def _newest_on_disk(self) -> int:
        numbers = [
            int(m[1])
            for p in self.directory.iterdir()
            if (m := _SEGMENT.fullmatch(p.name))
        ]
        return max(numbers, default=0)

    def _enforce_bound(self) -> None:
        # the oldest segment goes first; the one being written stays
        while self._bytes > self._max_bytes and len(self._segments) > 1:
            segment = self._segments.popleft()
            lost = len(segment.requests)
            self._count -= lost
            self._bytes -= sum(size for _, size in segment.requests)
            segment.remove()
            for _ in range(lost):
                self._metrics.spool_dropped.inc()
            logger.warning(
                "spool over %d bytes: dropped %d oldest requests", self._max_bytes, lost
            )

    # -- replaying ------------------------------------------------------------------

    def oldest(self) -> SpooledRequest | None:
        """The oldest request not yet accepted upstream."""
        for segment in self._segments:
            if segment.requests:
                return segment.requests[0][0]
        return None

    async def accept(self, request: SpooledRequest) -> None:
        """Record that Kaltura accepted ``request``, the oldest when it was sent.

        If the bound dropped it while it was being sent, nothing is
        recorded: the request now oldest was never sent.
        """
        segment = next((s for s in self._segments if s.requests), None)
        if segment is None or segment.requests[0][0].id != request.id:
            return
        _, size = segment.requests.popleft()
        segment.acked += 1
        self._count -= 1
        self._bytes -= size
        if not segment.requests and segment is not self._segments[-1]:
            self._segments.remove(segment)
            await asyncio.to_thread(segment.remove)
        elif not segment.requests and not self._writing:
            # the newest segment, drained: start the next one afresh
            self._segments.remove(segment)
            await asyncio.to_thread(segment.remove)
        else:
            await asyncio.to_thread(segment.write_ack)
        self._metrics.spool_replayed.inc()
        self._update_gauges()

    def _update_gauges(self) -> None:
        self._metrics.spool_events.set(self._count)
        self._metrics.spool_bytes.set(self._bytes)


def _append_durably(path: Path, data: bytes) -> None:
    with path.open("ab") as out:
        out.write(data)
        out.flush()
        os.fsync(out.fileno())
