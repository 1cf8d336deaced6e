"""Sources that ask another service: the legacy application, or Kaltura.

- ``lookup``: ``{ cookie = "MoodleSession", lookup = "moodle-whoami" }``
  asks the application of ``[lookup.moodle-whoami]`` who the viewer is,
  when the request carries that cookie;
- ``category``: ``{ page = 'id=(\\d+)', category = "Moodle>site>{1}" }``
  resolves a category full name to its id; ``{1}`` is the value the
  source read (the first group of its ``page`` or ``pattern`` regex);
- ``entry_category``: ``{ entry_category = "Blackboard>site>channels>" }``
  takes the event's entry's categories and yields the id of the one whose
  full name starts with the prefix, nothing when none or several do.

Each is a :class:`~proxy.rules.sources.Source` with ``needs_network``; the
calls and their caches are the :class:`Services` the proxy runs
(:mod:`proxy.remote`), reached through the event's context. In a dry run
(``explain``, ``replay``) there are no services and these sources yield
nothing. A service that is slow or failing never holds an event past the
source's time limit: the source yields nothing and the event goes on.

Serves step 3 (resolve).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import ClassVar, Protocol

from proxy.rules.context import SourceContext
from proxy.rules.model import KalturaSettings, LookupSettings
from proxy.rules.sources import LocalSource


class Services(Protocol):
    """The calls network sources make; see :mod:`proxy.remote`."""

    async def lookup_user(
        self, settings: LookupSettings, context: SourceContext
    ) -> str | None: ...

    async def category_id(
        self, kaltura: KalturaSettings, partner_id: int, full_name: str
    ) -> str | None: ...

    async def entry_category_id(
        self, kaltura: KalturaSettings, partner_id: int, entry_id: str, prefix: str
    ) -> str | None: ...

    async def widget_ks(
        self, kaltura: KalturaSettings, partner_id: int
    ) -> str | None: ...


def event_partner(context: SourceContext, kaltura: KalturaSettings) -> int | None:
    """The partner to ask Kaltura about: the event's, else ``[kaltura]``'s."""
    partner = context.event.partner_id
    if partner is not None and partner.isdigit() and int(partner) > 0:
        return int(partner)
    return kaltura.partner_id


def _mapped(value: str | None, table: Mapping[str, str] | None) -> str | None:
    if value is None or table is None:
        return value
    return table.get(value)


class _NetworkSource:
    """What every network source shares: only :meth:`fetch` answers."""

    __slots__ = ()
    needs_network: ClassVar[bool] = True

    def extract(self, context: SourceContext) -> str | None:
        return None


@dataclass(frozen=True, slots=True)
class LookupSource(_NetworkSource):
    """``lookup``: the legacy application's answer, when ``trigger`` is there."""

    trigger: LocalSource  # the cookie (or header) without which no call is made
    settings: LookupSettings
    table: Mapping[str, str] | None = None

    kind: ClassVar[str] = "lookup"

    async def fetch(self, context: SourceContext) -> str | None:
        services = context.services
        if services is None or self.trigger.extract(context) is None:
            return None
        answer = await services.lookup_user(self.settings, context)
        return _mapped(answer, self.table)


@dataclass(frozen=True, slots=True)
class CategorySource(_NetworkSource):
    """``category``: a full name built from what ``read`` found, as an id."""

    read: LocalSource  # value, page, header, cookie or query, refined
    template: str  # the full name, with {1} for the value read
    kaltura: KalturaSettings
    table: Mapping[str, str] | None = None

    kind: ClassVar[str] = "category"

    async def fetch(self, context: SourceContext) -> str | None:
        services = context.services
        if services is None:
            return None
        value = self.read.extract(context)
        partner = event_partner(context, self.kaltura)
        if value is None or partner is None:
            return None
        full_name = self.template.replace("{1}", value)
        answer = await services.category_id(self.kaltura, partner, full_name)
        return _mapped(answer, self.table)


@dataclass(frozen=True, slots=True)
class EntryCategorySource(_NetworkSource):
    """``entry_category``: the entry's one category under ``prefix``."""

    prefix: str
    kaltura: KalturaSettings
    table: Mapping[str, str] | None = None

    kind: ClassVar[str] = "entry_category"

    async def fetch(self, context: SourceContext) -> str | None:
        services = context.services
        if services is None:
            return None
        entry_id = context.event.entry_id
        partner = event_partner(context, self.kaltura)
        if not entry_id or partner is None:
            return None
        answer = await services.entry_category_id(
            self.kaltura, partner, entry_id, self.prefix
        )
        return _mapped(answer, self.table)
