"""The ``/status`` page: coverage since start, as bars, for people.

One self-contained HTML page (inline style, no script, no external asset)
on the admin listener. For all events, then per API and per rule, it
shows how many events the proxy saw and, for each report field, the share
that left with it present, as a bar and a percentage. A site without
Grafana can look here instead of reading ``/metrics``.
"""

from __future__ import annotations

import html
import time
from typing import Final

from proxy import __version__
from proxy.coverage import Coverage, CoverageRow
from proxy.kaltura.fields import FIELDS

_STYLE: Final = """
body { font: 15px/1.4 system-ui, sans-serif; margin: 2em; color: #1d2330; }
h1 { font-size: 1.4em; margin-bottom: 0.2em; }
h2 { font-size: 1.1em; margin-top: 1.8em; }
p.meta { color: #5b6475; margin-top: 0; }
table { border-collapse: collapse; }
th, td { padding: 0.35em 0.8em; text-align: left; vertical-align: middle; }
th { font-weight: 600; border-bottom: 1px solid #c9ced8; }
td.count { text-align: right; font-variant-numeric: tabular-nums; }
.bar { display: inline-block; width: 12em; height: 0.9em; background: #e6e9ef;
       vertical-align: middle; margin-right: 0.5em; }
.fill { display: block; height: 100%; background: #2f7d4f; }
.fill.low { background: #c0392b; }
.fill.mid { background: #d98e04; }
.share { display: inline-block; width: 3.5em; text-align: right;
         font-variant-numeric: tabular-nums; }
"""


def _bar(row: CoverageRow, index: int) -> str:
    share = row.share(FIELDS[index])
    percent = round(share * 100, 1)
    level = "low" if share < 0.5 else "mid" if share < 0.9 else ""
    return (
        f'<td><span class="bar" role="img" aria-label="{percent}%">'
        f'<span class="fill {level}" style="width: {percent}%"></span></span>'
        f'<span class="share">{percent}%</span></td>'
    )


def _table(rows: list[CoverageRow], first: str) -> str:
    if not rows:
        return "<p>No events yet.</p>"
    heads = "".join(f"<th>{name}</th>" for name in FIELDS)
    lines = [f"<table><tr><th>{first}</th><th>events</th>{heads}</tr>"]
    for row in rows:
        bars = "".join(_bar(row, i) for i in range(len(FIELDS)))
        lines.append(
            f"<tr><td>{html.escape(row.name)}</td>"
            f'<td class="count">{row.events:,}</td>{bars}</tr>'
        )
    lines.append("</table>")
    return "\n".join(lines)


def render_status(coverage: Coverage, *, started: float, rules_digest: str) -> str:
    """The page, as HTML text."""
    since = time.strftime("%Y-%m-%d %H:%M:%S UTC", time.gmtime(started))
    return f"""<!doctype html>
<html lang="en"><head><meta charset="utf-8">
<title>kstats-proxy status</title><style>{_STYLE}</style></head>
<body>
<h1>kstats-proxy: report fields coverage</h1>
<p class="meta">Since {since}; kstats-proxy {__version__}, rules {html.escape(rules_digest)}.
The share of events that left the proxy with each field present (their own,
decided by a KS, or added by a rule).</p>
<h2>All events</h2>
{_table(coverage.rows("all"), "scope")}
<h2>Per API</h2>
{_table(coverage.rows("api"), "api")}
<h2>Per rule (events the rule matched)</h2>
{_table(coverage.rows("rule"), "rule")}
</body></html>
"""
