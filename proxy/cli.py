"""The ``kstats-proxy`` command: serve, check, explain, replay and demo.

Every flag can also be given as an environment variable named
``KSTATS_<FLAG>``, upper case with dashes as underscores (``--upstream``
is ``KSTATS_UPSTREAM``); a flag on the command line wins.

Secrets never travel as flags, which other users of the machine can read:
the admin secrets for KS v2 come from ``KSTATS_ADMIN_SECRET`` or from the
file named by ``--admin-secret-file``.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from proxy import __version__
from proxy.app import ProxySettings
from proxy.kaltura.ks import AdminSecrets
from proxy.kaltura.session import KsReader
from proxy.log import configure_logging
from proxy.rules.loader import RulesError, load_rules
from proxy.rules.model import RuleSet
from proxy.serve import ServeConfig, run
from proxy.spool import DEFAULT_MAX_BYTES
from proxy.upstream.pool import Origin, PoolSettings

Header = tuple[str, str]


def _env(flag: str, default: str | None) -> str | None:
    name = "KSTATS_" + flag.lstrip("-").upper().replace("-", "_")
    return os.environ.get(name, default)


def _address(text: str) -> tuple[str, int]:
    host, colon, port = text.rpartition(":")
    if not colon or not port.isdigit() or not 0 <= int(port) <= 65535:
        raise argparse.ArgumentTypeError(f"expected HOST:PORT, got {text!r}")
    return host.strip("[]") or "0.0.0.0", int(port)


def _seconds(flag: str, text: str) -> float:
    value = float(text)
    if not 0 < value < float("inf"):
        raise ValueError(f"{flag}: expected seconds > 0, got {text!r}")
    return value


def _normalize(text: str) -> bool:
    if text not in ("get", "none"):
        raise ValueError(f"--normalize: expected get or none, got {text!r}")
    return text == "get"


def _yes_or_no(flag: str, text: str) -> bool:
    answer = text.strip().lower()
    if answer in ("yes", "true", "1", "on"):
        return True
    if answer in ("no", "false", "0", "off", ""):
        return False
    raise ValueError(f"{flag}: expected yes or no, got {text!r}")


def _names(text: str) -> frozenset[str]:
    return frozenset(name.strip() for name in text.split(",") if name.strip())


def _flag(
    parser: argparse.ArgumentParser, flag: str, default: str | None, help: str
) -> None:
    parser.add_argument(flag, default=_env(flag, default), help=help)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="kstats-proxy",
        description="Add userId, applicationName and playbackContext to Kaltura "
        "player statistics events.",
    )
    parser.add_argument("--version", action="version", version=__version__)
    commands = parser.add_subparsers(dest="command", required=True)

    serve = commands.add_parser("serve", help="run the proxy")
    _flag(serve, "--rules", "rules/", "rules file or directory (default rules/)")
    _flag(serve, "--listen", "0.0.0.0:8080", "public HOST:PORT (default 0.0.0.0:8080)")
    _flag(
        serve,
        "--upstream",
        "https://www.kaltura.com",
        "the Kaltura endpoint (default https://www.kaltura.com)",
    )
    _flag(
        serve,
        "--admin-listen",
        "0.0.0.0:8081",
        "admin HOST:PORT for /metrics, /healthz, /readyz",
    )
    _flag(serve, "--log-level", "info", "debug, info, warning or error (default info)")
    _flag(serve, "--log-format", "json", "json or text (default json)")
    _flag(
        serve,
        "--log-sensitive",
        "no",
        "yes: access lines carry the values added (user ids among them); default no",
    )
    _flag(
        serve,
        "--forward-cookies",
        "",
        "comma-separated cookie names allowed to reach Kaltura (default none)",
    )
    _flag(
        serve,
        "--trusted-proxies",
        "127.0.0.1/32,::1/128",
        "comma-separated networks whose X-Forwarded-* headers are believed",
    )
    _flag(
        serve,
        "--admin-secret-file",
        None,
        "file of partner admin secrets for KS v2 ('1234:secret' lines)",
    )
    _flag(serve, "--max-event-body", "262144", "largest body read for events, bytes")
    _flag(serve, "--upstream-timeout", "10", "seconds an event may wait for Kaltura")
    _flag(
        serve,
        "--upstream-connect-timeout",
        "3",
        "seconds to open a connection to Kaltura (default 3)",
    )
    _flag(
        serve,
        "--upstream-read-timeout",
        "30",
        "seconds a streamed answer may stay silent (default 30)",
    )
    _flag(
        serve,
        "--max-upstream-connections",
        "256",
        "connections to Kaltura open at once, per kind of traffic (default 256)",
    )
    _flag(serve, "--grace-period", "20", "seconds to finish requests on SIGTERM")
    _flag(
        serve,
        "--normalize",
        "none",
        "get: send every stats event as its own GET, which the legacy reports "
        "pipeline reads (default none)",
    )
    _flag(
        serve,
        "--max-get-line",
        "8192",
        "with --normalize get: the longest GET line made; longer events go as "
        "they came (default 8192)",
    )
    serve.add_argument(
        "--shadow",
        action="store_true",
        default=_yes_or_no("KSTATS_SHADOW", os.environ.get("KSTATS_SHADOW", "no")),
        help="resolve and count what would be added, forward every request as it came",
    )
    _flag(
        serve,
        "--max-request-body",
        "0",
        "largest request body passed on, bytes; 413 past it (default 0: no limit)",
    )
    _flag(
        serve,
        "--client-timeout",
        "30",
        "seconds a client may take to send a request head and event body, or "
        "stay silent in a streamed body (default 30)",
    )
    _flag(
        serve,
        "--spool",
        None,
        "directory where events Kaltura does not take are kept and replayed "
        "(default none: they are lost)",
    )
    _flag(
        serve,
        "--spool-max-bytes",
        str(DEFAULT_MAX_BYTES),
        "the spool's bound; past it the oldest events go (default 64 MiB)",
    )
    _flag(
        serve,
        "--reload-interval",
        "2",
        "seconds between looks at the rules files for changes; 0: SIGHUP only",
    )

    check = commands.add_parser("check", help="validate rules files")
    check.add_argument("paths", nargs="+", help="rules files or directories")

    demo = commands.add_parser(
        "demo", help="run the shipped rules on sample traffic, offline"
    )
    demo.add_argument(
        "--serve",
        action="store_true",
        help="then keep serving, sending the demo traffic every 5 s, until "
        "Ctrl-C (for a Prometheus to scrape)",
    )
    demo.add_argument(
        "--listen", default="127.0.0.1:8080", help="with --serve: the public port"
    )
    demo.add_argument(
        "--admin-listen",
        default="127.0.0.1:8081",
        help="with --serve: the admin port (/metrics, /status)",
    )
    _add_dry_run_commands(commands)
    return parser


def _header(text: str) -> Header:
    name, colon, value = text.partition(":")
    if not colon or not name.strip():
        raise argparse.ArgumentTypeError(f"expected NAME:VALUE, got {text!r}")
    return name.strip(), value.strip()


def _cookie(text: str) -> Header:
    name, equals, value = text.partition("=")
    if not equals or not name.strip():
        raise argparse.ArgumentTypeError(f"expected NAME=VALUE, got {text!r}")
    return name.strip(), value.strip()


def _add_dry_run_commands(commands: Any) -> None:
    """``explain`` and ``replay``: the rules on requests, nothing sent.

    ``--rules`` and ``--admin-secret-file`` read ``KSTATS_RULES`` and
    ``KSTATS_ADMIN_SECRET_FILE`` as ``serve`` does, so a dry run sees what
    the proxy sees; the other flags describe one run and are flags only.
    """
    explain = commands.add_parser(
        "explain", help="dry run of one request: each field before and after"
    )
    _flag(explain, "--rules", "rules/", "rules file or directory (default rules/)")
    explain.add_argument(
        "--cookie",
        action="append",
        default=[],
        type=_cookie,
        metavar="NAME=VALUE",
        help="a cookie the request carries (repeatable)",
    )
    explain.add_argument(
        "--header",
        action="append",
        default=[],
        type=_header,
        metavar="NAME:VALUE",
        help="a header the request carries (repeatable)",
    )
    explain.add_argument(
        "--method",
        type=str.upper,
        choices=("GET", "POST"),
        help="the request method (default GET, or POST with --body)",
    )
    explain.add_argument(
        "--body",
        metavar="TEXT|@FILE",
        help="the request body, or @FILE to read it from a file",
    )
    explain.add_argument("--json", action="store_true", help="one JSON document")
    _flag(
        explain,
        "--admin-secret-file",
        None,
        "file of partner admin secrets, to read KS v2",
    )
    explain.add_argument(
        "url", help="https://host/api_v3/... (the host becomes Host) or a path"
    )

    replay = commands.add_parser(
        "replay", help="recorded requests through the rules: coverage per field"
    )
    _flag(replay, "--rules", "rules/", "rules file or directory (default rules/)")
    replay.add_argument(
        "--normalize",
        choices=("get", "none"),
        help="what the legacy-pipeline figures assume of serve's --normalize "
        "(default: the rules' [kaltura] normalize)",
    )
    replay.add_argument("records", metavar="FILE.jsonl", help="recorded requests")
    replay.add_argument(
        "--diff", action="store_true", help="also show each request's change"
    )
    replay.add_argument("--json", action="store_true", help="one JSON document")
    _flag(
        replay,
        "--admin-secret-file",
        None,
        "file of partner admin secrets, to read KS v2",
    )


def _admin_secrets(file: str | None) -> AdminSecrets:
    text = os.environ.get("KSTATS_ADMIN_SECRET", "")
    if file:
        text += "\n" + Path(file).read_text(encoding="utf-8")
    return AdminSecrets.parse(text) if text.strip() else AdminSecrets.EMPTY


def _serve_config(args: argparse.Namespace) -> ServeConfig:
    """The validated configuration; ValueError names the bad flag."""
    try:
        Origin.from_url(args.upstream)
        listen = _address(args.listen)
        admin_listen = _address(args.admin_listen)
        timeout = _seconds("--upstream-timeout", args.upstream_timeout)
        connect_timeout = _seconds(
            "--upstream-connect-timeout", args.upstream_connect_timeout
        )
        max_connections = int(args.max_upstream_connections)
        proxy = ProxySettings(
            upstream_url=args.upstream,
            forward_cookies=_names(args.forward_cookies),
            trusted_proxies=tuple(sorted(_names(args.trusted_proxies))),
            max_event_body=int(args.max_event_body),
            pool=PoolSettings(
                total_timeout=timeout,
                connect_timeout=connect_timeout,
                max_connections=max_connections,
            ),
            stream_connect_timeout=connect_timeout,
            stream_read_timeout=_seconds(
                "--upstream-read-timeout", args.upstream_read_timeout
            ),
            log_sensitive=_yes_or_no("--log-sensitive", args.log_sensitive),
            client_timeout=_seconds("--client-timeout", args.client_timeout),
            max_request_body=int(args.max_request_body),
            normalize_get=_normalize(args.normalize),
            max_get_line=int(args.max_get_line),
            shadow=bool(args.shadow),
        )
        secrets = _admin_secrets(args.admin_secret_file)
        grace = float(args.grace_period)
        spool_max = int(args.spool_max_bytes)
        if spool_max < 1:
            raise ValueError(f"--spool-max-bytes: expected bytes >= 1, got {spool_max}")
        reload_interval = float(args.reload_interval)
        if not 0 <= reload_interval < float("inf"):
            text = args.reload_interval
            raise ValueError(f"--reload-interval: expected seconds >= 0, got {text!r}")
    except (ValueError, OSError, argparse.ArgumentTypeError) as error:
        raise ValueError(f"kstats-proxy serve: {error}") from error
    return ServeConfig(
        rules_path=args.rules,
        listen=listen,
        admin_listen=admin_listen,
        proxy=proxy,
        admin_secrets=secrets,
        grace_period=grace,
        reload_interval=reload_interval,
        spool_dir=args.spool,
        spool_max_bytes=spool_max,
    )


def _check(paths: Sequence[str]) -> int:
    status = 0
    for path in paths:
        try:
            rules = load_rules(path)
        except RulesError as error:
            print("\n".join(error.problems), file=sys.stderr)
            status = 1
        else:
            print(f"{path}: ok, {len(rules.rules)} rules, hash {rules.digest}")
    return status


def _explain_request(args: argparse.Namespace) -> tuple[str, str, list[Header], bytes]:
    """The method, target, headers and body ``explain`` was given.

    ValueError or OSError name the bad argument.
    """
    from proxy.explain import split_url

    host, target = split_url(args.url)

    body = b""
    if args.body is not None and args.body.startswith("@"):
        try:
            body = Path(args.body[1:]).read_bytes()
        except OSError as error:
            raise OSError(f"--body {args.body}: {error.strerror}") from error
    elif args.body is not None:
        body = args.body.encode("utf-8")
    method = args.method or ("POST" if args.body is not None else "GET")

    # the URL's host unless a Host header is given; cookies in one header
    headers: list[Header] = list(args.header)
    names = {name.lower() for name, _ in headers}
    if host is not None and "host" not in names:
        headers.insert(0, ("Host", host))
    if args.cookie:
        cookies = "; ".join(f"{name}={value}" for name, value in args.cookie)
        given = [value for name, value in headers if name.lower() == "cookie"]
        headers = [(n, v) for n, v in headers if n.lower() != "cookie"]
        headers.append(("Cookie", "; ".join([*given, cookies])))
    if body and "content-type" not in names:
        json = body.lstrip().startswith(b"{")
        media_type = "application/json" if json else "application/x-www-form-urlencoded"
        headers.append(("Content-Type", media_type))
    return method, target, headers, body


def _rules_or_report(path: str) -> RuleSet | None:
    """The rules at ``path``, or None after printing each problem, as check does."""
    try:
        return load_rules(path)
    except RulesError as error:
        print("\n".join(error.problems), file=sys.stderr)
        return None


def _explain(args: argparse.Namespace) -> int:
    from proxy.explain import explain_request, explanation_json, render_explanation

    # the request the flags describe, and the rules
    try:
        method, target, headers, body = _explain_request(args)
        ks_reader = KsReader(_admin_secrets(args.admin_secret_file))
    except (ValueError, OSError) as error:
        print(f"kstats-proxy explain: {error}", file=sys.stderr)
        return 2
    rules = _rules_or_report(args.rules)
    if rules is None:
        return 1

    # the dry run, then its report
    explanation = asyncio.run(
        explain_request(
            rules, ks_reader, method=method, target=target, headers=headers, body=body
        )
    )
    if args.json:
        sys.stdout.write(explanation_json(explanation))
    else:
        count = len(rules.rules)
        print(
            f"kstats-proxy explain: {count} rules from {args.rules} "
            f"(hash {rules.digest})"
        )
        sys.stdout.write(render_explanation(explanation))
    return 0


def _replay(args: argparse.Namespace) -> int:
    from proxy.records import RecordError, read_records
    from proxy.replay import coverage_json, render_coverage, replay_records

    # the secrets and the rules; the records are read as they are replayed
    try:
        ks_reader = KsReader(_admin_secrets(args.admin_secret_file))
    except (ValueError, OSError) as error:
        print(f"kstats-proxy replay: {error}", file=sys.stderr)
        return 2
    rules = _rules_or_report(args.rules)
    if rules is None:
        return 1

    # every record through the rules, then the report
    try:
        report = asyncio.run(
            replay_records(
                rules,
                read_records(args.records),
                records_path=args.records,
                rules_path=args.rules,
                ks_reader=ks_reader,
                keep_changes=args.diff,
                normalize=None if args.normalize is None else args.normalize == "get",
            )
        )
    except RecordError as error:
        print(f"kstats-proxy replay: {error}", file=sys.stderr)
        return 2
    except OSError as error:
        reason = error.strerror or str(error)
        print(f"kstats-proxy replay: {args.records}: {reason}", file=sys.stderr)
        return 2
    sys.stdout.write(coverage_json(report) if args.json else render_coverage(report))
    return 0


def _use_uvloop() -> None:
    try:
        import uvloop
    except ImportError:
        return
    asyncio.set_event_loop_policy(uvloop.EventLoopPolicy())


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)

    if args.command == "check":
        return _check(args.paths)

    if args.command == "demo":
        from proxy.demo import main as demo

        if not args.serve:
            return demo()
        try:
            listen, admin_listen = _address(args.listen), _address(args.admin_listen)
        except ValueError as error:
            print(f"kstats-proxy demo: {error}", file=sys.stderr)
            return 2
        return demo(serve=(listen, admin_listen))

    if args.command == "explain":
        return _explain(args)

    if args.command == "replay":
        return _replay(args)

    try:
        config = _serve_config(args)
    except ValueError as error:
        print(error, file=sys.stderr)
        return 2
    configure_logging(args.log_level, args.log_format)
    _use_uvloop()
    try:
        asyncio.run(run(config))
    except RulesError as error:
        print("\n".join(error.problems), file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
