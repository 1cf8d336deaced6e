"""The spool on disk: what it keeps, what it gives back after a crash, its bound."""

from __future__ import annotations

import asyncio
import json
from pathlib import Path

import pytest
from prometheus_client import CollectorRegistry

from proxy.metrics import Metrics
from proxy.spool import Spool

HEADERS = (("Host", "www.kaltura.com"), ("User-Agent", "player"))


def target(number: int) -> str:
    return (
        f"/api_v3/index.php?service=stats&action=collect&event:eventType=3&n={number}"
    )


def open_spool(directory: Path, **limits: int) -> tuple[Spool, Metrics]:
    metrics = Metrics(CollectorRegistry())
    return Spool.open(directory, metrics, **limits), metrics


async def fill(spool: Spool, count: int, start: int = 0) -> None:
    await asyncio.gather(
        *(
            spool.append("stats", "GET", target(n), HEADERS, b"")
            for n in range(start, start + count)
        )
    )


async def drain(spool: Spool) -> list[str]:
    """Accept everything in the spool, oldest first; the targets seen."""
    seen = []
    while (request := spool.oldest()) is not None:
        seen.append(request.target)
        await spool.accept(request)
    return seen


async def test_requests_come_back_in_order_after_a_restart(tmp_path: Path) -> None:
    spool, metrics = open_spool(tmp_path)
    await fill(spool, 25)
    assert 25 == len(spool)
    assert 25 == metrics.registry.get_sample_value("kstats_spool_events")

    reopened, _ = open_spool(tmp_path)

    assert [target(n) for n in range(25)] == await drain(reopened)


async def test_accepted_requests_are_not_given_back_after_a_restart(
    tmp_path: Path,
) -> None:
    spool, metrics = open_spool(tmp_path)
    await fill(spool, 10)
    for _ in range(4):
        oldest = spool.oldest()
        assert oldest is not None
        await spool.accept(oldest)
    assert 4 == metrics.spool_replayed.value()

    reopened, _ = open_spool(tmp_path)

    assert [target(n) for n in range(4, 10)] == await drain(reopened)
    assert [] == sorted(tmp_path.iterdir())  # an accepted segment goes


async def test_a_last_line_cut_by_a_crash_is_dropped_and_the_rest_kept(
    tmp_path: Path,
) -> None:
    spool, _ = open_spool(tmp_path)
    await fill(spool, 3)
    (segment,) = tmp_path.glob("segment-*.jsonl")
    with segment.open("ab") as out:
        out.write(b'{"id": 99, "at": 1, "kind": "stats", "met')  # the crash

    reopened, _ = open_spool(tmp_path)

    assert [target(n) for n in range(3)] == await drain(reopened)


async def test_an_unreadable_line_is_dropped_and_counted(tmp_path: Path) -> None:
    spool, _ = open_spool(tmp_path)
    await fill(spool, 2)
    (segment,) = tmp_path.glob("segment-*.jsonl")
    lines = segment.read_bytes().splitlines(keepends=True)
    segment.write_bytes(lines[0] + b"not json\n" + lines[1])

    reopened, metrics = open_spool(tmp_path)

    assert [target(0), target(1)] == await drain(reopened)
    assert 1 == metrics.spool_dropped.value()


async def test_past_its_bound_the_oldest_requests_go_and_are_counted(
    tmp_path: Path,
) -> None:
    spool, metrics = open_spool(tmp_path, max_bytes=4000, segment_bytes=1000)
    for start in range(0, 60, 5):
        await fill(spool, 5, start)  # five per write

    kept = await drain(spool)
    dropped = metrics.spool_dropped.value()
    assert spool.size == 0
    assert 60 == len(kept) + dropped and dropped > 0
    # what is left is the newest, in order
    assert [target(n) for n in range(60 - len(kept), 60)] == kept


async def test_the_files_are_json_lines_an_operator_can_read(tmp_path: Path) -> None:
    spool, _ = open_spool(tmp_path)
    await spool.append(
        "kava", "POST", "/api_v3/index.php", HEADERS, b'{"eventType": 3}'
    )

    (segment,) = tmp_path.glob("segment-*.jsonl")
    record = json.loads(segment.read_text())
    assert {
        "kind": "kava",
        "method": "POST",
        "target": "/api_v3/index.php",
    }.items() <= (record.items())
    assert [["Host", "www.kaltura.com"], ["User-Agent", "player"]] == record["headers"]


async def test_bytes_that_are_not_utf8_survive_the_round_trip(tmp_path: Path) -> None:
    odd = "caf\udcc3\udca9 \udcff"  # the bytes caf\xc3\xa9 \xff, surrogate-escaped
    spool, _ = open_spool(tmp_path)
    await spool.append(
        "stats", "GET", "/api_v3/?x=" + odd, (("X-Legacy", odd),), b"\xff"
    )

    reopened, _ = open_spool(tmp_path)
    request = reopened.oldest()

    # the same bytes on the wire (the text may differ: valid UTF-8 comes
    # back as its characters)
    assert request is not None
    assert b"/api_v3/?x=caf\xc3\xa9 \xff" == wire(request.target)
    assert [(b"X-Legacy", b"caf\xc3\xa9 \xff")] == [
        (wire(name), wire(value)) for name, value in request.headers
    ]
    assert b"\xff" == request.body


def wire(text: str) -> bytes:
    return text.encode("utf-8", "surrogateescape")


async def test_ids_keep_rising_across_restarts(tmp_path: Path) -> None:
    spool, _ = open_spool(tmp_path)
    await fill(spool, 3)
    reopened, _ = open_spool(tmp_path)
    request = await reopened.append("stats", "GET", target(3), HEADERS, b"")
    assert 4 == request.id


async def test_a_request_dropped_by_the_bound_while_sent_acknowledges_nothing(
    tmp_path: Path,
) -> None:
    spool, metrics = open_spool(tmp_path, max_bytes=3000, segment_bytes=1000)
    await fill(spool, 12)
    sending = spool.oldest()
    assert sending is not None

    # more events while it is on its way: the bound drops its segment
    await fill(spool, 8, 12)
    assert metrics.spool_dropped.value() > 0
    after_drop = spool.oldest()
    assert after_drop is not None and after_drop.id != sending.id

    await spool.accept(sending)

    assert after_drop == spool.oldest()  # not acknowledged unsent
    assert 0 == metrics.spool_replayed.value()


async def test_a_write_that_fails_leaves_no_half_line_for_the_next(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import proxy.spool as spool_module

    spool, _ = open_spool(tmp_path)
    await fill(spool, 2)
    real = spool_module._append_durably

    def half_then_fail(path: Path, data: bytes) -> None:
        with path.open("ab") as out:
            out.write(data[:10])
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(spool_module, "_append_durably", half_then_fail)
    with pytest.raises(OSError):
        await spool.append("stats", "GET", target(2), HEADERS, b"")
    monkeypatch.setattr(spool_module, "_append_durably", real)
    await fill(spool, 1, 3)

    reopened, metrics = open_spool(tmp_path)
    assert [target(0), target(1), target(3)] == await drain(reopened)
    assert 0 == metrics.spool_dropped.value()


async def test_a_segment_number_is_never_used_twice(tmp_path: Path) -> None:
    spool, _ = open_spool(tmp_path)
    await fill(spool, 2)
    (first,) = tmp_path.glob("segment-*.jsonl")
    await drain(spool)  # accepted whole: the segment is gone
    # a count a crash left behind for that number
    first.with_suffix(".ack").write_text("2\n")

    await fill(spool, 2, 10)

    (second,) = tmp_path.glob("segment-*.jsonl")
    assert second.name > first.name
    reopened, _ = open_spool(tmp_path)
    assert [target(10), target(11)] == await drain(reopened)
