"""``kstats-proxy replay``: recorded traffic through the rules, as a coverage report.

An operator who changes the rules wants to know, before deploying them,
what they would do to real traffic. ``replay`` reads recorded requests
(the JSON Lines format of :mod:`proxy.records`), runs each through
:func:`~proxy.explain.explain_request` (a dry run: nothing is sent) and
counts:

- per field (userId, applicationName, playbackContext): how many events
  had it already (``present``; a KS that names the user counts), how many
  gained it (``added``, by the kind of source that gave it), how many
  still miss it; values a rule with policy ``override`` replaced, values
  dropped as invalid, and missing fields that a network source might have
  given (network sources are not called in a dry run);
- per rule: how many events it matched and how many values it wrote;
- requests without events (pass-through traffic), by reason, apart from
  the coverage.

:func:`replay_records` builds a :class:`CoverageReport`;
:func:`render_coverage` prints it as aligned text, :func:`coverage_json`
as one JSON document. With ``keep_changes`` the report also keeps each
request's change, which ``--diff`` prints.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

import orjson

from proxy.columns import align_columns, shorten
from proxy.enrich import SOURCE_KS
from proxy.explain import (
    DRY_RUN_NOTE,
    EventReport,
    Explanation,
    FieldStatus,
    change_document,
    change_lines,
    event_document,
    event_heading,
    explain_request,
    field_row,
    kind_line,
)
from proxy.kaltura.fields import FIELDS, Field
from proxy.kaltura.recognise import RequestKind, recognise
from proxy.kaltura.session import KsReader
from proxy.normalize import DEFAULT_MAX_LINE, normalise
from proxy.pipeline import Credit, credit
from proxy.records import TrafficRecord
from proxy.rules.model import RuleSet


@dataclass(slots=True)
class FieldCoverage:
    """How one report field fared over every event replayed.

    ``present + added + missing`` is the number of events; ``replaced``
    counts those of ``present`` that a rule overrode, ``from_ks`` those
    whose KS names the user. ``missing_network`` counts the missing ones
    where a network source was reached but, in a dry run, not called;
    ``invalid`` the events where a rule's value was dropped as invalid.
    """

    present: int = 0
    from_ks: int = 0
    replaced: Counter[str] = field(default_factory=Counter)
    added: Counter[str] = field(default_factory=Counter)  # by source kind
    missing: int = 0
    missing_network: int = 0
    invalid: int = 0


@dataclass(slots=True)
class RuleCoverage:
    """How often one rule matched, and what it wrote."""

    name: str
    origin: str
    matched: int = 0
    written: Counter[Field] = field(default_factory=Counter)
    uncalled: int = 0  # its network sources reached and not called

    @property
    def values(self) -> int:
        return sum(self.written.values())


@dataclass(frozen=True, slots=True)
class RecordChange:
    """One replayed request and what the rules did to it, for ``--diff``."""

    seq: int
    label: str
    explanation: Explanation


@dataclass(slots=True)
class Fidelity:
    """How the legacy reports pipeline files a replay's events (proxy.pipeline)."""

    before: Counter[Credit] = field(default_factory=Counter)
    after: Counter[Credit] = field(default_factory=Counter)

    @staticmethod
    def share(counts: Counter[Credit]) -> float:
        total = sum(counts.values())
        return counts[Credit.VIEWER] / total if total else 0.0


def _credits(
    method: str,
    target: str,
    content_type: str | None,
    body: bytes,
    ks_reader: KsReader,
    *,
    normalize: bool,
    widget_ks: bool,
) -> list[Credit]:
    """One credit per event of a request as it would leave the proxy."""
    recognised = recognise(method, target, content_type, body or None)
    if not recognised.events or recognised.kind is RequestKind.KAVA:
        return []  # KAVA events go to another pipeline
    if normalize:
        normalised = normalise(recognised, method, max_line=DEFAULT_MAX_LINE)
        if not isinstance(normalised, str):
            return [
                credit("GET", get.target, ks_reader, widget_ks=widget_ks).credit
                for get in normalised.gets
            ]
    if recognised.kind is RequestKind.STATS:
        return [credit(method, target, ks_reader, widget_ks=widget_ks).credit]
    return [Credit.UNSEEN for _ in recognised.events]


@dataclass(slots=True)
class CoverageReport:
    """The counts of one replay.

    ``requests`` is every record read; ``event_requests`` those holding at
    least one event, ``events`` the events in them. ``passed_through``
    counts the others by reason. ``changes`` is None unless the replay kept
    them.
    """

    records_path: str
    rules_path: str
    rules_digest: str
    requests: int = 0
    event_requests: int = 0
    events: int = 0
    passed_through: Counter[str] = field(default_factory=Counter)
    fields: dict[Field, FieldCoverage] = field(default_factory=dict)
    rules: dict[str, RuleCoverage] = field(default_factory=dict)
    changes: list[RecordChange] | None = None
    fidelity: Fidelity = field(default_factory=Fidelity)
    normalize: bool = False

    def count(self, explanation: Explanation) -> None:
        """Add one request's explanation to the counts."""
        self.requests += 1
        if explanation.passed_through is not None:
            self.passed_through[explanation.passed_through] += 1
            return
        self.event_requests += 1
        for event in explanation.events:
            self._count_event(event)

    def _count_event(self, event: EventReport) -> None:
        self.events += 1
        for name in event.matched:
            self.rules[name].matched += 1

        for report in event.fields:
            coverage = self.fields[report.field]
            status = report.status
            if status is FieldStatus.MISSING:
                coverage.missing += 1
                coverage.missing_network += bool(report.uncalled)
            elif status is FieldStatus.ADDED:
                coverage.added[report.source] += 1
            else:
                coverage.present += 1
                coverage.from_ks += report.source == SOURCE_KS
                if status is FieldStatus.REPLACED:
                    coverage.replaced[report.source] += 1
            coverage.invalid += bool(report.invalid)

            if report.rule is not None and status in (
                FieldStatus.ADDED,
                FieldStatus.REPLACED,
            ):
                self.rules[report.rule].written[report.field] += 1
            for uncalled in report.uncalled:
                self.rules[uncalled.rule].uncalled += 1


async def replay_records(
    rules: RuleSet,
    records: Iterable[TrafficRecord],
    *,
    records_path: str,
    rules_path: str,
    ks_reader: KsReader | None = None,
    keep_changes: bool = False,
    normalize: bool | None = None,
) -> CoverageReport:
    """Run every record through the rules, sending nothing; count the outcome.

    ``records`` is read lazily, so a large file is replayed in flat memory
    unless ``keep_changes`` keeps every request's explanation. A
    :class:`~proxy.records.RecordError` from ``records`` propagates.
    """
    ks_reader = ks_reader or KsReader()
    if normalize is None:
        normalize = rules.kaltura.normalize_get
    report = CoverageReport(
        records_path,
        rules_path,
        rules.digest,
        fields={f: FieldCoverage() for f in FIELDS},
        rules={r.name: RuleCoverage(r.name, r.origin) for r in rules.rules},
        changes=[] if keep_changes else None,
        normalize=normalize,
    )
    for record in records:
        explanation = await explain_request(
            rules,
            ks_reader,
            method=record.method,
            target=record.raw_path,
            headers=record.headers,
            body=record.body,
        )
        report.count(explanation)
        if explanation.passed_through is None:
            content_type = next(
                (v for k, v in record.headers if k.lower() == "content-type"), None
            )
            # as recorded, and as the proxy would send it (a widget KS
            # assumed where the proxy would attach one)
            report.fidelity.before.update(
                _credits(
                    record.method,
                    record.raw_path,
                    content_type,
                    record.body,
                    ks_reader,
                    normalize=False,
                    widget_ks=False,
                )
            )
            report.fidelity.after.update(
                _credits(
                    record.method,
                    explanation.target,
                    content_type,
                    explanation.body,
                    ks_reader,
                    normalize=normalize,
                    widget_ks=rules.kaltura.widget_ks,
                )
            )
        if report.changes is not None:
            report.changes.append(RecordChange(record.seq, record.label, explanation))
    return report


# -- text ------------------------------------------------------------------------


def _plural(count: int, noun: str) -> str:
    return f"{count} {noun}{'' if count == 1 else 's'}"


def _by_kind(counts: Counter[str] | Counter[Field]) -> str:
    """``header 3, value 2``: most first, then by name; ``-`` when empty."""
    ordered = sorted(counts.items(), key=lambda item: (-item[1], str(item[0])))
    return ", ".join(f"{kind} {count}" for kind, count in ordered) or "-"


def _field_lines(report: CoverageReport) -> list[str]:
    rows = [["field", "present", "added", "missing", "added from"]]
    for name, coverage in report.fields.items():
        added = sum(coverage.added.values())
        rows.append(
            [
                name,
                str(coverage.present),
                str(added),
                str(coverage.missing),
                _by_kind(coverage.added),
            ]
        )
    lines = align_columns(rows, right={1, 2, 3})

    # what the columns do not show
    for name, coverage in report.fields.items():
        if coverage.from_ks:
            lines.append(
                f"  {name}: {coverage.from_ks} present from a KS naming the user"
            )
        if coverage.replaced:
            replaced = sum(coverage.replaced.values())
            lines.append(
                f"  {name}: {replaced} present replaced by policy override "
                f"({_by_kind(coverage.replaced)})"
            )
        if coverage.invalid:
            lines.append(
                f"  {name}: {_plural(coverage.invalid, 'event')} with an invalid "
                "value dropped"
            )
        if coverage.missing_network:
            lines.append(
                f"  {name}: {coverage.missing_network} missing where a network "
                "source was not called"
            )
    return lines


def _rule_lines(report: CoverageReport) -> list[str]:
    rows = [["rule", "matched", "added", "values added"]]
    for rule in report.rules.values():
        rows.append(
            [rule.name, str(rule.matched), str(rule.values), _by_kind(rule.written)]
        )
    lines = align_columns(rows, right={1, 2})
    for rule in report.rules.values():
        if rule.uncalled:
            lines.append(
                f"  {rule.name}: {_plural(rule.uncalled, 'network source')} "
                "reached, not called"
            )
    return lines


# The width of the first column of a ``--diff`` block: ``event 12``, ``target``.
_LABEL = 8


def _change_lines(change: RecordChange) -> list[str]:
    """One request's block of ``--diff``."""
    explanation = change.explanation
    heading = f"#{change.seq} {shorten(change.label, 60)}  {kind_line(explanation)}"
    if explanation.passed_through is not None:
        return [heading]

    # the fields that changed, or that a network source might have given
    target, body = explanation.target_change, explanation.body_change
    rows = []
    for event in explanation.events:
        shown = [f for f in event.fields if f.changed or f.uncalled]
        for n, report in enumerate(shown):
            label = event_heading(event) if n == 0 else ""
            rows.append([f"{label:<{_LABEL}}", *field_row(report)])
    if not rows and not target and not body:
        return [heading + ": no change"]

    # then the request's own change, its lines under the fields
    lines = [heading, *align_columns(rows, indent="  ")]
    for name, part in (("target", target), ("body", body)):
        for n, line in enumerate(change_lines(part)):
            label = name if n == 0 else ""
            lines.append(f"  {label:<{_LABEL}}  {line}")
    return lines


def _fidelity_lines(report: CoverageReport) -> list[str]:
    fidelity = report.fidelity
    rows = [("as recorded", fidelity.before), ("after the proxy", fidelity.after)]
    table = [
        [
            name,
            str(sum(counts.values())),
            f"{Fidelity.share(counts):.0%}",
            *(str(counts[c]) for c in (Credit.UNKNOWN, Credit.SKIPPED, Credit.UNSEEN)),
        ]
        for name, counts in rows
    ]
    mode = "on" if report.normalize else "off"
    return [
        f"legacy reports pipeline (PROTOCOL.md 1.5; --normalize get {mode}):",
        *align_columns(
            [["", "events", "credited", "unknown", "skipped", "unseen"], *table],
            right={1, 2, 3, 4, 5},
        ),
        "  credited: filed under a viewer; unknown: under Unknown (no KS, or a",
        "  KS without a user and no userId); skipped: event types 1, 12, 13;",
        "  unseen: POST bodies and multirequests, which it never reads. After the",
        "  proxy, a widget KS is assumed where the proxy would attach one.",
    ]


def render_coverage(report: CoverageReport) -> str:
    """The report as aligned text for a terminal, ending in a newline.

    With changes kept, each request's change comes first, and the counts
    last, where a terminal leaves them in view.
    """
    lines = []
    if report.changes is not None:
        for change in report.changes:
            lines += _change_lines(change)
        lines.append("")

    passed = sum(report.passed_through.values())
    passed_line = f"passed through: {passed}"
    if passed:
        passed_line += f" ({_by_kind(report.passed_through)})"
    lines += [
        f"kstats-proxy replay: {_plural(report.requests, 'request')} "
        f"from {report.records_path}",
        f"rules: {_plural(len(report.rules), 'rule')} from {report.rules_path} "
        f"(hash {report.rules_digest})",
        f"requests with events: {report.event_requests} "
        f"({_plural(report.events, 'event')}); {passed_line}",
        "",
        *_field_lines(report),
        "",
        *_rule_lines(report),
        "",
        *_fidelity_lines(report),
        "",
        DRY_RUN_NOTE,
    ]
    return "\n".join(lines) + "\n"


# -- JSON ------------------------------------------------------------------------


def _change_document(change: RecordChange) -> dict[str, Any]:
    explanation = change.explanation
    return {
        "seq": change.seq,
        "label": change.label,
        "kind": explanation.kind.value,
        "passed_through": explanation.passed_through,
        "events": [event_document(e) for e in explanation.events],
        "target": change_document(explanation.target_change),
        "body": change_document(explanation.body_change),
    }


def _fidelity_document(report: CoverageReport) -> dict[str, Any]:
    return {
        "normalize_get": report.normalize,
        **{
            name: {
                "events": sum(counts.values()),
                "credited_share": round(Fidelity.share(counts), 4),
                **{str(c): counts[c] for c in Credit},
            }
            for name, counts in (
                ("before", report.fidelity.before),
                ("after", report.fidelity.after),
            )
        },
    }


def coverage_json(report: CoverageReport) -> str:
    """The report as one JSON document, for machines."""
    fields = {
        name.value: {
            "present": coverage.present,
            "present_from_ks": coverage.from_ks,
            "replaced": sum(coverage.replaced.values()),
            "replaced_from": dict(coverage.replaced),
            "added": sum(coverage.added.values()),
            "added_from": dict(coverage.added),
            "missing": coverage.missing,
            "missing_network_not_called": coverage.missing_network,
            "invalid": coverage.invalid,
        }
        for name, coverage in report.fields.items()
    }
    rules = [
        {
            "name": rule.name,
            "file": rule.origin,
            "matched": rule.matched,
            "added": rule.values,
            "added_fields": {f.value: n for f, n in rule.written.items()},
            "network_sources_not_called": rule.uncalled,
        }
        for rule in report.rules.values()
    ]
    document: dict[str, Any] = {
        "records": report.records_path,
        "rules_path": report.rules_path,
        "rules_hash": report.rules_digest,
        "requests": report.requests,
        "event_requests": report.event_requests,
        "events": report.events,
        "passed_through": {
            "total": sum(report.passed_through.values()),
            "reasons": dict(report.passed_through),
        },
        "fields": fields,
        "rules": rules,
        "legacy_pipeline": _fidelity_document(report),
        "network_sources_called": False,
    }
    if report.changes is not None:
        document["changes"] = [_change_document(c) for c in report.changes]
    return orjson.dumps(document, option=orjson.OPT_INDENT_2).decode() + "\n"
