"""Assembly: the request handler that runs one request through every step.

The public port is served by aiohttp's low-level :class:`aiohttp.web.Server`
with a single handler, with no router or middleware chain in the way of
the event path. For each request:

1. recognise: requests under ``/api_v3/`` whose body (if any) is a small
   form or JSON document are read and taken apart; everything else is
   streamed through untouched (:mod:`proxy.upstream.stream`);
2. to 4. match, resolve and apply (:mod:`proxy.enrich`);
5. forward: events go upstream on the lean keep-alive pool
   (:mod:`proxy.upstream.pool`) and the answer is relayed as it came;
6. record: metrics and one access log line.

Whatever goes wrong inside enrichment, the event is forwarded as it came:
a bug in a rule never costs an event.
"""

from __future__ import annotations

import asyncio
import logging
import time
from dataclasses import dataclass, field
from typing import Final

from aiohttp import web
from multidict import CIMultiDict, CIMultiDictProxy
from yarl import URL

from proxy.accesslog import AccessLog, RequestIds
from proxy.answers import accepted_answer
from proxy.coverage import Coverage
from proxy.enrich import Enricher, EventOutcome
from proxy.headers import (
    ForwardingPolicy,
    client_address,
    parse_networks,
    response_headers,
    upstream_headers,
)
from proxy.kaltura.ks import NO_SECRETS, AdminSecrets
from proxy.kaltura.recognise import Recognised, RequestKind, is_api_path, recognise
from proxy.kaltura.session import KsReader
from proxy.log import error_gist
from proxy.metrics import Metrics, event_type_label
from proxy.normalize import (
    DEFAULT_MAX_LINE,
    EventGet,
    Normalised,
    merge_results,
    normalise,
)
from proxy.remote import RemoteServices
from proxy.replayer import Replayer, accepted
from proxy.rules.model import RuleSet
from proxy.spool import Spool
from proxy.upstream.pool import Origin, PoolSettings, UpstreamError, UpstreamPool
from proxy.upstream.stream import StreamFailure, StreamingForwarder

logger = logging.getLogger("kstats.proxy")

# Bodies of these media types may hold an event and are read whole when
# they are small enough; any other body streams through.
_EVENT_MEDIA_TYPES: Final = ("application/json", "application/x-www-form-urlencoded")
_EVENT_METHODS: Final = ("GET", "POST")


@dataclass(frozen=True, slots=True)
class ProxySettings:
    """How the proxy forwards, fixed at start.

    ``max_event_body`` is the largest body read to look for events; a
    larger one is streamed through unchanged for Kaltura to judge.
    """

    upstream_url: str = "https://www.kaltura.com"
    forward_cookies: frozenset[str] = frozenset()
    trusted_proxies: tuple[str, ...] = ("127.0.0.1/32", "::1/128")
    max_event_body: int = 256 * 1024
    pool: PoolSettings = field(default_factory=PoolSettings)
    stream_connect_timeout: float = 3.0
    stream_read_timeout: float = 30.0
    # log the values added (user ids among them) and refused targets whole
    log_sensitive: bool = False
    # the longest a client may take to send a request head and an event body,
    # and may stay silent while it sends a streamed body
    client_timeout: float = 30.0
    # the largest declared request body passed on (0: no limit; uploads of
    # media go through the same API)
    max_request_body: int = 0
    # --normalize get (or [kaltura] normalize = "get"): see proxy.normalize
    normalize_get: bool = False
    max_get_line: int = DEFAULT_MAX_LINE
    # --shadow: resolve and count, forward every request as it came
    shadow: bool = False


@dataclass(frozen=True, slots=True)
class EventRequest:
    """The parts of a request the event path needs, whichever server read it."""

    method: str
    target: str  # origin-form, as received
    headers: CIMultiDictProxy[str]
    peer: str | None
    host: str


@dataclass(frozen=True, slots=True)
class EventAnswer:
    """What the player gets for an event request.

    ``headers`` are the upstream's, less hop-by-hop and framing headers:
    the server that writes the answer adds its own ``Content-Length``.
    """

    status: int
    reason: str
    headers: CIMultiDict[str]
    body: bytes


def _plain_answer(status: int, reason: str, text: str) -> EventAnswer:
    headers: CIMultiDict[str] = CIMultiDict(
        {"Content-Type": "text/plain; charset=utf-8"}
    )
    return EventAnswer(status, reason, headers, text.encode())


def origin_form(target: str) -> str | None:
    """The path and query of a request target; None for ``*`` and the like.

    An absolute-form target (``GET http://elsewhere/x``) keeps only its
    path and query: the destination is always the configured upstream.
    """
    if target.startswith("/"):
        return target
    if "://" not in target:
        return None
    try:
        url = URL(target, encoded=True)
    except ValueError:
        return None
    return url.raw_path_qs if url.raw_path_qs.startswith("/") else "/" + url.raw_path_qs


def _media_type(request: web.BaseRequest) -> str:
    return request.headers.get("Content-Type", "").partition(";")[0].strip().lower()


async def _read_prefix(request: web.BaseRequest, limit: int) -> tuple[bytes, bool]:
    """Read up to ``limit`` bytes of the body; say whether that was all."""
    chunks: list[bytes] = []
    size = 0
    while size <= limit:
        chunk = await request.content.read(limit + 1 - size)
        if not chunk:
            return b"".join(chunks), True
        chunks.append(chunk)
        size += len(chunk)
    return b"".join(chunks), False


async def _continue(request: web.BaseRequest) -> None:
    """Answer ``Expect: 100-continue`` before reading the body.

    ``Expect`` is not sent upstream (the proxy may hold the body whole), so
    the proxy gives the interim answer the client waits for itself.
    """
    if request.headers.get("Expect", "").lower() == "100-continue":
        major, minor = request.version
        await request.writer.write(b"HTTP/%d.%d 100 Continue\r\n\r\n" % (major, minor))


def _plain(status: int, text: str) -> web.Response:
    return web.Response(status=status, text=text, content_type="text/plain")


class ProxyApp:
    """The proxy's public side: one handler for every request."""

    def __init__(
        self,
        settings: ProxySettings,
        rules: RuleSet,
        *,
        metrics: Metrics,
        ks_reader: KsReader,
        access_log: AccessLog | None = None,
        admin_secrets: AdminSecrets = NO_SECRETS,
        spool: Spool | None = None,
    ) -> None:
        self.settings = settings
        self.rules = rules
        self.metrics = metrics
        self.access_log = access_log or AccessLog.from_logging()
        self.coverage = Coverage()
        self._request_ids = RequestIds()

        origin = Origin.from_url(settings.upstream_url)
        self._forwarding = ForwardingPolicy(
            upstream_host=origin.host_header,
            trusted=parse_networks(settings.trusted_proxies),
            forward_cookies=settings.forward_cookies,
        )
        # the calls of network sources, and their caches, outlive reloads
        self.services = RemoteServices(
            upstream_url=settings.upstream_url,
            admin_secrets=admin_secrets,
            metrics=metrics,
        )
        self._enricher = Enricher(ks_reader=ks_reader, services=self.services)
        self._pool = UpstreamPool(origin, settings.pool)
        # events Kaltura did not take, kept and sent again (None: no spool)
        self.replayer = None if spool is None else Replayer(spool, self._pool)
        self._streamer = StreamingForwarder(
            settings.upstream_url,
            connect_timeout=settings.stream_connect_timeout,
            read_timeout=settings.stream_read_timeout,
            max_connections=settings.pool.max_connections,
            client_timeout=settings.client_timeout,
        )

    def replace_rules(self, rules: RuleSet) -> None:
        """Use ``rules`` for requests that start from now on."""
        self.rules = rules
        self.metrics.set_rules(rules.digest)
        self.services.keep_lookups(rules.lookups.values())

    def start(self) -> None:
        """Start the background work: replaying the spool."""
        if self.replayer is not None:
            self.replayer.start()

    async def close(self) -> None:
        # the spool stays on disk: the next start replays what is left
        if self.replayer is not None:
            await self.replayer.stop()
        await self._pool.close()
        await self._streamer.close()
        await self.services.close()
        self.access_log.flush()

    async def handle(self, request: web.BaseRequest) -> web.StreamResponse:
        """Run one request through recognise, enrich, forward and record."""
        if request.method == "CONNECT":
            return self._reject("connect", 405, "CONNECT is not supported here\n")
        target = origin_form(request.raw_path)
        if target is None:
            return self._reject("bad_target", 400, "invalid request target\n")
        limit = self.settings.max_request_body
        if limit and (request.content_length or 0) > limit:
            return self._reject("body_too_large", 413, "request body too large\n")
        if request.body_exists:
            await _continue(request)

        # only GET and POST carry events; a CORS preflight (OPTIONS) of an
        # event's URL is Kaltura's to answer
        if request.method not in _EVENT_METHODS or not is_api_path(target):
            return await self._stream(request, target, RequestKind.OTHER)

        # read a body that may hold events; stream any other
        body = b""
        if request.body_exists:
            length = request.content_length
            limit = self.settings.max_event_body
            small = length is None or length <= limit
            if _media_type(request) not in _EVENT_MEDIA_TYPES or not small:
                return await self._stream(request, target, RequestKind.OTHER)
            body, complete = await _read_prefix(request, limit)
            if not complete:
                return await self._stream(
                    request, target, RequestKind.OTHER, body_prefix=body
                )

        recognised = self.recognise_events(
            request.method,
            target,
            request.headers.get("Content-Type"),
            body if request.body_exists else None,
        )
        if recognised is None or not recognised.events:
            kind = RequestKind.OTHER if recognised is None else recognised.kind
            return await self._stream(
                request, target, kind, body_prefix=body, complete=True
            )

        event_request = EventRequest(
            request.method, target, request.headers, request.remote, request.host
        )
        answer = await self.answer_events(event_request, recognised, body)
        # TODO: header bytes that are not UTF-8 are lost here, as on the
        # pass-through path (aiohttp's writer drops them); only events on
        # connections aiohttp took over come this way.
        return web.Response(
            status=answer.status,
            reason=answer.reason,
            body=answer.body,
            headers=answer.headers,
        )

    def recognise_events(
        self, method: str, target: str, content_type: str | None, body: bytes | None
    ) -> Recognised | None:
        """The request taken apart, or None when recognition itself failed."""
        try:
            return recognise(method, target, content_type, body)
        except Exception:
            logger.exception("recognition failed; forwarding the request as it came")
            return None

    async def answer_events(
        self, request: EventRequest, recognised: Recognised, body: bytes
    ) -> EventAnswer:
        """Enrich the events of a request, forward it, and record the outcome.

        Whatever goes wrong in enrichment, the request is forwarded as it
        came.
        """
        started = time.perf_counter()
        outcomes: list[EventOutcome] = []
        rules = self.rules  # one set for the whole request, reloads or not
        try:
            outcomes = await self._enricher.enrich(
                rules,
                recognised,
                headers=request.headers,
                host=request.host,
                widget_ks=not self.settings.shadow,
            )
            target = recognised.render_target()
            new_body = recognised.render_body(body)
        except Exception:
            logger.exception("enrichment failed; forwarding the request as it came")
            outcomes, target, new_body = [], request.target, body
        enrich_seconds = time.perf_counter() - started

        kind = recognised.kind
        if self.settings.shadow:
            # count what would have been added; send what came
            target, new_body = request.target, body
        answer, upstream_seconds = await self._send(
            request, recognised, target, new_body, normalize=rules.kaltura.normalize_get
        )
        self._record(
            request.method,
            request.peer,
            request.headers,
            kind,
            answer.status,
            outcomes,
            enrich_seconds,
            upstream_seconds,
        )
        return answer

    async def _send(
        self,
        request: EventRequest,
        recognised: Recognised,
        target: str,
        body: bytes,
        *,
        normalize: bool,
    ) -> tuple[EventAnswer, float | None]:
        """Forward the (enriched) request: normalised when asked and needed."""
        if not self.settings.shadow and (self.settings.normalize_get or normalize):
            normalised = normalise(
                recognised, request.method, max_line=self.settings.max_get_line
            )
            if not isinstance(normalised, str):
                self.metrics.normalized.inc("normalized")
                return await self._forward_normalised(request, normalised)
            if normalised != "not_needed":
                self.metrics.normalized.inc(normalised)
        return await self._forward_events(request, recognised, target, body)

    async def _forward_events(
        self,
        request: EventRequest,
        recognised: Recognised,
        target: str,
        body: bytes,
    ) -> tuple[EventAnswer, float | None]:
        """The player's answer, and Kaltura's time (None when it gave none).

        Kaltura's own answer when it took the request; when it did not
        (down, reset, timed out, 5xx, 429) and a spool is set, the request
        is spooled and the player gets the answer of an accepted one.
        """
        kind = recognised.kind
        headers = upstream_headers(
            request.headers, request.peer, self._forwarding, keep_length=False
        )

        # Kaltura is known to be down: straight to the spool
        replayer = self.replayer
        if replayer is not None and replayer.backlogged:
            spooled = await self._spool(
                recognised, request.method, target, headers, body
            )
            if spooled is not None:
                return spooled, None

        started = time.perf_counter()
        try:
            upstream = await self._pool.request(request.method, target, headers, body)
        except ValueError as error:
            # a request the pool refuses to write (control bytes in it); the
            # message quotes the target, user ids and KSes with it
            problem = str(error) if self.settings.log_sensitive else error_gist(error)
            logger.info("refused to forward a %s request: %s", kind, problem)
            self.metrics.rejected.inc("bad_request")
            return _plain_answer(400, "Bad Request", "invalid request\n"), None
        except UpstreamError as error:
            self.metrics.upstream_failures.inc(error.reason)
            logger.warning("upstream failed for a %s request: %s", kind, error)
            seconds = time.perf_counter() - started
            spooled = await self._spool(
                recognised, request.method, target, headers, body
            )
            if spooled is not None:
                return spooled, seconds
            if error.reason == "timeout":
                answer = _plain_answer(504, "Gateway Timeout", "upstream unavailable\n")
            else:
                answer = _plain_answer(502, "Bad Gateway", "upstream unavailable\n")
            return answer, seconds

        seconds = time.perf_counter() - started
        self.metrics.upstream_duration.observe(seconds, kind)
        if not accepted(upstream.status):
            self.metrics.upstream_failures.inc(f"status_{upstream.status // 100}xx")
            spooled = await self._spool(
                recognised, request.method, target, headers, body
            )
            if spooled is not None:
                return spooled, seconds
        elif replayer is not None:
            replayer.upstream_answered()
        relayed = EventAnswer(
            upstream.status,
            upstream.reason,
            response_headers(upstream.headers, keep_length=False),
            upstream.body,
        )
        return relayed, seconds

    async def _forward_normalised(
        self, request: EventRequest, normalised: Normalised
    ) -> tuple[EventAnswer, float | None]:
        """Each event as its own GET, the other calls together; one answer."""
        started = time.perf_counter()
        get_headers = CIMultiDict(
            (name, value)
            for name, value in request.headers.items()
            if name.lower() not in ("content-type", "content-length")
        )

        async def one_get(get: EventGet) -> EventAnswer:
            sub = EventRequest(
                "GET",
                get.target,
                CIMultiDictProxy(get_headers),
                request.peer,
                request.host,
            )
            recognised = recognise("GET", get.target, None, None)
            answer, _ = await self._forward_events(sub, recognised, get.target, b"")
            return answer

        answers = await asyncio.gather(*(one_get(get) for get in normalised.gets))
        if normalised.calls == 0:
            return answers[0], time.perf_counter() - started

        # the other calls, then the results in the player's order
        other_answer: bytes | None = None
        if normalised.others is not None:
            calls = normalised.others
            headers = upstream_headers(
                request.headers, request.peer, self._forwarding, keep_length=False
            )
            headers = [(n, v) for n, v in headers if n.lower() != "content-type"]
            if calls.content_type is not None:
                headers.append(("Content-Type", calls.content_type))
            try:
                upstream = await self._pool.request(
                    calls.method, calls.target, headers, calls.body
                )
            except (UpstreamError, ValueError) as error:
                logger.warning(
                    "the other calls of a normalised multirequest failed: %s", error
                )
                return _plain_answer(502, "Bad Gateway", "upstream unavailable\n"), None
            other_answer = upstream.body
        body = merge_results(normalised, [a.body for a in answers], other_answer)
        media = "text/xml" if normalised.fmt == "2" else "application/json"
        answer_headers: CIMultiDict[str] = CIMultiDict(
            {"Content-Type": media, "Access-Control-Allow-Origin": "*"}
        )
        answer = EventAnswer(200, "OK", answer_headers, body)
        return answer, time.perf_counter() - started

    async def _spool(
        self,
        recognised: Recognised,
        method: str,
        target: str,
        headers: list[tuple[str, str]],
        body: bytes,
    ) -> EventAnswer | None:
        """Keep the request for later and answer for Kaltura; None if not."""
        spool = self.replayer.spool if self.replayer is not None else None
        answer = accepted_answer(recognised) if spool is not None else None
        if spool is None or answer is None:
            return None
        try:
            await spool.append(recognised.kind, method, target, tuple(headers), body)
        except OSError:
            # the spool's writer logged the cause; the event is lost
            self.metrics.spool_dropped.inc()
            return None
        status, answer_headers, answer_body = answer
        return EventAnswer(status, "OK", answer_headers, answer_body)

    async def _stream(
        self,
        request: web.BaseRequest,
        target: str,
        kind: RequestKind,
        *,
        body_prefix: bytes = b"",
        complete: bool = False,
    ) -> web.StreamResponse:
        headers = upstream_headers(
            request.headers,
            request.remote,
            self._forwarding,
            keep_length=not complete,
        )
        started = time.perf_counter()
        seconds: float | None = None
        try:
            response = await self._streamer.forward(
                request,
                target,
                headers,
                body_prefix=body_prefix,
                body_complete=complete,
            )
        except StreamFailure as error:
            self.metrics.upstream_failures.inc(error.reason)
            if error.reason == "reset":
                raise  # the answer had begun: only dropping the connection is left
            logger.warning("upstream failed for a %s request: %s", kind, error)
            status = 504 if error.reason == "timeout" else 502
            response = _plain(status, "upstream unavailable\n")
        else:
            seconds = time.perf_counter() - started
            self.metrics.upstream_duration.observe(seconds, kind)
        self._record(
            request.method,
            request.remote,
            request.headers,
            kind,
            response.status,
            [],
            0.0,
            seconds,
        )
        return response

    def _reject(self, reason: str, status: int, text: str) -> web.Response:
        self.metrics.rejected.inc(reason)
        self.metrics.requests.inc(RequestKind.OTHER, status)
        return _plain(status, text)

    def _record(
        self,
        method: str,
        peer: str | None,
        headers: CIMultiDictProxy[str],
        kind: RequestKind,
        status: int,
        outcomes: list[EventOutcome],
        enrich_seconds: float,
        upstream_seconds: float | None,
    ) -> None:
        metrics = self.metrics
        metrics.requests.inc(kind, status)
        # shadow figures apart: what would have been, never what was
        settled = (
            metrics.shadow_enrichments if self.settings.shadow else metrics.enrichments
        )
        for outcome in outcomes:
            event = outcome.event
            label = event_type_label(event.api, event.event_type)
            metrics.events.inc(event.api, label)
            for rule in outcome.matched:
                metrics.rule_matches.inc(rule)
            for enrichment in outcome.enrichments:
                settled.inc(enrichment.field, enrichment.source)
            self.coverage.record(outcome)

        if self.access_log.enabled:
            fields = {
                "request_id": self._request_ids.take(headers),
                "method": method,
                "kind": str(kind),
                "status": status,
                "client": client_address(
                    peer, headers.get("X-Forwarded-For"), self._forwarding
                ),
                "events": len(outcomes),
                "rules": sorted({r for o in outcomes for r in o.matched}),
                "added": [f"{e.field}:{e.source}" for o in outcomes for e in o.added],
                "widget_ks": sum(o.widget_ks for o in outcomes),
                "enrich_ms": round(enrich_seconds * 1000, 3),
                "upstream_ms": (
                    None
                    if upstream_seconds is None
                    else round(upstream_seconds * 1000, 3)
                ),
            }
            if self.settings.shadow:
                fields["shadow"] = True  # "added": what would have been
            if self.settings.log_sensitive:
                # the operator asked for it: the values themselves
                fields["values"] = [
                    {"field": str(e.field), "value": e.value}
                    for o in outcomes
                    for e in o.added
                ]
            self.access_log.write(f"{method} {kind} {status}", fields)
