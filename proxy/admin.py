"""The admin listener: ``/metrics``, ``/healthz`` and ``/readyz``.

It runs on its own port, never on the public one, so that players and the
open internet cannot read the proxy's metrics or drain it.

- ``/healthz`` answers 200 while the process serves;
- ``/readyz`` answers 200 once rules are loaded and while not draining,
  503 otherwise;
- ``/metrics`` is the Prometheus text exposition of the registry passed in,
  served by prometheus-client's own aiohttp handler;
- ``/status`` is a page for people: coverage of each report field since
  start (:mod:`proxy.status`).

The listener opens before the rules are loaded, so that ``/readyz`` says
503 while they load, and ``/healthz`` 200 as soon as the process serves.

Serves step 6 (record).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from aiohttp import web
from prometheus_client import CollectorRegistry
from prometheus_client.aiohttp import make_aiohttp_handler


@dataclass(slots=True)
class Readiness:
    """Whether the proxy should receive traffic."""

    rules_loaded: bool = False
    draining: bool = False

    @property
    def ready(self) -> bool:
        return self.rules_loaded and not self.draining


def make_admin_app(
    registry: CollectorRegistry,
    readiness: Readiness,
    status: Callable[[], str | None] = lambda: None,
) -> web.Application:
    """The admin application serving ``registry``, ``readiness`` and ``status``.

    ``status`` gives the status page's HTML, or None while the proxy starts.
    """

    async def healthz(request: web.Request) -> web.Response:
        return web.Response(text="ok\n")

    async def readyz(request: web.Request) -> web.Response:
        if readiness.ready:
            return web.Response(text="ready\n")
        reason = "draining" if readiness.draining else "rules not loaded"
        return web.Response(status=503, text=f"not ready: {reason}\n")

    async def status_page(request: web.Request) -> web.Response:
        page = status()
        if page is None:
            return web.Response(status=503, text="starting\n")
        return web.Response(
            text=page,
            content_type="text/html",
            headers={"Cache-Control": "no-store"},
        )

    app = web.Application()
    app.router.add_get("/status", status_page)
    app.router.add_get("/healthz", healthz)
    app.router.add_get("/readyz", readyz)
    app.router.add_get("/metrics", make_aiohttp_handler(registry))
    return app
