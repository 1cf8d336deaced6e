"""Stand-ins for the legacy applications' who-am-I pages, for the demo and tests.

The shipped rules ask two applications who a viewer is (INTEGRATIONS.md):

- Moodle, through a small local page such as ``/local/whoami/index.php``
  that answers ``{"id", "username", ...}`` for a signed-in
  ``MoodleSession`` cookie and 401 otherwise;
- SharePoint 2013, ``/_api/web/currentuser``, which answers the OData
  verbose JSON ``{"d": {"LoginName": "i:0#.f|membership|...", ...}}`` to
  a request with the ``FedAuth`` cookies and
  ``Accept: application/json;odata=verbose``, and XML otherwise.

:func:`make_legacy_app` serves both, under ``/moodle/`` and
``/sharepoint/``, from a table of known sessions.
:func:`point_lookups_at` copies a rules directory with the lookups' site
addresses replaced by such a stand-in's, so that nothing leaves the
machine. Neither is part of the proxy; they only let it be shown and
tested offline.
"""

from __future__ import annotations

import shutil
from dataclasses import dataclass, field
from pathlib import Path

from aiohttp import web

# the sites the shipped rules' lookups name, and where the stand-in serves each
SITES = {
    "https://moodle.example.edu/": "moodle/",
    "https://sp.example.edu/": "sharepoint/",
}


@dataclass
class LegacySessions:
    """Known sessions per application, and every who-am-I request received."""

    moodle: dict[str, str] = field(default_factory=dict)  # cookie -> username
    sharepoint: dict[str, str] = field(default_factory=dict)  # FedAuth -> login
    received: list[tuple[str, dict[str, str]]] = field(default_factory=list)


def make_legacy_app(sessions: LegacySessions) -> web.Application:
    """An aiohttp application serving both who-am-I pages."""

    async def moodle_whoami(request: web.Request) -> web.Response:
        sessions.received.append(("moodle", dict(request.headers)))
        user = sessions.moodle.get(request.cookies.get("MoodleSession", ""))
        if user is None:
            return web.Response(status=401, text="not signed in")
        return web.json_response(
            {"id": 2, "username": user, "idnumber": "", "email": f"{user}@example.edu"},
            headers={"Cache-Control": "no-store"},
        )

    async def sharepoint_currentuser(request: web.Request) -> web.Response:
        sessions.received.append(("sharepoint", dict(request.headers)))
        login = sessions.sharepoint.get(request.cookies.get("FedAuth", ""))
        if login is None:
            return web.Response(status=401, text="401 UNAUTHORIZED")
        if "odata=verbose" not in request.headers.get("Accept", ""):
            return web.Response(
                text=f"<entry><content><m:properties><d:LoginName>{login}"
                "</d:LoginName></m:properties></content></entry>",
                content_type="application/atom+xml",
            )
        return web.json_response(
            {"d": {"Id": 11, "LoginName": login, "Title": "Demo", "IsSiteAdmin": False}}
        )

    app = web.Application()
    app.router.add_get("/moodle/local/whoami/index.php", moodle_whoami)
    app.router.add_get("/sharepoint/_api/web/currentuser", sharepoint_currentuser)
    return app


def point_lookups_at(rules: Path, base_url: str, into: Path) -> Path:
    """A copy of the rules directory ``rules`` in ``into``, lookups at ``base_url``.

    Only ``url = ...`` lines change; every other byte is copied as it is.
    """
    into.mkdir(parents=True, exist_ok=True)
    for source in sorted(rules.iterdir()):
        if source.suffix != ".toml":
            shutil.copyfile(source, into / source.name)
            continue
        lines = source.read_text(encoding="utf-8").splitlines(keepends=True)
        for number, line in enumerate(lines):
            if line.startswith("url = "):
                for site, path in SITES.items():
                    line = line.replace(site, f"{base_url.rstrip('/')}/{path}")
                lines[number] = line
        (into / source.name).write_text("".join(lines), encoding="utf-8")
    return into
