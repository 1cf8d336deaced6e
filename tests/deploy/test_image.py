"""The container image, built from the repository's Dockerfile and run.

No registry can be reached from the machines this runs on, so the base
image ``python:3.11-slim`` is made locally: debootstrap lays a Debian
bookworm root with Python 3.11, and podman imports it under the upstream
image's name, so that the Dockerfile builds unchanged. The base and the
build's layers are kept in ``build/container/``: the first run takes a
minute or two, a second one seconds.

The image then runs as production runs it: a read-only root filesystem,
the spool on a writable volume, the shipped rules baked in. A stand-in
Kaltura on 127.0.0.1 records what the container sends it. podman runs on
the host network (its bridge would move the container off loopback), with
runc, cgroupfs, a file events log and explicit rlimits: the defaults fail
on these machines (see ``shared/TOOLING.md``).

This group is marked ``container`` and runs alone: ``python -m pytest -m
container``.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import shutil
import socket
import subprocess
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Awaitable, Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
from aiohttp import web
from support import REPO

from proxy.standin import StandIn, make_standin_app

pytestmark = [pytest.mark.container, pytest.mark.timeout(900)]

WORK = REPO / "build" / "container"
BASE = "docker.io/library/python:3.11-slim"
IMAGE = "localhost/kstats-proxy:ci"
CONTAINER = "kstats-proxy-ci"
UID = 10001

# where podman and buildah keep images and containers: inside the build
# directory, with the overlay driver (vfs copies every layer on each run)
STORAGE = [
    "--storage-driver",
    "overlay",
    "--root",
    str(WORK / "storage"),
    "--runroot",
    str(WORK / "run"),
]
PODMAN_GLOBAL = [*STORAGE, "--cgroup-manager", "cgroupfs", "--events-backend", "file"]


def tool(name: str, package: str) -> str:
    # debootstrap lives in /usr/sbin, which a user's PATH may leave out
    found = shutil.which(name) or shutil.which(name, path="/usr/sbin:/sbin")
    if found is None:
        pytest.fail(f"{name} is missing: apt-get install {package} (.ci/run does)")
    return found


def podman(*args: str, timeout: float = 60) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [tool("podman", "podman"), *PODMAN_GLOBAL, *args],
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
    )


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port: int = probe.getsockname()[1]
        return port


# -- the base image and the build ----------------------------------------------


def debian_mirror() -> str:
    """The bookworm archive this machine's apt already uses."""
    listing = subprocess.run(
        ["apt-get", "indextargets", "--format", "$(REPO_URI) $(RELEASE)"],
        capture_output=True,
        text=True,
        check=False,
    ).stdout
    for line in listing.splitlines():
        uri, _, release = line.partition(" ")
        if release == "bookworm":
            return uri
    return "http://deb.debian.org/debian/"


def make_base_image() -> None:
    """A stand-in for ``python:3.11-slim`` from Debian's own packages.

    It has Debian's Python 3.11 in /usr/bin (linked from /usr/local/bin as
    in the upstream image) and pip, so it checks the Dockerfile's steps,
    not the exact upstream base.
    """
    if 0 == podman("image", "exists", BASE).returncode:
        return
    rootfs = WORK / "rootfs"
    shutil.rmtree(rootfs, ignore_errors=True)
    log = WORK / "debootstrap.log"
    with log.open("w") as out:
        made = subprocess.run(
            [
                tool("debootstrap", "debootstrap"),
                "--variant=minbase",
                "--include=python3,python3-pip,python3-venv,ca-certificates",
                "bookworm",
                str(rootfs),
                debian_mirror(),
            ],
            stdout=out,
            stderr=subprocess.STDOUT,
            timeout=600,
            check=False,
        )
    assert 0 == made.returncode, log.read_text()[-3000:]

    # trim what an image does not need, and let pip install system-wide
    # as it may in python:3.11-slim
    for junk in (
        "var/lib/apt/lists",
        "var/cache/apt",
        "usr/share/doc",
        "usr/share/man",
        "usr/share/locale",
        "usr/share/info",
    ):
        for child in (rootfs / junk).glob("*"):
            if child.is_dir() and not child.is_symlink():
                shutil.rmtree(child)
            else:
                child.unlink()
    (rootfs / "usr/lib/python3.11/EXTERNALLY-MANAGED").unlink(missing_ok=True)
    for name, target in (("python", "/usr/bin/python3"), ("pip", "/usr/bin/pip3")):
        link = rootfs / "usr/local/bin" / name
        link.unlink(missing_ok=True)
        link.symlink_to(target)

    tar = subprocess.Popen(
        ["tar", "-C", str(rootfs), "-c", "."], stdout=subprocess.PIPE
    )
    imported = subprocess.run(
        [
            tool("podman", "podman"),
            *PODMAN_GLOBAL,
            "import",
            "--change",
            "ENV LANG=C.UTF-8",
            "--change",
            'CMD ["python3"]',
            "-",
            BASE,
        ],
        stdin=tar.stdout,
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )
    tar.wait()
    assert 0 == imported.returncode, imported.stderr
    shutil.rmtree(rootfs)


def host_ca_bundle() -> Path:
    """The host's CA bundle: the package archives here are signed by local CAs."""
    import ssl

    return Path(ssl.get_default_verify_paths().openssl_cafile or "").resolve()


@pytest.fixture(name="image", scope="module")
def _image() -> str:
    WORK.mkdir(parents=True, exist_ok=True)
    make_base_image()

    # the Dockerfile as it is in the repository; the CA bundle is mounted
    # for the build's RUN steps only and does not end up in the image.
    # --format docker keeps HEALTHCHECK, which the OCI format drops.
    log = WORK / "build.log"
    with log.open("w") as out:
        built = subprocess.run(
            [
                tool("buildah", "buildah"),
                *STORAGE,
                "bud",
                "--isolation",
                "chroot",
                "--pull=never",
                "--layers",
                "--format",
                "docker",
                "-v",
                f"{host_ca_bundle()}:/etc/ssl/certs/ca-certificates.crt:ro",
                "-t",
                IMAGE,
                str(REPO),
            ],
            stdout=out,
            stderr=subprocess.STDOUT,
            timeout=600,
            check=False,
        )
    assert 0 == built.returncode, log.read_text()[-3000:]
    return IMAGE


# -- a recording Kaltura, and the running container ----------------------------


@dataclass
class Kaltura:
    """The stand-in Kaltura, served from its own thread; ``failing`` makes it 503."""

    standin: StandIn
    url: str
    failing: threading.Event

    def collects(self) -> list[dict[str, object]]:
        return [r.params for r in self.standin.calls("stats", "collect")]


@contextlib.contextmanager
def kaltura_in_a_thread() -> Iterator[Kaltura]:
    standin = StandIn()
    failing = threading.Event()
    app = make_standin_app(standin)

    @web.middleware
    async def outage(
        request: web.Request,
        handler: Callable[[web.Request], Awaitable[web.StreamResponse]],
    ) -> web.StreamResponse:
        if failing.is_set():
            return web.Response(status=503, text="down for the test")
        return await handler(request)

    app.middlewares.append(outage)
    loop = asyncio.new_event_loop()
    runner = web.AppRunner(app, access_log=None)
    loop.run_until_complete(runner.setup())
    loop.run_until_complete(web.TCPSite(runner, "127.0.0.1", 0).start())
    port = runner.addresses[0][1]
    thread = threading.Thread(target=loop.run_forever, name="kaltura", daemon=True)
    thread.start()
    try:
        yield Kaltura(standin, f"http://127.0.0.1:{port}", failing)
    finally:
        loop.call_soon_threadsafe(loop.stop)
        thread.join(10)
        loop.run_until_complete(runner.cleanup())
        loop.close()


@dataclass
class Running:
    kaltura: Kaltura
    public: str
    admin: str
    spool: Path

    def logs(self) -> str:
        result = podman("logs", CONTAINER)
        return (result.stdout + result.stderr)[-4000:]


def get(url: str, headers: dict[str, str] | None = None) -> tuple[int, bytes]:
    request = urllib.request.Request(url, headers=headers or {})
    try:
        with urllib.request.urlopen(request, timeout=10) as answer:
            return answer.status, answer.read()
    except urllib.error.HTTPError as error:
        return error.code, error.read()


def wait_until_ready(running: Running, seconds: float = 60) -> None:
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        with contextlib.suppress(OSError):
            if 200 == get(running.admin + "/readyz")[0]:
                return
        time.sleep(0.2)
    pytest.fail(f"the container never got ready:\n{running.logs()}")


@pytest.fixture(name="running", scope="module")
def _running(image: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Running]:
    # the spool volume, as an emptyDir would be: writable by the image's user
    spool = tmp_path_factory.mktemp("spool")
    spool.chmod(0o700)
    shutil.chown(spool, UID, UID)

    public, admin = free_port(), free_port()
    podman("rm", "--force", CONTAINER)  # left over from an interrupted run
    with kaltura_in_a_thread() as kaltura:
        try:
            # the ports through the image's own variables (the health check
            # reads KSTATS_ADMIN_LISTEN), the upstream as an argument after
            # the image name, which `kstats-proxy serve` receives
            started = podman(
                "run",
                "--detach",
                "--name",
                CONTAINER,
                "--runtime",
                "runc",
                "--network",
                "host",
                "--ulimit",
                "nofile=20000:20000",
                "--ulimit",
                "nproc=4096:4096",
                "--read-only",
                "--read-only-tmpfs=false",
                "--volume",
                f"{spool}:/var/spool/kstats",
                "--env",
                f"KSTATS_LISTEN=127.0.0.1:{public}",
                "--env",
                f"KSTATS_ADMIN_LISTEN=127.0.0.1:{admin}",
                image,
                "--upstream",
                kaltura.url,
                "--log-format",
                "text",
            )
            assert 0 == started.returncode, started.stderr
            running = Running(
                kaltura,
                f"http://127.0.0.1:{public}",
                f"http://127.0.0.1:{admin}",
                spool,
            )
            wait_until_ready(running)
            yield running
        finally:
            podman("rm", "--force", "--time", "1", CONTAINER)


# -- the image ------------------------------------------------------------------


def image_size(name: str) -> int:
    inspected = podman("image", "inspect", "--format", "{{.Size}}", name)
    assert 0 == inspected.returncode, inspected.stderr
    return int(inspected.stdout.strip())


def test_the_image_is_small_and_carries_no_pip_or_compiler(
    image: str, capsys: pytest.CaptureFixture[str]
) -> None:
    size, base = image_size(image), image_size(BASE)
    line = f"image {image}: {size / 1e6:.0f} MB, {(size - base) / 1e6:.0f} MB over its base"
    with capsys.disabled():
        print(f"\n{line}")

    # the installed environment and the shipped rules only; the build
    # stage's sources and pip stay behind
    assert size - base < 120e6, line
    probe = podman(
        "run",
        "--rm",
        "--runtime",
        "runc",
        "--network",
        "none",
        "--ulimit",
        "nofile=1024:1024",
        "--ulimit",
        "nproc=1024:1024",
        "--entrypoint",
        "python",
        image,
        "-c",
        "import importlib.util, json, os, shutil; print(json.dumps({"
        "'pip': importlib.util.find_spec('pip') is not None,"
        "'setuptools': importlib.util.find_spec('setuptools') is not None,"
        "'cc': [c for c in ('gcc', 'cc', 'make') if shutil.which(c)],"
        "'src': os.path.exists('/src'),"
        "'rules': sorted(os.listdir('/etc/kstats/rules')),"
        "'uvloop': importlib.util.find_spec('uvloop') is not None}))",
    )
    assert 0 == probe.returncode, probe.stderr
    found = json.loads(probe.stdout)
    assert {
        "pip": False,
        "setuptools": False,
        "cc": [],
        "src": False,
        "uvloop": True,
    } == {k: v for k, v in found.items() if k != "rules"}
    assert sorted(p.name for p in (REPO / "rules").iterdir()) == found["rules"]


def test_the_image_declares_its_user_ports_health_check_and_labels(image: str) -> None:
    inspected = podman("image", "inspect", image)
    assert 0 == inspected.returncode, inspected.stderr
    inspection = json.loads(inspected.stdout)[0]
    config = inspection["Config"]

    assert f"{UID}:{UID}" == config["User"]
    assert ["kstats-proxy", "serve"] == config["Entrypoint"]
    assert {"8080/tcp", "8081/tcp"} == set(config["ExposedPorts"])
    assert "/var/spool/kstats" in config["Volumes"]
    assert "KSTATS_RULES=/etc/kstats/rules" in config["Env"]
    assert "KSTATS_SPOOL=/var/spool/kstats" in config["Env"]
    assert ["CMD", "python", "-c"] == inspection["Healthcheck"]["Test"][:3]
    labels = config["Labels"]
    assert "kstats-proxy" == labels["org.opencontainers.image.title"]
    assert "MIT" == labels["org.opencontainers.image.licenses"]


# -- the running container ------------------------------------------------------


def test_the_proxy_process_runs_as_the_unprivileged_user(running: Running) -> None:
    # from inside, as a process started next to the proxy would see it
    inside = podman("exec", CONTAINER, "id", "-u")
    assert 0 == inside.returncode, inside.stderr
    assert str(UID) == inside.stdout.strip()

    # and the proxy itself, PID 1 of the container, seen from the host
    pid = podman("inspect", "--format", "{{.State.Pid}}", CONTAINER).stdout.strip()
    status = Path(f"/proc/{pid}/status").read_text()
    uid_line = next(line for line in status.splitlines() if line.startswith("Uid:"))
    assert [str(UID)] * 4 == uid_line.split()[1:]


def test_healthz_answers_and_the_image_health_check_passes(running: Running) -> None:
    assert (200, b"ok\n") == get(running.admin + "/healthz")

    checked = podman("healthcheck", "run", CONTAINER)
    assert 0 == checked.returncode, checked.stdout + checked.stderr + running.logs()
    health = podman("inspect", "--format", "{{.State.Health.Status}}", CONTAINER)
    assert "healthy" == health.stdout.strip()


def test_the_metrics_pass_promtool(running: Running) -> None:
    status, exposition = get(running.admin + "/metrics")
    assert 200 == status
    assert b"kstats_rules_info{" in exposition

    checked = subprocess.run(
        [tool("promtool", "prometheus"), "check", "metrics"],
        input=exposition,
        capture_output=True,
        timeout=60,
        check=False,
    )
    assert 0 == checked.returncode, checked.stdout + checked.stderr


def stats_collect(session: str) -> str:
    return (
        "/api_v3/index.php?service=stats&action=collect&format=1"
        "&event:eventType=3&event:partnerId=1234&event:entryId=0_abcd1234"
        f"&event:sessionId={session}"
        "&event:referrer=https%3A%2F%2Fwww.example.org%2Flessons%2F7"
    )


def collect_of(kaltura: Kaltura, session: str) -> dict[str, object] | None:
    return next(
        (
            event
            for params in kaltura.collects()
            if isinstance(event := params.get("event"), dict)
            and session == event.get("sessionId")
        ),
        None,
    )


def test_an_event_reaches_kaltura_enriched_by_the_shipped_rules(
    running: Running,
) -> None:
    # 90-other-pages.toml: the user from an SSO gateway's X-Forwarded-User,
    # the application from the page's host name
    status, body = get(
        running.public + stats_collect("container-enriched"),
        {"X-Forwarded-User": "dana@example.org"},
    )
    assert (200, b"true") == (status, body.strip()), running.logs()

    event = collect_of(running.kaltura, "container-enriched")
    assert event is not None, running.logs()
    assert "dana@example.org" == event["userId"]
    assert "www.example.org" == event["applicationId"]


def test_an_event_kaltura_refuses_waits_in_the_spool_volume_and_arrives_later(
    running: Running,
) -> None:
    running.kaltura.failing.set()
    try:
        status, body = get(
            running.public + stats_collect("container-spooled"),
            {"X-Forwarded-User": "lee@example.org"},
        )
        # the player is answered as Kaltura would, and the event is on the
        # volume, written by the image's user under a read-only root
        assert (200, b"true") == (status, body.strip()), running.logs()
        segments = list(running.spool.glob("segment-*.jsonl"))
        assert segments, running.logs()
        assert b"container-spooled" in b"".join(s.read_bytes() for s in segments)
        assert {UID} == {s.stat().st_uid for s in segments}
    finally:
        running.kaltura.failing.clear()

    deadline = time.monotonic() + 60
    while collect_of(running.kaltura, "container-spooled") is None:
        assert time.monotonic() < deadline, running.logs()
        time.sleep(0.2)
    event = collect_of(running.kaltura, "container-spooled")
    assert event is not None
    assert "lee@example.org" == event["userId"]
