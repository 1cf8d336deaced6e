"""The calls network sources make, with their caches: the proxy's services.

One :class:`RemoteServices` lives as long as the proxy, across rule
reloads, and serves every network source (:mod:`proxy.rules.remote`):

- ``lookup_user``: GET the legacy application's who-am-I page with the
  viewer's named cookies (and nothing else of theirs); answers are cached
  per lookup under a SHA-256 of the cookie values, never the values;
- ``category_id`` and ``entry_category_id``: Kaltura's ``category.list``
  and ``categoryEntry.list``, with an admin KS the proxy makes from the
  partner's admin secret (``KSTATS_ADMIN_SECRET``); that KS is sent only
  to the Kaltura service URL, in a POST body;
- ``widget_ks``: ``session.startWidgetSession`` for ``_<partnerId>``,
  kept until an hour before the 24 hours it is asked for run out.

Every answer goes through an :class:`~proxy.cache.AnswerCache`: kept for
a while, failures kept briefly, concurrent askers sharing one call, and
no event waiting past its time limit. Each ask is counted in
``kstats_source_calls_total{source, outcome}``.
"""

from __future__ import annotations

import asyncio
import hashlib
import logging
import time
from collections.abc import Callable, Iterable
from typing import Any, Final

import aiohttp
import orjson

from proxy.cache import AnswerCache, Outcome
from proxy.kaltura.client import KalturaCallError, KalturaClient, read_limited
from proxy.kaltura.ks import SESSION_TYPE_ADMIN, AdminSecrets, make_ks_v2
from proxy.metrics import Metrics
from proxy.rules.context import SourceContext
from proxy.rules.model import KalturaSettings, LookupSettings

logger = logging.getLogger("kstats.sources")

# how long a lookup's HTTP call may go on after the event stopped waiting
# for it, as a multiple of its timeout: a slow answer still fills the cache
_CALL_TIME_FACTOR: Final = 5
_MAX_LOOKUP_ANSWER: Final = 64 * 1024
_NOBODY_STATUSES: Final = frozenset({401, 403, 404})

# Kaltura calls: categories change rarely, widget sessions last a day
KALTURA_TIMEOUT: Final = 2.0
_CATEGORY_TTL: Final = 3600.0
_ENTRY_TTL: Final = 600.0
_KALTURA_NEGATIVE_TTL: Final = 60.0
_KALTURA_MAX_ENTRIES: Final = 20_000
WIDGET_KS_EXPIRY: Final = 86_400
_WIDGET_KS_KEEP: Final = WIDGET_KS_EXPIRY - 3600.0
_WIDGET_NEGATIVE_TTL: Final = 30.0
_ADMIN_KS_EXPIRY: Final = 7200
_ADMIN_KS_RENEW_BEFORE: Final = 600


# the results SPEC section 6 names for kstats_lookup_requests_total
_LOOKUP_RESULTS: Final = {
    Outcome.HIT: "hit",
    Outcome.SHARED: "hit",
    Outcome.CALLED: "miss",
    Outcome.FAILED: "error",
    Outcome.TIMEOUT: "timeout",
}


class LookupFailed(Exception):
    """A who-am-I call that failed; the message names the lookup and cause."""


def _json_at(document: object, path: tuple[str, ...]) -> str | None:
    """The text at ``path`` in a JSON document; None unless a string or number."""
    value = document
    for key in path:
        if not isinstance(value, dict):
            return None
        value = value.get(key)
    if isinstance(value, bool) or not isinstance(value, str | int):
        return None
    return str(value)


class RemoteServices:
    """The network sources' calls; see the module's description."""

    def __init__(
        self,
        *,
        upstream_url: str,
        admin_secrets: AdminSecrets,
        metrics: Metrics,
        kaltura_timeout: float = KALTURA_TIMEOUT,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._upstream_url = upstream_url
        self._secrets = admin_secrets
        self._metrics = metrics
        self._kaltura_timeout = kaltura_timeout
        self._clock = clock  # for the caches; tests move it
        self._session: aiohttp.ClientSession | None = None
        self._clients: dict[str, KalturaClient] = {}
        self._lookups: dict[LookupSettings, AnswerCache[str]] = {}
        self._categories: AnswerCache[str] = AnswerCache(
            name="category",
            clock=clock,
            ttl=_CATEGORY_TTL,
            negative_ttl=_KALTURA_NEGATIVE_TTL,
            max_entries=_KALTURA_MAX_ENTRIES,
        )
        self._entries: AnswerCache[tuple[tuple[str, str], ...]] = AnswerCache(
            name="entry-category",
            clock=clock,
            ttl=_ENTRY_TTL,
            negative_ttl=_KALTURA_NEGATIVE_TTL,
            max_entries=_KALTURA_MAX_ENTRIES,
        )
        self._widget_sessions: AnswerCache[str] = AnswerCache(
            name="widget-ks",
            clock=clock,
            ttl=_WIDGET_KS_KEEP,
            negative_ttl=_WIDGET_NEGATIVE_TTL,
            max_entries=1000,
        )
        self._admin_ks: dict[tuple[int, str], tuple[str, float]] = {}
        self._closing: set[asyncio.Task[None]] = set()  # caches being closed
        self._warned_no_secret: set[int] = set()

    # -- shared plumbing ------------------------------------------------------

    def _client_session(self) -> aiohttp.ClientSession:
        if self._session is None:
            self._session = aiohttp.ClientSession(
                # the viewer's cookies are sent by hand, and none kept
                cookie_jar=aiohttp.DummyCookieJar(),
                auto_decompress=True,
                skip_auto_headers=("User-Agent",),
                headers={"User-Agent": "kstats-proxy"},
            )
        return self._session

    def _kaltura(self, kaltura: KalturaSettings) -> KalturaClient:
        url = kaltura.service_url or self._upstream_url
        client = self._clients.get(url)
        if client is None:
            client = self._clients[url] = KalturaClient(
                url, self._client_session, timeout=self._kaltura_timeout
            )
        return client

    def _count(self, source: str, outcome: str) -> None:
        self._metrics.source_calls.inc(source, outcome)

    async def close(self) -> None:
        caches: list[AnswerCache[Any]] = [
            *self._lookups.values(),
            self._categories,
            self._entries,
            self._widget_sessions,
        ]
        for cache in caches:
            await cache.close()
        if self._closing:
            await asyncio.gather(*self._closing, return_exceptions=True)
        if self._session is not None:
            await self._session.close()
            self._session = None

    # -- lookups ----------------------------------------------------------------

    def keep_lookups(self, lookups: Iterable[LookupSettings]) -> None:
        """Forget the caches of lookups a reload took away or changed."""
        keep = set(lookups)
        for settings in [s for s in self._lookups if s not in keep]:
            cache = self._lookups.pop(settings)
            loop = asyncio.get_running_loop()
            task = loop.create_task(cache.close(), name=f"kstats-close-{cache.name}")
            self._closing.add(task)
            task.add_done_callback(self._closing.discard)

    async def lookup_user(
        self, settings: LookupSettings, context: SourceContext
    ) -> str | None:
        cookies = context.cookies(settings.forward_cookies)
        if not cookies:
            return None
        cache = self._lookups.get(settings)
        if cache is None:
            cache = self._lookups[settings] = AnswerCache(
                name=f"lookup-{settings.name}",
                ttl=settings.ttl,
                negative_ttl=settings.negative_ttl,
                max_entries=settings.max_entries,
                clock=self._clock,
            )

        # the key is a hash: cookie values are never kept in memory
        digest = hashlib.sha256(settings.name.encode())
        for name, value in cookies:
            digest.update(b"\0" + name.encode() + b"=" + value.encode())
        header = "; ".join(f"{name}={value}" for name, value in cookies)

        async def call() -> str | None:
            return await self._ask_application(settings, header)

        answer, outcome = await cache.get(
            digest.digest(), call, timeout=settings.timeout
        )
        self._count("lookup", outcome)
        self._metrics.lookup_requests.inc(settings.name, _LOOKUP_RESULTS[outcome])
        return answer

    async def _ask_application(
        self, settings: LookupSettings, cookie: str
    ) -> str | None:
        timeout = aiohttp.ClientTimeout(total=settings.timeout * _CALL_TIME_FACTOR)
        headers = {**dict(settings.headers), "Cookie": cookie}
        try:
            async with self._client_session().get(
                settings.url, headers=headers, timeout=timeout, allow_redirects=False
            ) as response:
                status = response.status
                data = await read_limited(response, _MAX_LOOKUP_ANSWER)
        except (aiohttp.ClientError, TimeoutError) as error:
            logger.warning("lookup %r failed: %r", settings.name, error)
            raise LookupFailed(f"lookup {settings.name!r}: {error!r}") from None

        if status in _NOBODY_STATUSES:
            return None  # nobody signed in
        if status != 200 or len(data) > _MAX_LOOKUP_ANSWER:
            logger.warning("lookup %r answered HTTP %d", settings.name, status)
            raise LookupFailed(f"lookup {settings.name!r}: HTTP {status}")
        try:
            document = orjson.loads(data)
        except orjson.JSONDecodeError:
            logger.warning(
                "lookup %r answered something that is not JSON", settings.name
            )
            raise LookupFailed(f"lookup {settings.name!r}: not JSON") from None

        value = _json_at(document, settings.field_path)
        if value is None or settings.pattern is None:
            return value or None
        match = settings.pattern.search(value)
        if match is None:
            return None
        return (match.group(1) if settings.pattern.groups else match.group(0)) or None

    # -- Kaltura ----------------------------------------------------------------

    def _admin_session(self, kaltura: KalturaSettings, partner_id: int) -> str | None:
        """An admin KS for ``partner_id``, made here and kept until near expiry."""
        url = kaltura.service_url or self._upstream_url
        now = time.time()
        kept = self._admin_ks.get((partner_id, url))
        if kept is not None and kept[1] - now > _ADMIN_KS_RENEW_BEFORE:
            return kept[0]

        secrets = self._secrets.for_partner(partner_id)
        if not secrets:
            if partner_id not in self._warned_no_secret:
                self._warned_no_secret.add(partner_id)
                logger.warning(
                    "no admin secret for partner %d: category sources yield "
                    "nothing (set KSTATS_ADMIN_SECRET or --admin-secret-file)",
                    partner_id,
                )
            return None
        expiry = int(now) + _ADMIN_KS_EXPIRY
        ks = make_ks_v2(
            partner_id=partner_id,
            secret=secrets[0],
            user_id="kstats-proxy",
            session_type=SESSION_TYPE_ADMIN,
            expiry=expiry,
            privileges="disableentitlement",
        )
        self._admin_ks[(partner_id, url)] = (ks, float(expiry))
        return ks

    async def category_id(
        self, kaltura: KalturaSettings, partner_id: int, full_name: str
    ) -> str | None:
        ks = self._admin_session(kaltura, partner_id)
        if ks is None:
            self._count("category", "no_secret")
            return None
        client = self._kaltura(kaltura)

        async def call() -> str | None:
            try:
                ids = await client.category_ids_by_full_name(ks, full_name)
            except KalturaCallError as error:
                logger.warning("category lookup failed: %s", error)
                raise
            return ids[0] if len(ids) == 1 else None

        key = (client.service_url, partner_id, full_name)
        answer, outcome = await self._categories.get(
            key, call, timeout=self._kaltura_timeout
        )
        self._count("category", outcome)
        return answer

    async def entry_category_id(
        self, kaltura: KalturaSettings, partner_id: int, entry_id: str, prefix: str
    ) -> str | None:
        ks = self._admin_session(kaltura, partner_id)
        if ks is None:
            self._count("entry_category", "no_secret")
            return None
        client = self._kaltura(kaltura)

        async def call() -> tuple[tuple[str, str], ...] | None:
            try:
                categories = await client.entry_categories(ks, entry_id)
            except KalturaCallError as error:
                logger.warning("entry category lookup failed: %s", error)
                raise
            return tuple(categories)

        key = (client.service_url, partner_id, entry_id)
        categories, outcome = await self._entries.get(
            key, call, timeout=self._kaltura_timeout
        )
        self._count("entry_category", outcome)
        under = [id_ for id_, name in categories or () if name.startswith(prefix)]
        return under[0] if len(under) == 1 else None

    async def widget_ks(self, kaltura: KalturaSettings, partner_id: int) -> str | None:
        """A widget KS for the partner, or None when none can be had now."""
        client = self._kaltura(kaltura)

        async def call() -> str:
            try:
                return await client.start_widget_session(partner_id, WIDGET_KS_EXPIRY)
            except KalturaCallError as error:
                logger.warning("widget session failed: %s", error)
                raise

        key = (client.service_url, partner_id)
        ks, outcome = await self._widget_sessions.get(
            key, call, timeout=self._kaltura_timeout
        )
        self._count("widget_ks", outcome)
        return ks
