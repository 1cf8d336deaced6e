"""Event views: where each value of one player event lives, and how it is encoded.

A statistics event can be spread over the request: the URL's query string
(or the path pairs of ``/service/stats/action/collect``) and a form or JSON
body. Kaltura merges them with the URL winning (PROTOCOL.md 1.1). A
:class:`EventView` reads through the same stores in the same order, and
writes a new value where the client keeps its other values:

- a value already present is rewritten where it stands;
- a missing value goes to the body when there is one, else to the query.

Each store writes in its client's convention: query and form values are
percent-encoded once, or twice for mwEmbed v2, whose userId,
applicationId, contextId, featureType and referrer are passed through
``encodeURIComponent`` before the request builder encodes them again
(PROTOCOL.md 4.1); JSON values keep the type the client uses.

Serves step 1 (recognise) and step 4 (apply).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, Final, Protocol

from proxy.kaltura.fields import WIRE_NAMES, Api, Field
from proxy.kaltura.params import (
    QueryParams,
    decode_uri_component,
    encode_component,
)

# The event attributes mwEmbed v2 encodes twice.
DOUBLE_ENCODED: Final = frozenset(
    {"userId", "applicationId", "contextId", "featureType", "referrer"}
)

# Request-level parameters a multirequest shares with sub-requests that
# lack their own (PROTOCOL.md 2.1).
_COMMON_PARAMS: Final = frozenset({"ks", "clientTag", "partnerId"})


class Store(Protocol):
    """One place of a request that holds event values."""

    def event_value(self, name: str) -> str | None:
        """The fully decoded value of event attribute ``name``."""

    def has_event_key(self, name: str) -> bool:
        """Whether attribute ``name`` is written here, even empty."""

    def set_event_value(self, name: str, value: str) -> None:
        """Write attribute ``name`` in this store's encoding."""

    def param(self, name: str) -> str | None:
        """A request-level parameter such as ``ks`` or ``clientTag``."""

    def set_param(self, name: str, value: str) -> None:
        """Write request-level parameter ``name`` for this event's call."""

    def event_names(self) -> list[str]:
        """The event attributes written here, in their order."""


class ParamStore:
    """Event values in a query string or form body.

    ``event_prefix`` is ``event:`` for a single ``stats.collect``,
    ``N:event:`` for sub-request N of a multirequest, and empty for KAVA's
    flat names. ``double`` says the client encodes the attributes of
    :data:`DOUBLE_ENCODED` twice; ``encoded_keys`` that it writes its
    keys as ``event%3A...``.
    """

    __slots__ = ("_double", "_encoded_keys", "_event_prefix", "_param_prefix", "params")

    def __init__(
        self,
        params: QueryParams,
        event_prefix: str,
        param_prefix: str = "",
        double: bool = False,
        encoded_keys: bool = False,
    ) -> None:
        self.params = params
        self._event_prefix = event_prefix
        self._param_prefix = param_prefix
        self._double = double
        self._encoded_keys = encoded_keys

    def event_value(self, name: str) -> str | None:
        value = self.params.get(self._event_prefix + name)
        if value is not None and self._double and name in DOUBLE_ENCODED:
            value = decode_uri_component(value)
        return value

    def has_event_key(self, name: str) -> bool:
        return self._event_prefix + name in self.params

    def set_event_value(self, name: str, value: str) -> None:
        raw_value = encode_component(value)
        if self._double and name in DOUBLE_ENCODED:
            # encoded text is all safe characters and escapes: encoding it
            # again only turns each "%" into "%25"
            raw_value = raw_value.replace("%", "%25")

        key = self._event_prefix + name
        raw_key = key.replace(":", "%3A") if self._encoded_keys else key
        self.params.set_raw(key, raw_value, raw_key=raw_key)

    def param(self, name: str) -> str | None:
        value = self.params.get(self._param_prefix + name)
        if value is None and self._param_prefix and name in _COMMON_PARAMS:
            value = self.params.get(name)
        return value

    def set_param(self, name: str, value: str) -> None:
        key = self._param_prefix + name
        raw_key = key.replace(":", "%3A") if self._encoded_keys else key
        self.params.set_raw(key, encode_component(value), raw_key=raw_key)

    def event_names(self) -> list[str]:
        prefix = self._event_prefix
        if not prefix:
            return []  # KAVA's flat names: not a collect event
        return [key[len(prefix) :] for key in self.params if key.startswith(prefix)]


def _json_text(value: Any) -> str | None:
    if value is None or type(value) is str:
        return value  # absent, or the common case of a string
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, str | int | float):
        return str(value)
    return None


class JsonDocument:
    """A parsed JSON body, and whether an event value was written into it.

    ``exact`` says it holds integers over 64 bits, which only the standard
    library's ``json`` writes back as they came.
    """

    __slots__ = ("changed", "data", "exact")

    def __init__(self, data: dict[str, Any], *, exact: bool = False) -> None:
        self.data = data
        self.changed = False
        self.exact = exact


class JsonStore:
    """Event values in a JSON body.

    ``container`` is the object of one call: the document itself, or
    sub-request N of a multirequest. A ``stats.collect`` call keeps its
    values in the nested ``event`` object; KAVA keeps them flat.
    """

    __slots__ = ("_container", "_document", "_nested", "_root")

    def __init__(
        self, document: JsonDocument, container: dict[str, Any], *, nested: bool
    ) -> None:
        self._document = document
        self._container = container
        self._root = document.data
        self._nested = nested

    def _event(self) -> Mapping[str, Any] | None:
        if not self._nested:
            return self._container
        event = self._container.get("event")
        return event if isinstance(event, dict) else None

    def event_value(self, name: str) -> str | None:
        event = self._event()
        return None if event is None else _json_text(event.get(name))

    def has_event_key(self, name: str) -> bool:
        event = self._event()
        return event is not None and name in event

    def set_event_value(self, name: str, value: str) -> None:
        event = self._event()
        if not isinstance(event, dict):
            event = self._container["event"] = {}

        # a client that sends numbers as JSON numbers gets a number back
        typed: str | int = value
        if name in ("contextId", "playbackContext") and isinstance(
            event.get("partnerId", self._container.get("partnerId")), int
        ):
            typed = int(value)
        event[name] = typed
        self._document.changed = True

    def param(self, name: str) -> str | None:
        value = _json_text(self._container.get(name))
        inherits = self._container is not self._root and name in _COMMON_PARAMS
        if value is None and inherits:
            value = _json_text(self._root.get(name))
        return value

    def set_param(self, name: str, value: str) -> None:
        self._container[name] = value
        self._document.changed = True

    def event_names(self) -> list[str]:
        event = self._event()
        return [] if event is None else [str(name) for name in event]


class EventView:
    """One player event of a request, as the rules see and edit it.

    ``stores`` are read in order (the URL's first, since Kaltura lets the
    URL win); ``primary`` receives values the event does not have yet.
    ``index`` is the sub-request number inside a multirequest.
    """

    __slots__ = ("_names", "_searched", "api", "index", "primary", "stores")

    def __init__(
        self,
        api: Api,
        stores: tuple[Store, ...],
        primary: Store,
        index: int | None = None,
    ) -> None:
        self.api = api
        self.stores = stores
        self.primary = primary
        self.index = index
        self._names = WIRE_NAMES[api]
        # where set() looks for a key: a last, primary store gets the value
        # whether it has the key or not, so it need not be searched
        last_is_primary = bool(stores) and stores[-1] is primary
        self._searched = stores[:-1] if last_is_primary else stores

    def attribute(self, name: str) -> str | None:
        """Event attribute ``name`` (``referrer``, ``entryId``, ...)."""
        for store in self.stores:
            value = store.event_value(name)
            if value is not None:
                return value
        return None

    def param(self, name: str) -> str | None:
        """Request-level parameter ``name`` as this event's call sees it."""
        for store in self.stores:
            value = store.param(name)
            if value is not None:
                return value
        return None

    def get(self, field: Field) -> str | None:
        """The value the event carries for ``field``; empty means absent."""
        # XXX: attribute()'s loop, written out: it runs for every field of
        # every event, and a call costs as much as the loop
        name = self._names[field]
        for store in self.stores:
            value = store.event_value(name)
            if value is not None:
                return value or None
        return None

    def set(self, field: Field, value: str) -> None:
        """Write ``field``, where it stands or else in the primary store."""
        name = self._names[field]
        for store in self._searched:
            if store.has_event_key(name):
                store.set_event_value(name, value)
                return
        self.primary.set_event_value(name, value)

    def set_param(self, name: str, value: str) -> None:
        """Give this event's call request-level parameter ``name``."""
        self.primary.set_param(name, value)

    def attributes(self) -> list[tuple[str, str]]:
        """Every attribute of the event and its decoded value, URL's first."""
        names = dict.fromkeys(n for store in self.stores for n in store.event_names())
        found = []
        for name in names:
            value = self.attribute(name)
            if value is not None:
                found.append((name, value))
        return found

    @property
    def ks(self) -> str | None:
        return self.param("ks") or None

    @property
    def partner_id(self) -> str | None:
        if self.api is Api.KAVA:
            return self.param("partnerId")
        return self.attribute("partnerId") or self.param("partnerId")

    @property
    def entry_id(self) -> str | None:
        if self.api is Api.KAVA:
            return self.param("entryId")
        return self.attribute("entryId")

    @property
    def event_type(self) -> str | None:
        if self.api is Api.KAVA:
            return self.param("eventType")
        return self.attribute("eventType")

    @property
    def referrer(self) -> str | None:
        return self.attribute("referrer") or None
