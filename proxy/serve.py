"""Running the proxy: listeners, signals and an orderly stop.

:func:`run` loads the rules, opens the public and admin listeners and
serves until SIGTERM or SIGINT, reloading the rules when their files
change and on SIGHUP (:mod:`proxy.reload`). Stopping is phased: readiness
turns 503, the public listener stops accepting and the rules watcher
stops, requests in flight are given the grace period to finish, then the
upstream connections close.
"""

from __future__ import annotations

import asyncio
import gc
import logging
import os
import signal
import time
from dataclasses import dataclass, field
from pathlib import Path

from aiohttp import web
from prometheus_client import CollectorRegistry, ProcessCollector

from proxy.admin import Readiness, make_admin_app
from proxy.app import ProxyApp, ProxySettings
from proxy.fastpath import EventConnections, HeadLimits, event_protocol_factory
from proxy.kaltura.ks import AdminSecrets
from proxy.kaltura.session import KsReader
from proxy.metrics import Metrics
from proxy.reload import RulesWatcher, load_watched
from proxy.spool import DEFAULT_MAX_BYTES, Spool
from proxy.status import render_status

logger = logging.getLogger("kstats.proxy")


@dataclass(frozen=True, slots=True)
class ServeConfig:
    """Everything ``kstats-proxy serve`` was told."""

    rules_path: str = "rules/"
    listen: tuple[str, int] = ("0.0.0.0", 8080)
    admin_listen: tuple[str, int] = ("0.0.0.0", 8081)
    proxy: ProxySettings = field(default_factory=ProxySettings)
    admin_secrets: AdminSecrets = AdminSecrets.EMPTY
    max_line_size: int = 16384  # 414 past it
    max_field_size: int = 16384  # one header line; 431 past it
    max_head_size: int = 65536  # the whole head; 431 past it
    grace_period: float = 20.0
    reload_interval: float = 2.0  # 0: reload on SIGHUP only
    spool_dir: str | None = None  # None: events Kaltura does not take are lost
    spool_max_bytes: int = DEFAULT_MAX_BYTES


@dataclass(slots=True)
class RunningProxy:
    """A started proxy; :meth:`stop` ends it in order."""

    app: ProxyApp
    readiness: Readiness
    server: web.Server
    connections: EventConnections
    listener: asyncio.Server
    admin: web.AppRunner
    ports: tuple[int, int]
    watcher: RulesWatcher

    async def stop(self, grace_period: float) -> None:
        if self.readiness.draining:
            return  # stopped or stopping already

        # turn readiness off, stop accepting new connections and reloading
        self.readiness.draining = True
        self.listener.close()
        await self.watcher.stop()

        # let requests in flight finish, then close what is left
        self.connections.close_idle()
        await self.connections.wait_busy(grace_period)
        await self.server.shutdown(grace_period)
        await self.listener.wait_closed()
        await self.app.close()
        await self.admin.cleanup()


async def start(config: ServeConfig) -> RunningProxy:
    """Open the admin listener, load the rules, then open the public one.

    Raises RulesError (with the admin listener closed again) when the rules
    do not load.
    """
    registry = CollectorRegistry()
    ProcessCollector(registry=registry)
    metrics = Metrics(registry)
    readiness = Readiness()
    started = time.time()
    served: list[ProxyApp] = []  # the app, once it exists, for /status

    def status_page() -> str | None:
        if not served:
            return None
        app = served[0]
        return render_status(
            app.coverage, started=started, rules_digest=app.rules.digest
        )

    # the admin listener first: /readyz says 503 while the rules load
    admin = web.AppRunner(
        make_admin_app(registry, readiness, status_page), access_log=None
    )
    await admin.setup()
    admin_site = web.TCPSite(admin, *config.admin_listen)
    await admin_site.start()
    try:
        rules, fingerprint = await asyncio.to_thread(load_watched, config.rules_path)
    except BaseException:
        await admin.cleanup()
        raise
    metrics.set_rules(rules.digest)

    spool = None
    if config.spool_dir is not None:
        spool = await asyncio.to_thread(
            Spool.open,
            Path(config.spool_dir),
            metrics,
            max_bytes=config.spool_max_bytes,
        )
    else:
        logger.warning(
            "no --spool: events Kaltura does not take while it is down are lost"
        )
    app = ProxyApp(
        config.proxy,
        rules,
        metrics=metrics,
        ks_reader=KsReader(config.admin_secrets),
        admin_secrets=config.admin_secrets,
        spool=spool,
    )
    server = web.Server(
        app.handle,
        access_log=None,
        # bodies pass through as they came, compressed or not
        auto_decompress=False,
        max_line_size=config.max_line_size,
        max_field_size=config.max_field_size,
    )
    connections = EventConnections()
    protocol = event_protocol_factory(
        app,
        server,
        connections,
        limits=HeadLimits(
            config.max_line_size, config.max_field_size, config.max_head_size
        ),
    )
    loop = asyncio.get_running_loop()
    host, port = config.listen
    listener = await loop.create_server(protocol, host, port, backlog=1024)

    served.append(app)
    app.start()

    # what start-up allocated lives as long as the process: keep the
    # collector from walking it again and again (XXX: measured at about a
    # tenth of the event path's CPU time before)
    gc.collect()
    gc.freeze()

    watcher = RulesWatcher(
        app,
        config.rules_path,
        interval=config.reload_interval,
        fingerprint=fingerprint,
    )
    watcher.start()

    public_port = listener.sockets[0].getsockname()[1]
    admin_port = admin.addresses[0][1]
    readiness.rules_loaded = True
    logger.info(
        "serving on %s:%s (admin %s:%s), %d rules from %s, upstream %s",
        host,
        public_port,
        config.admin_listen[0],
        admin_port,
        len(rules.rules),
        config.rules_path,
        config.proxy.upstream_url,
    )
    return RunningProxy(
        app,
        readiness,
        server,
        connections,
        listener,
        admin,
        (public_port, admin_port),
        watcher,
    )


async def run(config: ServeConfig) -> None:
    """Serve until SIGTERM or SIGINT, then stop in order; SIGHUP reloads."""
    # the handlers come first: the admin listener answers while the rules
    # load, so a signal may arrive before start() returns
    stop = asyncio.Event()
    started: list[RunningProxy] = []
    loop = asyncio.get_running_loop()

    def stop_or_exit() -> None:
        if not stop.is_set():
            stop.set()
            return
        # a second signal: out now. The spool is whole lines made durable
        # before each answer, so nothing on disk is left half written
        logger.warning("second signal: exiting at once")
        logging.shutdown()
        os._exit(1)

    for signum in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(signum, stop_or_exit)

    def reload() -> None:
        if started:
            started[0].watcher.request_reload()
        else:
            logger.info(
                "SIGHUP before the first load: the rules being loaded are read now"
            )

    loop.add_signal_handler(signal.SIGHUP, reload)

    running = await start(config)
    started.append(running)
    if stop.is_set():
        logger.info("stopping before serving: a signal came during start")
    await stop.wait()
    logger.info("stopping: draining for up to %.1f s", config.grace_period)
    await running.stop(config.grace_period)
