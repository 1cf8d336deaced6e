"""The rules model: immutable, compiled once at load, read per request.

A :class:`RuleSet` is what one load of the rules files produced. Nothing in
it is parsed or compiled after loading; a reload builds a new set and swaps
it whole, so a request finishes on the set it started with.

Serves step 2 (match) and step 3 (resolve).
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from enum import StrEnum

from proxy.kaltura.fields import Field
from proxy.rules.context import SourceContext
from proxy.rules.sources import Source


class Policy(StrEnum):
    """What a rule does with a value the event already carries."""

    FILL = "fill"  # keep the event's own value
    OVERRIDE = "override"  # replace it with the rule's, when the rule has one


@dataclass(frozen=True, slots=True)
class Condition:
    """A rule's ``when``: every condition given must hold.

    ``page`` and ``host`` are regexes searched in the page URL and the
    request's ``Host``; ``path`` is a prefix of the request path;
    ``partners`` the partner ids the event may carry; ``headers`` pairs of
    a header name and a regex its value must contain.
    """

    page: re.Pattern[str] | None = None
    host: re.Pattern[str] | None = None
    path: str | None = None
    partners: frozenset[str] | None = None
    headers: tuple[tuple[str, re.Pattern[str]], ...] = ()

    def matches(self, context: SourceContext) -> bool:
        page = context.page
        if self.page is not None and (page is None or not self.page.search(page)):
            return False
        if self.host is not None and not self.host.search(context.host):
            return False
        if self.path is not None and not context.path.startswith(self.path):
            return False
        partners = self.partners
        if partners is not None and context.event.partner_id not in partners:
            return False
        for name, pattern in self.headers:
            value = context.header(name)
            if value is None or not pattern.search(value):
                return False
        return True


@dataclass(frozen=True, slots=True)
class Rule:
    """One ``[[rule]]``: when it applies and where each field comes from."""

    name: str
    origin: str  # the file it was read from, for messages
    when: Condition
    sources: Mapping[Field, tuple[Source, ...]]
    policies: Mapping[Field, Policy]

    def policy(self, field: Field) -> Policy:
        return self.policies.get(field, Policy.FILL)


@dataclass(frozen=True, slots=True)
class KalturaSettings:
    """The ``[kaltura]`` section: the partner and service the proxy calls."""

    partner_id: int | None = None
    service_url: str | None = None  # None: the upstream
    widget_ks: bool = True
    normalize_get: bool = False  # normalize = "get": see proxy.normalize


@dataclass(frozen=True, slots=True)
class LookupSettings:
    """A ``[lookup.NAME]``: how to ask the legacy application who the viewer is.

    The proxy sends ``GET url`` carrying only the request's cookies named
    in ``forward_cookies`` (a name ending in ``*`` takes every cookie with
    that prefix) and the fixed ``headers``; from a 200 JSON answer it takes
    the value at ``field`` (dotted: ``d.LoginName``; kept as ``field_path``),
    then the first group of ``pattern`` when one is given. 401, 403 and 404 mean "nobody";
    anything else is a failure. Answers are kept ``ttl`` seconds, nobodies
    and failures ``negative_ttl``, at most ``max_entries``; a caller waits at
    most ``timeout`` seconds.
    """

    name: str
    url: str
    forward_cookies: tuple[str, ...]
    field_path: tuple[str, ...]
    pattern: re.Pattern[str] | None = None
    headers: tuple[tuple[str, str], ...] = ()
    ttl: float = 600.0
    negative_ttl: float = 30.0
    timeout: float = 0.3
    max_entries: int = 10_000


@dataclass(frozen=True, slots=True)
class RuleSet:
    """Everything one load of the rules files produced.

    ``files`` are the rules files, ``inputs`` every file read (rules files
    and the table files they name). ``digest`` is a short hash of the
    files' names and bytes, exported as the ``hash`` label of
    ``kstats_rules_info``.
    """

    rules: tuple[Rule, ...]
    kaltura: KalturaSettings
    tables: Mapping[str, Mapping[str, str]]
    files: tuple[str, ...]
    digest: str
    inputs: tuple[str, ...] = ()
    lookups: Mapping[str, LookupSettings] = field(default_factory=dict)
