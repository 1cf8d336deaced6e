"""The admin listener: ``/metrics``, ``/healthz`` and ``/readyz``.

It runs on its own port, never on the public one, so that players and the
open internet cannot read the proxy's metrics or drain it.

- ``/healthz`` answers 200 while the process serves;
- ``/readyz`` answers 200 once rules are loaded and while not draining,
  503 otherwise;
- ``/metrics`` is the Prometheus text exposition of the registry passed in.

Serves step 6 (record).
"""

from __future__ import annotations

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
    registry: CollectorRegistry, readiness: Readiness
) -> web.Application:
    """The admin application serving ``registry`` and ``readiness``."""

    async def healthz(request: web.Request) -> web.Response:
        return web.Response(text="ok\n")

    async def readyz(request: web.Request) -> web.Response:
        if readiness.ready:
            return web.Response(text="ready\n")
        reason = "draining" if readiness.draining else "rules not loaded"
        return web.Response(status=503, text=f"not ready: {reason}\n")

    app = web.Application()
    app.router.add_get("/healthz", healthz)
    app.router.add_get("/readyz", readyz)
    app.router.add_get("/metrics", make_aiohttp_handler(registry))
    return app
