"""Shared test parts: a stand-in Kaltura and a running proxy.

Everything runs on 127.0.0.1 with ports the kernel picks. The proxy is the
real assembly (:func:`proxy.serve.start`), talking to a real HTTP server.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from aiohttp import web
from support import RULES

from proxy.app import ProxySettings
from proxy.legacy_standin import point_lookups_at
from proxy.serve import RunningProxy, ServeConfig, start
from proxy.standin import StandIn, make_standin_app


@dataclass
class Upstream:
    """A running stand-in Kaltura endpoint."""

    standin: StandIn
    url: str


@pytest.fixture(name="upstream")
async def _upstream() -> AsyncIterator[Upstream]:
    standin = StandIn()
    runner = web.AppRunner(make_standin_app(standin), access_log=None)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = runner.addresses[0][1]
    yield Upstream(standin, f"http://127.0.0.1:{port}")
    await runner.cleanup()


ProxyFactory = Callable[..., Awaitable[RunningProxy]]


@pytest.fixture(name="offline_rules", scope="session")
def _offline_rules(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The shipped rules, their lookups pointed at a closed loopback port.

    A lookup of the shipped rules names its site (moodle.example.edu, ...);
    tests must not ask the network about it. Port 9 (discard) refuses at
    once, so those lookups fail fast, as a site that is down would.
    """
    return point_lookups_at(
        RULES, "http://127.0.0.1:9", tmp_path_factory.mktemp("rules")
    )


@pytest.fixture(name="start_proxy")
async def _start_proxy(offline_rules: Path) -> AsyncIterator[ProxyFactory]:
    """Start proxies with ``start_proxy(upstream_url, rules=..., **settings)``.

    ``rules`` default to the shipped rules, offline (see ``offline_rules``).

    ``settings`` are :class:`ProxySettings` fields; ``reload_interval`` is
    the rules watcher's, 2 s as in production unless given.
    """
    started: list[RunningProxy] = []

    async def factory(
        upstream_url: str,
        *,
        rules: Path | str | None = None,
        admin_secrets: Any = None,
        reload_interval: float = 2.0,
        spool_dir: str | None = None,
        **settings: Any,
    ) -> RunningProxy:
        config = ServeConfig(
            rules_path=str(rules or offline_rules),
            listen=("127.0.0.1", 0),
            admin_listen=("127.0.0.1", 0),
            proxy=ProxySettings(upstream_url=upstream_url, **settings),
            reload_interval=reload_interval,
            spool_dir=spool_dir,
            **({"admin_secrets": admin_secrets} if admin_secrets else {}),
        )
        running = await start(config)
        started.append(running)
        return running

    yield factory
    for running in started:
        await running.stop(1.0)
