"""The ``kstats-proxy`` command: ``serve``, ``check`` and ``demo``.

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

from proxy import __version__
from proxy.app import ProxySettings
from proxy.kaltura.ks import AdminSecrets
from proxy.log import configure_logging
from proxy.rules.loader import RulesError, load_rules
from proxy.serve import ServeConfig, run
from proxy.upstream.pool import Origin, PoolSettings


def _env(flag: str, default: str | None) -> str | None:
    name = "KSTATS_" + flag.lstrip("-").upper().replace("-", "_")
    return os.environ.get(name, default)


def _address(text: str) -> tuple[str, int]:
    host, colon, port = text.rpartition(":")
    if not colon or not port.isdigit() or not 0 <= int(port) <= 65535:
        raise argparse.ArgumentTypeError(f"expected HOST:PORT, got {text!r}")
    return host.strip("[]") or "0.0.0.0", int(port)


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
    _flag(serve, "--grace-period", "20", "seconds to finish requests on SIGTERM")

    check = commands.add_parser("check", help="validate rules files")
    check.add_argument("paths", nargs="+", help="rules files or directories")

    commands.add_parser("demo", help="run the shipped rules on sample traffic, offline")
    return parser


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
        timeout = float(args.upstream_timeout)
        proxy = ProxySettings(
            upstream_url=args.upstream,
            forward_cookies=_names(args.forward_cookies),
            trusted_proxies=tuple(sorted(_names(args.trusted_proxies))),
            max_event_body=int(args.max_event_body),
            pool=PoolSettings(total_timeout=timeout),
        )
        secrets = _admin_secrets(args.admin_secret_file)
        grace = float(args.grace_period)
    except (ValueError, OSError, argparse.ArgumentTypeError) as error:
        raise ValueError(f"kstats-proxy serve: {error}") from error
    return ServeConfig(
        rules_path=args.rules,
        listen=listen,
        admin_listen=admin_listen,
        proxy=proxy,
        admin_secrets=secrets,
        grace_period=grace,
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

        return demo()

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
