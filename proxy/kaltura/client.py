"""The few Kaltura API calls the proxy makes for itself.

``category.list`` (a category's id from its full name, and the names of
an entry's categories), ``categoryEntry.list`` (the categories an entry
is in) and ``session.startWidgetSession`` (an anonymous widget KS). Each
is one POST of a JSON body to ``<service>/api_v3/service/S/action/A``
with ``format=1``, the way Kaltura's Python client sends its calls
(PROTOCOL.md 2.3), so that the admin KS travels in the body, never in a
URL that a log might keep.

The answer shapes follow Kaltura's API reference: a list answer is
``{"objects": [...], "totalCount": N, "objectType": "...ListResponse"}``;
a category has ``id`` and ``fullName``; a category-entry ``categoryId``
and ``entryId``; a widget session answer ``ks``. A failed call answers
HTTP 200 with ``{"objectType": "KalturaAPIException", "code": ...}``
(PROTOCOL.md 2.1).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, Final

import aiohttp
import orjson

# The largest answer read; category lists for one name or entry are small.
MAX_ANSWER_BYTES: Final = 1 << 20


async def read_limited(response: aiohttp.ClientResponse, limit: int) -> bytes:
    """The whole body, or its first ``limit + 1`` bytes when it is longer.

    ``content.read(n)`` gives what has arrived, not ``n`` bytes: an answer
    in several chunks needs a loop.
    """
    chunks: list[bytes] = []
    size = 0
    while size <= limit:
        chunk = await response.content.read(limit + 1 - size)
        if not chunk:
            break
        chunks.append(chunk)
        size += len(chunk)
    return b"".join(chunks)


class KalturaCallError(Exception):
    """A call that gave no usable answer; the message names call and cause."""


class KalturaClient:
    """Calls to one Kaltura service URL over a shared aiohttp session."""

    def __init__(
        self,
        service_url: str,
        session: Callable[[], aiohttp.ClientSession],
        *,
        timeout: float,
    ) -> None:
        self.service_url = service_url.rstrip("/")
        self._session = session
        self._timeout = aiohttp.ClientTimeout(total=timeout)

    async def call(self, service: str, action: str, params: dict[str, Any]) -> Any:
        """One API call; its ``result`` (the parsed JSON), or KalturaCallError."""
        name = f"{service}.{action}"
        url = f"{self.service_url}/api_v3/service/{service}/action/{action}?format=1"
        body = orjson.dumps({**params, "format": 1})
        try:
            async with self._session().post(
                url,
                data=body,
                headers={"Content-Type": "application/json"},
                timeout=self._timeout,
                allow_redirects=False,
            ) as response:
                data = await read_limited(response, MAX_ANSWER_BYTES)
                status = response.status
        except (aiohttp.ClientError, TimeoutError) as error:
            raise KalturaCallError(f"{name} at {self.service_url}: {error!r}") from None

        if status != 200:
            raise KalturaCallError(f"{name} at {self.service_url}: HTTP {status}")
        if len(data) > MAX_ANSWER_BYTES:
            raise KalturaCallError(f"{name}: answer over {MAX_ANSWER_BYTES} bytes")
        try:
            result = orjson.loads(data)
        except orjson.JSONDecodeError:
            raise KalturaCallError(f"{name}: the answer is not JSON") from None
        if isinstance(result, dict) and result.get("objectType") == (
            "KalturaAPIException"
        ):
            code, message = result.get("code"), result.get("message")
            raise KalturaCallError(f"{name}: {code}: {message}")
        return result

    async def list_objects(
        self, service: str, ks: str, filter_: dict[str, Any]
    ) -> list[dict[str, Any]]:
        """The ``objects`` of a list call, up to 500 of them."""
        result = await self.call(
            service,
            "list",
            {"ks": ks, "filter": filter_, "pager": {"pageSize": 500, "pageIndex": 1}},
        )
        objects = result.get("objects") if isinstance(result, dict) else None
        if not isinstance(objects, list):
            raise KalturaCallError(f"{service}.list: no 'objects' in the answer")
        return [item for item in objects if isinstance(item, dict)]

    async def category_ids_by_full_name(self, ks: str, full_name: str) -> list[str]:
        """The ids of the categories whose full name is ``full_name``."""
        objects = await self.list_objects(
            "category",
            ks,
            {"objectType": "KalturaCategoryFilter", "fullNameEqual": full_name},
        )
        return [str(item["id"]) for item in objects if _is_id(item.get("id"))]

    async def entry_categories(self, ks: str, entry_id: str) -> list[tuple[str, str]]:
        """The ``(id, full name)`` of each category the entry is in."""
        links = await self.list_objects(
            "categoryEntry",
            ks,
            {"objectType": "KalturaCategoryEntryFilter", "entryIdEqual": entry_id},
        )
        ids = [
            str(item["categoryId"]) for item in links if _is_id(item.get("categoryId"))
        ]
        if not ids:
            return []
        categories = await self.list_objects(
            "category",
            ks,
            {"objectType": "KalturaCategoryFilter", "idIn": ",".join(ids)},
        )
        return [
            (str(item["id"]), item["fullName"])
            for item in categories
            if _is_id(item.get("id")) and isinstance(item.get("fullName"), str)
        ]

    async def start_widget_session(self, partner_id: int, expiry: int) -> str:
        """A widget KS for ``_<partner_id>``, valid ``expiry`` seconds."""
        result = await self.call(
            "session",
            "startWidgetSession",
            {"widgetId": f"_{partner_id}", "expiry": expiry},
        )
        ks = result.get("ks") if isinstance(result, dict) else None
        if not isinstance(ks, str) or not ks:
            raise KalturaCallError("session.startWidgetSession: no 'ks' in the answer")
        return ks


def _is_id(value: object) -> bool:
    if isinstance(value, bool):
        return False
    return isinstance(value, int) or (isinstance(value, str) and value.isdigit())
