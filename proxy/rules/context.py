"""What a rule can see of one event: the request as it arrived, and the event.

A :class:`SourceContext` is built once per event, before any value is
written, so every rule is matched and every source read against the
original request (SPEC section 9, step 2). A cookie is looked up and
a KS string decoded only when a rule asks for it.

Serves step 2 (match) and step 3 (resolve).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import TYPE_CHECKING, Final

from proxy.kaltura.events import EventView
from proxy.kaltura.params import QueryParams

if TYPE_CHECKING:
    from proxy.rules.remote import Services

# Inputs longer than this are cut before a rule's regex sees them, so no
# request can make a pattern run for long (SPEC section 7).
MAX_MATCHED_INPUT: Final = 4096


def find_cookie(header: str, name: str) -> str | None:
    """Cookie ``name`` of a ``Cookie`` header; the first of a repeated name wins.

    Only the cookies up to the one asked for are taken apart: a browser's
    header often carries a dozen a rule never reads.
    """
    if not name or name not in header:
        return None
    for part in header.split(";"):
        key, equals, value = part.partition("=")
        if equals and key.strip() == name:
            value = value.strip()
            if value.startswith('"') and value.endswith('"') and len(value) > 1:
                value = value[1:-1]
            return value
    return None


class SourceContext:
    """The request and the event that the rules read, for one event.

    ``page`` is the URL of the page that embeds the player: the event's own
    referrer, else the HTTP ``Referer`` header, cut to
    :data:`MAX_MATCHED_INPUT` characters. ``ks_user`` reads the user out of
    a KS string and is shared with the rest of the proxy's KS cache.
    ``services`` make the calls of network sources; None in a dry run.
    """

    __slots__ = (
        "_ks_user",
        "event",
        "headers",
        "host",
        "page",
        "params",
        "path",
        "services",
    )

    def __init__(
        self,
        headers: Mapping[str, str],
        host: str,
        path: str,
        params: tuple[QueryParams, ...],
        event: EventView,
        page: str | None,
        ks_user: Callable[[str], str | None],
        services: Services | None = None,
    ) -> None:
        self.headers = headers
        self.host = host[:MAX_MATCHED_INPUT]
        self.path = path[:MAX_MATCHED_INPUT]
        self.params = params
        self.event = event
        self.page = None if page is None else page[:MAX_MATCHED_INPUT]
        self._ks_user = ks_user
        self.services = services

    def header(self, name: str) -> str | None:
        value = self.headers.get(name)
        return None if value is None else value[:MAX_MATCHED_INPUT]

    def cookie(self, name: str) -> str | None:
        value = find_cookie(self.headers.get("Cookie", ""), name)
        return None if value is None else value[:MAX_MATCHED_INPUT]

    def cookies(self, names: tuple[str, ...]) -> list[tuple[str, str]]:
        """The request's cookies of these names, in the header's order.

        A name ending in ``*`` takes every cookie with that prefix (a
        SharePoint token split over ``FedAuth``, ``FedAuth1``, ...).
        """
        exact = {name for name in names if not name.endswith("*")}
        prefixes = tuple(name[:-1] for name in names if name.endswith("*"))
        found = []
        for part in self.headers.get("Cookie", "").split(";"):
            key, equals, value = part.partition("=")
            key = key.strip()
            if equals and key and (key in exact or key.startswith(prefixes or ("\0",))):
                found.append((key, value.strip()))
        return found

    def query(self, name: str) -> str | None:
        for params in self.params:
            value = params.get(name)
            if value is not None:
                return value[:MAX_MATCHED_INPUT]
        return None

    def ks_user(self, ks: str) -> str | None:
        """The real user a KS names, or None for a widget KS or a bad one."""
        return self._ks_user(ks)

    def request_ks_user(self) -> str | None:
        """The real user of the event's own KS, if it has one."""
        ks = self.event.param("ks")
        return self._ks_user(ks) if ks else None
