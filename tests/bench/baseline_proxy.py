"""The baseline of the benchmark: a straightforward aiohttp enriching proxy.

This is what one would write first: an aiohttp.web application with a
catch-all route and one shared ClientSession, which parses the query (or
the JSON body of a KAVA POST), adds userId, applicationName and
playbackContext when missing, and forwards the request. It keeps none of
kstats-proxy's guarantees (encodings, byte-for-byte pass-through, header
policy); it only sets the cost a straightforward Python proxy pays.

Run: ``python baseline_proxy.py PORT UPSTREAM_URL``.
"""

from __future__ import annotations

import re
import sys
from urllib.parse import unquote

import aiohttp
import orjson
from aiohttp import web

COURSE = re.compile(r"/course/(\d+)")
HOP_BY_HOP = {"connection", "keep-alive", "transfer-encoding", "host", "content-length"}


def missing_fields(request: web.Request, referrer: str) -> dict[str, str]:
    fields = {"applicationName": "Moodle"}
    session = request.cookies.get("MoodleSession")
    if session:
        fields["userId"] = session
    course = COURSE.search(unquote(unquote(referrer)))
    if course:
        fields["playbackContext"] = course.group(1)
    return fields


async def handle(request: web.Request) -> web.StreamResponse:
    session: aiohttp.ClientSession = request.app["session"]
    query = dict(request.query)
    body = await request.read()

    if query.get("service") == "stats":
        referrer = query.get("event:referrer", "")
        names = {"userId": "userId", "applicationName": "applicationId"}
        names["playbackContext"] = "contextId"
        for field, value in missing_fields(request, referrer).items():
            query.setdefault(f"event:{names[field]}", value)
    elif query.get("service") == "analytics" and body:
        document = orjson.loads(body)
        fields = missing_fields(request, document.get("referrer", ""))
        document.setdefault("userId", fields.get("userId"))
        document.setdefault("application", fields["applicationName"])
        document.setdefault("playbackContext", fields.get("playbackContext"))
        body = orjson.dumps(document)

    headers = {k: v for k, v in request.headers.items() if k.lower() not in HOP_BY_HOP}
    async with session.request(
        request.method,
        request.app["upstream"] + request.path,
        params=query,
        headers=headers,
        data=body or None,
    ) as upstream:
        if not request.path.startswith("/api_v3/"):
            # files stream through in chunks
            response = web.StreamResponse(status=upstream.status)
            response.content_type = upstream.content_type
            if upstream.content_length is not None:
                response.content_length = upstream.content_length
            await response.prepare(request)
            async for chunk in upstream.content.iter_chunked(65536):
                await response.write(chunk)
            await response.write_eof()
            return response
        payload = await upstream.read()
        return web.Response(
            status=upstream.status,
            body=payload,
            content_type=upstream.content_type,
        )


async def make_app(upstream: str) -> web.Application:
    app = web.Application()
    app["upstream"] = upstream.rstrip("/")

    async def session_context(app: web.Application):  # type: ignore[no-untyped-def]
        app["session"] = aiohttp.ClientSession()
        yield
        await app["session"].close()

    app.cleanup_ctx.append(session_context)
    app.router.add_route("*", "/{tail:.*}", handle)
    return app


if __name__ == "__main__":
    port, upstream_url = int(sys.argv[1]), sys.argv[2]
    web.run_app(make_app(upstream_url), host="127.0.0.1", port=port, access_log=None)
