"""A bounded soak: a minute of steady traffic while Kaltura misbehaves on a schedule.

Events go through a proxy with a spool at a steady rate for
:data:`SECONDS` seconds, while the faulty Kaltura of ``test_faults.py``
cycles through healthy, resetting, hanging, 500 and 429 spells. At the
end the spool drains, and the test prints one line::

    sent N, delivered N, lost 0, duplicated D

A duplicate is an event Kaltura took twice: the at-least-once window of
the README (a hanging Kaltura may take an event the proxy then gives up
on and spools). None may be lost.
"""

from __future__ import annotations

import asyncio
import time
from pathlib import Path

import aiohttp
import pytest
from test_faults import (
    RULES,
    ProxyFactory,
    faulty_kaltura,
    send,
    start_spooling_proxy,
    until_delivered,
)

SECONDS = 60.0
RATE = 40  # events a second
# (mode, seconds), repeated for the whole soak
SCHEDULE = (
    ("ok", 4.0),
    ("reset", 2.0),
    ("ok", 3.0),
    ("hang", 1.5),
    ("500", 1.5),
    ("ok", 2.0),
    ("429", 1.0),
)


@pytest.mark.timeout(240)
async def test_a_minute_of_traffic_through_scheduled_faults_loses_no_event(
    start_proxy: ProxyFactory, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    rules = tmp_path / "rules.toml"
    rules.write_text(RULES)
    async with faulty_kaltura() as kaltura, aiohttp.ClientSession() as session:
        proxy = await start_spooling_proxy(
            start_proxy, kaltura.url, rules, tmp_path / "spool"
        )
        loop = asyncio.get_running_loop()
        started = loop.time()

        async def faults() -> None:
            while loop.time() - started < SECONDS:
                for mode, spell in SCHEDULE:
                    kaltura.mode = mode
                    await asyncio.sleep(spell)
            kaltura.mode = "ok"

        answers: list[int] = []

        async def one(number: int) -> None:
            status, _, _ = await send(session, proxy.ports[0], number)
            answers.append(status)

        # a steady rate: each event at its own time, not after the last one
        switch = loop.create_task(faults(), name="soak-faults")
        sending = []
        number = 0
        while (elapsed := loop.time() - started) < SECONDS:
            due = int(elapsed * RATE)
            while number < due:
                sending.append(loop.create_task(one(number), name="soak-event"))
                number += 1
            await asyncio.sleep(0.01)
        await asyncio.gather(*sending)
        switch.cancel()
        kaltura.mode = "ok"

        await until_delivered(kaltura, number, 120)
        delivered = kaltura.delivered()
        lost = number - len(delivered)
        duplicated = sum(delivered.values()) - len(delivered)
        with capsys.disabled():
            print(
                f"\nsent {number}, delivered {len(delivered)}, lost {lost}, "
                f"duplicated {duplicated} ({time.strftime('%H:%M:%S')})"
            )

    assert number >= RATE * SECONDS * 0.9
    assert {200} == set(answers)
    assert 0 == lost
