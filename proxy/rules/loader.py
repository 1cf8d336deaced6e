"""Loading and validating rules files into a :class:`~proxy.rules.model.RuleSet`.

A rules path is one TOML file or a directory of ``*.toml`` files, read in
name order. Every file is checked completely before anything is used:
:func:`load_rules` either returns a whole rule set or raises
:class:`RulesError` listing every problem, each naming the file, the rule,
the key and the offending value::

    rules/moodle.toml: rule 'moodle': when.page: invalid regex '(' (missing ), ...)

The language itself is described in the README ("Rules files"); in short::

    [[rule]]
    name = "moodle"
    when.host = 'moodle\\.example\\.edu'
    userId = [{ header = "X-Remote-User" }]
    applicationName = [{ value = "Moodle" }]
    playbackContext = [{ page = 'id=(\\d+)', table = "courses" }]
    policy.userId = "override"

    [table.courses]
    entries = { "42" = 86091 }     # or file = "courses.csv"

    [kaltura]
    partner_id = 1234
"""

from __future__ import annotations

import csv
import hashlib
import io
import os
import re
import tomllib
from collections.abc import Mapping
from pathlib import Path
from types import MappingProxyType
from typing import Any, Final
from urllib.parse import urlsplit

from proxy.kaltura.fields import FIELDS, Field
from proxy.rules.model import (
    Condition,
    KalturaSettings,
    LookupSettings,
    Policy,
    Rule,
    RuleSet,
)
from proxy.rules.remote import CategorySource, EntryCategorySource, LookupSource
from proxy.rules.sources import (
    Decoding,
    LocalSource,
    Reader,
    Source,
    read_cookie,
    read_header,
    read_literal,
    read_page,
    read_query,
    read_request_ks,
)
from proxy.rules.tokens import ASYMMETRIC, SYMMETRIC, TokenClaim, TokenSettings

_NAME: Final = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,63}")
# a cookie name (an RFC 6265 token), or a prefix of one ending in "*"
_COOKIE_NAME: Final = re.compile(r"[!#$%&'+.^_`|~0-9A-Za-z-]+\*?")
_READERS: Final = ("value", "page", "header", "cookie", "query", "ks")
_MODIFIERS: Final = ("pattern", "decode", "table", "jwt", "claim")
_TOKEN_KEYS: Final = (
    "algorithms",
    "key_file",
    "key_env",
    "verify",
    "audience",
    "issuer",
    "leeway",
)

_DURATION: Final = re.compile(r"(\d+(?:\.\d+)?)(ms|s|m|h)")
_DURATION_UNITS: Final = {"ms": 0.001, "s": 1.0, "m": 60.0, "h": 3600.0}
_LOOKUP_KEYS: Final = (
    "url",
    "forward_cookies",
    "field",
    "pattern",
    "headers",
    "ttl",
    "negative_ttl",
    "timeout",
    "max_entries",
)


class RulesError(Exception):
    """The rules could not be loaded; ``problems`` has one line per error."""

    def __init__(self, problems: list[str]) -> None:
        self.problems = problems
        super().__init__("\n".join(problems))


def _show(value: Any) -> str:
    text = repr(value)
    return text if len(text) <= 80 else text[:77] + "..."


class _Loader:
    """One load: collects every problem instead of stopping at the first."""

    def __init__(self) -> None:
        self.problems: list[str] = []
        self.tables: dict[str, Mapping[str, str]] = {}
        self.rule_names: set[str] = set()
        self.kaltura: KalturaSettings | None = None
        self.kaltura_origin = ""
        self.digest = hashlib.sha256()
        self.inputs: list[str] = []  # every file read, for reloads
        self.lookups: dict[str, LookupSettings] = {}
        self.tokens: dict[str, TokenSettings] = {}

    def problem(self, where: str, message: str) -> None:
        self.problems.append(f"{where}: {message}")

    # -- small typed readers ------------------------------------------------

    def regex(self, where: str, value: Any) -> re.Pattern[str] | None:
        if not isinstance(value, str) or not value:
            self.problem(where, f"expected a regex string, got {_show(value)}")
            return None
        try:
            return re.compile(value)
        except re.error as error:
            self.problem(where, f"invalid regex {_show(value)} ({error})")
            return None

    def string(self, where: str, value: Any) -> str | None:
        if not isinstance(value, str) or not value:
            self.problem(where, f"expected a non-empty string, got {_show(value)}")
            return None
        return value

    def unknown_keys(self, where: str, table: Mapping[str, Any], known: Any) -> None:
        for key in table:
            if key not in known:
                self.problem(where, f"unknown key {key!r}")

    # -- files --------------------------------------------------------------

    def read_document(self, path: Path) -> dict[str, Any] | None:
        self.inputs.append(str(path))
        try:
            data = path.read_bytes()
        except OSError as error:
            self.problem(str(path), f"cannot read ({error.strerror})")
            return None
        self.digest.update(path.name.encode() + b"\0" + data + b"\0")
        try:
            return tomllib.loads(data.decode("utf-8"))
        except UnicodeDecodeError as error:
            self.problem(str(path), f"not UTF-8 ({error})")
        except tomllib.TOMLDecodeError as error:
            self.problem(str(path), f"invalid TOML ({error})")
        return None

    def check_top_level(self, path: Path, document: Mapping[str, Any]) -> None:
        for key in document:
            if key not in ("rule", "table", "kaltura", "lookup", "jwt"):
                self.problem(str(path), f"unknown top-level key {key!r}")

    def duration(self, where: str, value: Any, default: float) -> float:
        """``"300ms"``, ``"30s"``, ``"10m"``, ``"1h"``, or a number of seconds."""
        if value is None:
            return default
        if isinstance(value, int | float) and not isinstance(value, bool):
            seconds = float(value)
        else:
            match = _DURATION.fullmatch(value) if isinstance(value, str) else None
            if match is None:
                self.problem(
                    where,
                    f"expected a duration such as '300ms', '30s', '10m' or '1h', "
                    f"got {_show(value)}",
                )
                return default
            seconds = float(match[1]) * _DURATION_UNITS[match[2]]
        if seconds < 0:
            self.problem(where, f"expected a duration of 0 or more, got {_show(value)}")
            return default
        return seconds

    # -- [jwt.NAME] ---------------------------------------------------------

    def load_tokens(self, path: Path, document: Mapping[str, Any]) -> None:
        sections = document.get("jwt", {})
        if not isinstance(sections, dict):
            self.problem(f"{path}: jwt", "expected [jwt.NAME] sections")
            return
        for name, spec in sections.items():
            where = f"{path}: jwt {name!r}"
            if name in self.tokens:
                self.problem(where, "defined twice")
            elif not isinstance(spec, dict):
                self.problem(where, "expected a table with 'algorithms' and a key")
            else:
                settings = self.token_settings(where, path, name, spec)
                if settings is not None:
                    self.tokens[name] = settings

    def token_settings(
        self, where: str, path: Path, name: str, spec: Mapping[str, Any]
    ) -> TokenSettings | None:
        self.unknown_keys(where, spec, _TOKEN_KEYS)
        problems_before = len(self.problems)

        algorithms = spec.get("algorithms")
        known = SYMMETRIC | ASYMMETRIC
        if (
            not isinstance(algorithms, list)
            or not algorithms
            or not all(a in known for a in algorithms)
        ):
            self.problem(
                f"{where}: algorithms",
                f"expected a list of {', '.join(sorted(known))}, "
                f"got {_show(algorithms)}",
            )
            algorithms = []
        elif not (set(algorithms) <= SYMMETRIC or set(algorithms) <= ASYMMETRIC):
            # one key cannot be both a shared secret and a public key
            self.problem(
                f"{where}: algorithms",
                f"mixes shared-secret (HS) and public-key algorithms: {algorithms}",
            )

        verify = spec.get("verify", True)
        if not isinstance(verify, bool):
            self.problem(
                f"{where}: verify", f"expected true or false, got {_show(verify)}"
            )
            verify = True

        key = self.token_key(where, path, spec) if verify else None
        if verify and key is None and len(self.problems) == problems_before:
            self.problem(
                where,
                "give 'key_file' or 'key_env' for the signature check "
                "(or write verify = false)",
            )

        texts = {}
        for option in ("audience", "issuer"):
            value = spec.get(option)
            if value is not None:
                texts[option] = self.string(f"{where}: {option}", value)

        leeway = self.duration(f"{where}: leeway", spec.get("leeway"), 0.0)
        if len(self.problems) > problems_before:
            return None
        return TokenSettings(
            name,
            tuple(algorithms),
            key,
            verify,
            texts.get("audience"),
            texts.get("issuer"),
            leeway,
        )

    def token_key(self, where: str, path: Path, spec: Mapping[str, Any]) -> str | None:
        """The key, from a file next to the rules or an environment variable."""
        if "key_file" in spec and "key_env" in spec:
            self.problem(where, "give one of 'key_file' and 'key_env', not both")
            return None
        if "key_file" in spec:
            name = self.string(f"{where}: key_file", spec["key_file"])
            if name is None:
                return None
            key_path = path.parent / name
            self.inputs.append(str(key_path))
            try:
                return key_path.read_text(encoding="utf-8")
            except (OSError, UnicodeDecodeError) as error:
                self.problem(
                    f"{where}: key_file", f"cannot read {str(key_path)!r} ({error})"
                )
                return None
        if "key_env" in spec:
            variable = self.string(f"{where}: key_env", spec["key_env"])
            if variable is None:
                return None
            value = os.environ.get(variable)
            if not value:
                self.problem(
                    f"{where}: key_env", f"environment variable {variable!r} is not set"
                )
            return value or None
        return None

    # -- [lookup.NAME] ------------------------------------------------------

    def load_lookups(self, path: Path, document: Mapping[str, Any]) -> None:
        lookups = document.get("lookup", {})
        if not isinstance(lookups, dict):
            self.problem(f"{path}: lookup", "expected [lookup.NAME] sections")
            return
        for name, spec in lookups.items():
            where = f"{path}: lookup {name!r}"
            if name in self.lookups:
                self.problem(where, "defined twice")
            elif not isinstance(spec, dict):
                self.problem(where, "expected a table with 'url', 'forward_cookies'")
            else:
                settings = self.lookup(where, name, spec)
                if settings is not None:
                    self.lookups[name] = settings

    def lookup(
        self, where: str, name: str, spec: Mapping[str, Any]
    ) -> LookupSettings | None:
        self.unknown_keys(where, spec, _LOOKUP_KEYS)
        problems_before = len(self.problems)

        url = spec.get("url")
        parts = urlsplit(url) if isinstance(url, str) else None
        if parts is None or parts.scheme not in ("http", "https") or not parts.netloc:
            self.problem(f"{where}: url", f"expected an http(s) URL, got {_show(url)}")

        cookies = spec.get("forward_cookies")
        if (
            not isinstance(cookies, list)
            or not cookies
            or not all(
                isinstance(c, str) and _COOKIE_NAME.fullmatch(c) for c in cookies
            )
        ):
            self.problem(
                f"{where}: forward_cookies",
                f"expected a list of cookie names (a trailing '*' takes a prefix), "
                f"got {_show(cookies)}",
            )
            cookies = []

        field_path: tuple[str, ...] = ()
        raw_field = spec.get("field")
        if not isinstance(raw_field, str) or not all(raw_field.split(".")):
            self.problem(
                f"{where}: field",
                f"expected a key of the JSON answer such as 'username' or "
                f"'d.LoginName', got {_show(raw_field)}",
            )
        else:
            field_path = tuple(raw_field.split("."))

        pattern = None
        if "pattern" in spec:
            pattern = self.regex(f"{where}: pattern", spec["pattern"])

        headers: list[tuple[str, str]] = []
        raw_headers = spec.get("headers", {})
        if not isinstance(raw_headers, dict) or not all(
            isinstance(v, str) and "\r" not in v and "\n" not in v
            for v in raw_headers.values()
        ):
            self.problem(
                f"{where}: headers",
                f"expected a table of header = value, got {_show(raw_headers)}",
            )
        else:
            headers = list(raw_headers.items())

        max_entries = spec.get("max_entries", 10_000)
        if (
            isinstance(max_entries, bool)
            or not isinstance(max_entries, int)
            or (max_entries < 1)
        ):
            self.problem(
                f"{where}: max_entries",
                f"expected a positive integer, got {_show(max_entries)}",
            )
            max_entries = 10_000

        settings = LookupSettings(
            name=name,
            url=url if isinstance(url, str) else "",
            forward_cookies=tuple(cookies),
            field_path=field_path,
            pattern=pattern,
            headers=tuple(headers),
            ttl=self.duration(f"{where}: ttl", spec.get("ttl"), 600.0),
            negative_ttl=self.duration(
                f"{where}: negative_ttl", spec.get("negative_ttl"), 30.0
            ),
            timeout=self.duration(f"{where}: timeout", spec.get("timeout"), 0.3),
            max_entries=max_entries,
        )
        if settings.timeout == 0:
            self.problem(f"{where}: timeout", "expected a duration above 0")
        if len(self.problems) > problems_before:
            return None
        return settings

    # -- [table.NAME] -------------------------------------------------------

    def load_tables(self, path: Path, document: Mapping[str, Any]) -> None:
        tables = document.get("table", {})
        if not isinstance(tables, dict):
            self.problem(f"{path}: table", "expected [table.NAME] sections")
            return
        for name, spec in tables.items():
            where = f"{path}: table {name!r}"
            if name in self.tables:
                self.problem(where, "defined twice")
            elif not isinstance(spec, dict):
                self.problem(where, "expected a table with 'entries' or 'file'")
            else:
                entries = self.table_entries(where, path, spec)
                if entries is not None:
                    self.tables[name] = MappingProxyType(entries)

    def table_entries(
        self, where: str, path: Path, spec: Mapping[str, Any]
    ) -> dict[str, str] | None:
        self.unknown_keys(where, spec, ("entries", "file"))
        if ("entries" in spec) == ("file" in spec):
            self.problem(where, "give exactly one of 'entries' and 'file'")
            return None

        if "entries" in spec:
            raw = spec["entries"]
            if not isinstance(raw, dict):
                self.problem(f"{where}: entries", f"expected a table, got {_show(raw)}")
                return None
            rows: list[tuple[str, Any]] | None = list(raw.items())
        else:
            name = self.string(f"{where}: file", spec["file"])
            if name is None:
                return None
            rows = self.csv_rows(f"{where}: file", path.parent / name)
        if rows is None:
            return None

        entries: dict[str, str] = {}
        for key, value in rows:
            if isinstance(value, bool) or not isinstance(value, str | int):
                self.problem(
                    f"{where}: entry {key!r}",
                    f"expected a string or integer, got {_show(value)}",
                )
            else:
                entries[str(key)] = str(value)
        return entries

    def csv_rows(self, where: str, path: Path) -> list[tuple[str, Any]] | None:
        """Two columns, key then value; blank lines and ``#`` lines skipped."""
        self.inputs.append(str(path))
        try:
            data = path.read_bytes()
            text = data.decode("utf-8-sig")
        except (OSError, UnicodeDecodeError) as error:
            self.problem(where, f"cannot read {str(path)!r} ({error})")
            return None
        self.digest.update(path.name.encode() + b"\0" + data + b"\0")

        rows: list[tuple[str, Any]] = []
        for number, row in enumerate(csv.reader(io.StringIO(text)), start=1):
            if not row or not "".join(row).strip() or row[0].startswith("#"):
                continue
            if len(row) != 2:
                self.problem(
                    f"{where}: {path.name} line {number}",
                    f"expected 2 columns, got {len(row)}",
                )
                continue
            rows.append((row[0].strip(), row[1].strip()))
        return rows

    # -- [kaltura] ----------------------------------------------------------

    def load_kaltura(self, path: Path, document: Mapping[str, Any]) -> None:
        if "kaltura" not in document:
            return
        where = f"{path}: [kaltura]"
        spec = document["kaltura"]
        if self.kaltura is not None:
            self.problem(where, f"already given in {self.kaltura_origin}")
            return
        if not isinstance(spec, dict):
            self.problem(where, "expected a table")
            return
        self.unknown_keys(
            where, spec, ("partner_id", "service_url", "widget_ks", "normalize")
        )

        partner_id = spec.get("partner_id")
        if partner_id is not None and (
            isinstance(partner_id, bool)
            or not isinstance(partner_id, int)
            or partner_id <= 0
        ):
            self.problem(
                f"{where}: partner_id",
                f"expected a positive integer, got {_show(partner_id)}",
            )
            partner_id = None

        service_url = spec.get("service_url")
        if service_url is not None:
            parts = urlsplit(service_url) if isinstance(service_url, str) else None
            if (
                parts is None
                or parts.scheme not in ("http", "https")
                or not parts.netloc
            ):
                self.problem(
                    f"{where}: service_url",
                    f"expected an http(s) URL, got {_show(service_url)}",
                )
                service_url = None

        widget_ks = spec.get("widget_ks", True)
        if not isinstance(widget_ks, bool):
            self.problem(
                f"{where}: widget_ks", f"expected true or false, got {_show(widget_ks)}"
            )
            widget_ks = True

        normalize = spec.get("normalize", "none")
        if normalize not in ("get", "none"):
            self.problem(
                f"{where}: normalize",
                f"expected 'get' or 'none', got {_show(normalize)}",
            )
        self.kaltura = KalturaSettings(
            partner_id, service_url, widget_ks, normalize_get=normalize == "get"
        )
        self.kaltura_origin = str(path)

    # -- [[rule]] -----------------------------------------------------------

    def load_rules(self, path: Path, document: Mapping[str, Any]) -> list[Rule]:
        specs = document.get("rule", [])
        if not isinstance(specs, list):
            self.problem(f"{path}: rule", "expected [[rule]] entries")
            return []
        rules = []
        for position, spec in enumerate(specs, start=1):
            rule = self.rule(path, position, spec)
            if rule is not None:
                rules.append(rule)
        return rules

    def rule(self, path: Path, position: int, spec: Any) -> Rule | None:
        where = f"{path}: rule #{position}"
        if not isinstance(spec, dict):
            self.problem(where, "expected a table")
            return None

        name = spec.get("name")
        if not isinstance(name, str) or not _NAME.fullmatch(name):
            self.problem(
                f"{where}: name",
                f"expected 1-64 letters, digits, '_', '.' or '-', got {_show(name)}",
            )
            name = f"#{position}"
        elif name in self.rule_names:
            self.problem(f"{where}: name", f"rule {name!r} is defined twice")
        else:
            self.rule_names.add(name)
            where = f"{path}: rule {name!r}"

        known = ("name", "when", "policy", *FIELDS)
        self.unknown_keys(where, spec, known)
        problems_before = len(self.problems)

        when = self.condition(where, spec.get("when", {}))
        sources = {
            field: self.sources(f"{where}: {field}", spec[field])
            for field in FIELDS
            if field in spec
        }
        policies = self.policies(f"{where}: policy", spec.get("policy", {}))

        if len(self.problems) > problems_before:
            return None
        return Rule(
            name=name,
            origin=str(path),
            when=when,
            sources=MappingProxyType(sources),
            policies=MappingProxyType(policies),
        )

    def condition(self, where: str, spec: Any) -> Condition:
        if not isinstance(spec, dict):
            self.problem(f"{where}: when", f"expected a table, got {_show(spec)}")
            return Condition()
        self.unknown_keys(
            f"{where}: when", spec, ("page", "host", "path", "partner", "header")
        )

        page = (
            self.regex(f"{where}: when.page", spec["page"]) if "page" in spec else None
        )
        host = (
            self.regex(f"{where}: when.host", spec["host"]) if "host" in spec else None
        )

        path = None
        if "path" in spec:
            path = self.string(f"{where}: when.path", spec["path"])
            if path is not None and not path.startswith("/"):
                self.problem(
                    f"{where}: when.path",
                    f"expected a path starting with '/', got {_show(path)}",
                )

        partners = None
        if "partner" in spec:
            raw = spec["partner"]
            values = raw if isinstance(raw, list) else [raw]
            if not values or not all(
                isinstance(v, int) and not isinstance(v, bool) and v > 0 for v in values
            ):
                self.problem(
                    f"{where}: when.partner",
                    f"expected a partner id or a list of them, got {_show(raw)}",
                )
            else:
                partners = frozenset(str(v) for v in values)

        headers: list[tuple[str, re.Pattern[str]]] = []
        raw_headers = spec.get("header", {})
        if not isinstance(raw_headers, dict):
            self.problem(
                f"{where}: when.header",
                f"expected a table of header = regex, got {_show(raw_headers)}",
            )
        else:
            for header, regex in raw_headers.items():
                pattern = self.regex(f"{where}: when.header.{header}", regex)
                if pattern is not None:
                    headers.append((header, pattern))

        return Condition(page, host, path, partners, tuple(headers))

    def policies(self, where: str, spec: Any) -> dict[Field, Policy]:
        if not isinstance(spec, dict):
            self.problem(where, f"expected a table, got {_show(spec)}")
            return {}
        policies: dict[Field, Policy] = {}
        for key, value in spec.items():
            if key not in FIELDS:
                self.problem(f"{where}.{key}", "unknown field")
            elif value not in ("fill", "override"):
                self.problem(
                    f"{where}.{key}",
                    f"expected 'fill' or 'override', got {_show(value)}",
                )
            else:
                policies[Field(key)] = Policy(value)
        return policies

    def sources(self, where: str, spec: Any) -> tuple[Source, ...]:
        if not isinstance(spec, list):
            self.problem(where, f"expected a list of sources, got {_show(spec)}")
            return ()
        sources = []
        for position, item in enumerate(spec, start=1):
            source = self.source(f"{where}[{position}]", item)
            if source is not None:
                sources.append(source)
        return tuple(sources)

    def source(self, where: str, spec: Any) -> Source | None:
        if not isinstance(spec, dict):
            self.problem(
                where, f"expected a table such as {{ value = ... }}, got {_show(spec)}"
            )
            return None
        if "entry_category" in spec:
            return self.entry_category(where, spec)
        network = [key for key in ("lookup", "category") if key in spec]
        if len(network) > 1:
            self.problem(where, "give at most one of 'lookup' and 'category'")
            return None
        self.unknown_keys(where, spec, (*_READERS, *_MODIFIERS, *network))

        readers = [key for key in _READERS if key in spec]
        if len(readers) != 1:
            self.problem(
                where,
                f"expected exactly one of {', '.join(_READERS)}, "
                f"got {readers or 'none'}",
            )
            return None
        kind = readers[0]
        read = self.reader(f"{where}.{kind}", kind, spec[kind])

        pattern = None
        if kind == "page":
            pattern = self.regex(f"{where}.page", spec["page"])
            if "pattern" in spec:
                self.problem(
                    f"{where}.pattern",
                    "a page source is a regex already: put the group there",
                )
        elif "pattern" in spec:
            pattern = self.regex(f"{where}.pattern", spec["pattern"])

        decode = None
        if "decode" in spec:
            try:
                decode = Decoding(spec["decode"])
            except ValueError:
                allowed = ", ".join(d.value for d in Decoding)
                self.problem(
                    f"{where}.decode",
                    f"expected one of {allowed}, got {_show(spec['decode'])}",
                )
        token = self.token_claim(where, spec, decode)

        table = None
        if "table" in spec:
            table = self.tables.get(spec["table"])
            if table is None:
                self.problem(f"{where}.table", f"no table named {_show(spec['table'])}")

        if read is None or (kind == "page" and pattern is None):
            return None
        if "lookup" in network:
            return self.lookup_source(where, kind, spec, LocalSource(kind, read), table)
        if "category" in network:
            template = self.string(f"{where}.category", spec["category"])
            if template is None:
                return None
            local = LocalSource(kind, read, pattern, decode)
            return CategorySource(local, template, self.kaltura_settings, table)
        return LocalSource(kind, read, pattern, decode, table, token)

    def token_claim(
        self, where: str, spec: Mapping[str, Any], decode: Decoding | None
    ) -> TokenClaim | None:
        if decode is not Decoding.JWT:
            for key in ("jwt", "claim"):
                if key in spec:
                    self.problem(f"{where}.{key}", "only for decode = 'jwt'")
            return None
        if "jwt" not in spec:
            self.problem(where, "decode = 'jwt' needs jwt = NAME of a [jwt.NAME]")
            return None
        settings = self.tokens.get(spec["jwt"])
        if settings is None:
            self.problem(f"{where}.jwt", f"no [jwt] section named {_show(spec['jwt'])}")
            return None
        claim = self.string(f"{where}.claim", spec.get("claim", "sub"))
        return None if claim is None else TokenClaim(settings, claim)

    @property
    def kaltura_settings(self) -> KalturaSettings:
        return self.kaltura or KalturaSettings()

    def lookup_source(
        self,
        where: str,
        kind: str,
        spec: Mapping[str, Any],
        trigger: LocalSource,
        table: Mapping[str, str] | None,
    ) -> Source | None:
        if kind not in ("cookie", "header"):
            self.problem(
                f"{where}.lookup",
                f"a lookup is made for a cookie or a header, not a {kind!r} source",
            )
            return None
        for key in ("pattern", "decode"):
            if key in spec:
                self.problem(
                    f"{where}.{key}",
                    "a lookup's answer is refined in its [lookup] section "
                    "('pattern'), not in the source",
                )
                return None
        settings = self.lookups.get(spec["lookup"])
        if settings is None:
            self.problem(f"{where}.lookup", f"no lookup named {_show(spec['lookup'])}")
            return None
        return LookupSource(trigger, settings, table)

    def entry_category(self, where: str, spec: Mapping[str, Any]) -> Source | None:
        self.unknown_keys(where, spec, ("entry_category", "table"))
        prefix = self.string(f"{where}.entry_category", spec["entry_category"])
        table = None
        if "table" in spec:
            table = self.tables.get(spec["table"])
            if table is None:
                self.problem(f"{where}.table", f"no table named {_show(spec['table'])}")
        if prefix is None or ("table" in spec and table is None):
            return None
        return EntryCategorySource(prefix, self.kaltura_settings, table)

    def reader(self, where: str, kind: str, value: Any) -> Reader | None:
        if kind == "value":
            if isinstance(value, bool) or not isinstance(value, str | int):
                self.problem(where, f"expected a string or integer, got {_show(value)}")
                return None
            return read_literal(str(value))
        if kind == "page":
            return read_page  # its regex becomes the source's pattern
        if kind == "ks":
            if value != "request":
                self.problem(where, f"expected 'request', got {_show(value)}")
                return None
            return read_request_ks

        name = self.string(where, value)
        if name is None:
            return None
        if kind == "header":
            return read_header(name)
        if kind == "cookie":
            return read_cookie(name)
        return read_query(name)


def rules_files(path: Path) -> list[Path]:
    """The files a rules path names: itself, or its ``*.toml`` in name order."""
    if path.is_dir():
        return sorted(p for p in path.glob("*.toml") if p.is_file())
    return [path]


def load_rules(path: Path | str) -> RuleSet:
    """Read and validate every rules file under ``path``.

    Raises :class:`RulesError` with every problem found; nothing partial is
    ever returned.
    """
    path = Path(path)
    loader = _Loader()
    if not path.exists():
        raise RulesError([f"{path}: no such file or directory"])
    files = rules_files(path)
    if not files:
        raise RulesError([f"{path}: no *.toml rules files in this directory"])

    # tables and [kaltura] first: rules in any file may use them
    documents = [(file, loader.read_document(file)) for file in files]
    for file, document in documents:
        if document is not None:
            loader.check_top_level(file, document)
            loader.load_tables(file, document)
            loader.load_kaltura(file, document)
            loader.load_lookups(file, document)
            loader.load_tokens(file, document)

    rules: list[Rule] = []
    for file, document in documents:
        if document is not None:
            rules.extend(loader.load_rules(file, document))

    if loader.problems:
        raise RulesError(loader.problems)
    return RuleSet(
        rules=tuple(rules),
        kaltura=loader.kaltura or KalturaSettings(),
        tables=MappingProxyType(loader.tables),
        files=tuple(str(file) for file in files),
        inputs=tuple(dict.fromkeys(loader.inputs)),
        lookups=MappingProxyType(loader.lookups),
        digest=loader.digest.hexdigest()[:12],
    )
