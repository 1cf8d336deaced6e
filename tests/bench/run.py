"""The performance benchmark: kstats-proxy against nginx and a plain aiohttp proxy.

Run from the repository root (as root, so it can install nginx and wrk)::

    python tests/bench/run.py                # about 8 minutes
    python tests/bench/run.py --soak         # plus one million requests (3-4 min)

In one run on one machine it starts, all on 127.0.0.1:

- a fast stand-in upstream: nginx answering every ``/api_v3/`` call with
  ``true`` and serving a 1 GiB file, pinned to the second core;
- three candidates on the first core: nginx ``proxy_pass`` with keep-alive
  upstream connections (the ceiling; it cannot enrich), the straightforward
  aiohttp proxy of ``baseline_proxy.py``, and kstats-proxy with a rules
  file adding all three fields from a cookie, a page rule and a value,
  logging at its default level, metrics on;
- ``wrk`` on the second core, 64 connections, on a realistic mwEmbed-style
  ``stats.collect`` GET (about 600 bytes) and on a KAVA POST, in
  interleaved rounds; medians are quoted.

It prints one table: requests/s, latency percentiles, ratios to nginx
and of kstats-proxy to the baseline, resident memory after the run, and
each candidate's throughput and peak memory growth on the 1 GiB download.
Every process it starts is ended by its pid when it finishes.
"""

from __future__ import annotations

import argparse
import os
import re
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path

HERE = Path(__file__).resolve().parent
REPO = HERE.parents[1]
sys.path.insert(0, str(HERE.parent))  # tests/support.py: the shared traffic

from support import KAVA_BODY as KAVA_BODY_BYTES  # noqa: E402
from support import KAVA_TARGET, MWEMBED_STATS_TARGET  # noqa: E402

PROXY_CORE, LOAD_CORE = "0", "1"

STATS_PATH, KAVA_PATH = MWEMBED_STATS_TARGET, KAVA_TARGET
KAVA_BODY = KAVA_BODY_BYTES.decode()
HEADERS = {
    "Host": "moodle.example.edu",
    "User-Agent": "Mozilla/5.0 (Windows NT 10.0; Win64; x64) Chrome/120.0",
    "Accept": "*/*",
    "Referer": "https://moodle.example.edu/course/view.php?id=42",
    "Cookie": "MoodleSession=r4nd0m5e55i0n1d; MOODLEID1_=%25F1%25CD%2514",
}
RULES = """
[[rule]]
name = "bench"
userId = [{ cookie = "MoodleSession" }]
applicationName = [{ value = "Moodle" }]
playbackContext = [{ page = '/course/(\\d+)' }]
"""


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def rss_kib(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    return 0


def ensure_tools() -> None:
    """Install nginx and wrk from Debian's packages when missing."""
    missing = [tool for tool in ("nginx", "wrk") if shutil.which(tool) is None]
    if not missing:
        return
    packages = ["nginx" if tool == "nginx" else tool for tool in missing]
    env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
    subprocess.run(["apt-get", "update", "-qq"], check=True, env=env)
    subprocess.run(["apt-get", "install", "-y", "-qq", *packages], check=True, env=env)


@dataclass
class Candidate:
    name: str
    port: int
    pid: int = 0  # the process that does the work (nginx: its worker)
    samples: dict[str, list[dict[str, float]]] = field(default_factory=dict)
    rss_after_kib: int = 0
    stream: dict[str, float] = field(default_factory=dict)


class Bench:
    def __init__(self, args: argparse.Namespace) -> None:
        self.args = args
        self.work = Path(tempfile.mkdtemp(prefix="kstats-bench-"))
        self.work.chmod(0o755)  # nginx's workers run as nobody
        self.processes: list[subprocess.Popen[bytes]] = []

    # -- processes ----------------------------------------------------------

    def spawn(
        self, command: list[str], core: str, **kwargs: object
    ) -> subprocess.Popen[bytes]:
        process = subprocess.Popen(
            ["taskset", "-c", core, *command],
            stdout=subprocess.DEVNULL,
            stderr=open(self.work / f"{len(self.processes)}.log", "wb"),  # noqa: SIM115
            **kwargs,  # type: ignore[arg-type]
        )
        self.processes.append(process)
        return process

    def stop_all(self) -> None:
        for process in reversed(self.processes):
            if process.poll() is None:
                process.send_signal(signal.SIGTERM)
        for process in self.processes:
            try:
                process.wait(timeout=10)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait(timeout=5)
        shutil.rmtree(self.work, ignore_errors=True)

    def wait_for(self, port: int, path: str = "/api_v3/index.php") -> None:
        deadline = time.monotonic() + 20
        while time.monotonic() < deadline:
            try:
                with urllib.request.urlopen(
                    f"http://127.0.0.1:{port}{path}", timeout=2
                ):
                    return
            except urllib.error.HTTPError:
                return
            except OSError:
                time.sleep(0.1)
        raise RuntimeError(f"nothing answers on 127.0.0.1:{port}")

    def nginx(self, name: str, server: str, core: str) -> int:
        """Start a one-worker nginx; return its worker's pid."""
        conf = self.work / f"{name}.conf"
        conf.write_text(
            f"""
worker_processes 1;
daemon off;
master_process on;
pid {self.work}/{name}.pid;
error_log {self.work}/{name}-error.log warn;
events {{ worker_connections 8192; }}
http {{
  access_log off;
  keepalive_requests 10000000;
  client_body_temp_path {self.work}/{name}-body;
  proxy_temp_path {self.work}/{name}-proxy;
  {server}
}}
"""
        )
        master = self.spawn(["nginx", "-c", str(conf), "-p", str(self.work)], core)
        time.sleep(0.3)
        children = subprocess.run(
            ["pgrep", "-P", str(master.pid)],
            capture_output=True,
            text=True,
            check=False,
        ).stdout.split()
        return int(children[0]) if children else master.pid

    # -- set-up -------------------------------------------------------------

    def start(self) -> list[Candidate]:
        big = self.work / "big.bin"
        with big.open("wb") as out:
            out.truncate(self.args.stream_mib * 1024 * 1024)

        upstream_port = free_port()
        self.nginx(
            "upstream",
            f"""server {{
    listen 127.0.0.1:{upstream_port};
    location /api_v3/ {{ default_type application/json; return 200 "true"; }}
    location = /big.bin {{ root {self.work}; }}
  }}""",
            LOAD_CORE,
        )
        upstream = f"http://127.0.0.1:{upstream_port}"

        nginx_proxy = Candidate("nginx proxy_pass", free_port())
        nginx_proxy.pid = self.nginx(
            "proxy",
            f"""upstream kaltura {{ server 127.0.0.1:{upstream_port}; keepalive 64; }}
  server {{
    listen 127.0.0.1:{nginx_proxy.port};
    location / {{
      proxy_pass http://kaltura;
      proxy_http_version 1.1;
      proxy_set_header Connection "";
      proxy_buffer_size 64k;
      proxy_buffers 8 64k;
      proxy_max_temp_file_size 0;
    }}
  }}""",
            PROXY_CORE,
        )

        baseline = Candidate("aiohttp baseline", free_port())
        baseline.pid = self.spawn(
            [
                sys.executable,
                str(HERE / "baseline_proxy.py"),
                str(baseline.port),
                upstream,
            ],
            PROXY_CORE,
        ).pid

        rules = self.work / "bench.toml"
        rules.write_text(RULES)
        kstats = Candidate("kstats-proxy", free_port())
        kstats.pid = self.spawn(
            [
                sys.executable,
                "-m",
                "proxy.cli",
                "serve",
                "--rules",
                str(rules),
                "--listen",
                f"127.0.0.1:{kstats.port}",
                "--admin-listen",
                f"127.0.0.1:{free_port()}",
                "--upstream",
                upstream,
            ],
            PROXY_CORE,
            cwd=REPO,
        ).pid

        candidates = [nginx_proxy, baseline, kstats]
        for candidate in candidates:
            self.wait_for(candidate.port)
        return candidates

    # -- load ---------------------------------------------------------------

    def wrk_script(self, workload: str) -> Path:
        lines = [f'wrk.path = "{STATS_PATH if workload == "stats GET" else KAVA_PATH}"']
        for name, value in HEADERS.items():
            lines.append(f'wrk.headers["{name}"] = "{value}"')
        if workload == "KAVA POST":
            body = KAVA_BODY.replace('"', '\\"')
            lines += [
                'wrk.method = "POST"',
                'wrk.headers["Content-Type"] = "application/json"',
                f'wrk.body = "{body}"',
            ]
        script = self.work / f"{workload.replace(' ', '-')}.lua"
        script.write_text("\n".join(lines) + "\n")
        return script

    def wrk(self, port: int, workload: str, seconds: float) -> dict[str, float]:
        output = subprocess.run(
            [
                "taskset",
                "-c",
                LOAD_CORE,
                "wrk",
                "-t1",
                f"-c{self.args.connections}",
                f"-d{seconds}s",
                "--latency",
                "-s",
                str(self.wrk_script(workload)),
                f"http://127.0.0.1:{port}",
            ],
            capture_output=True,
            text=True,
            timeout=seconds + 60,
            check=True,
        ).stdout
        result = {"rps": float(re.search(r"Requests/sec:\s+([\d.]+)", output)[1])}  # type: ignore[index]
        for percentile in ("50", "90", "99"):
            match = re.search(
                rf"^\s+{percentile}%\s+([\d.]+)(us|ms|s)\s*$", output, re.M
            )
            if match:
                scale = {"us": 0.001, "ms": 1.0, "s": 1000.0}[match[2]]
                result[f"p{percentile}"] = float(match[1]) * scale
        errors = re.search(r"Non-2xx or 3xx responses: (\d+)", output)
        result["errors"] = float(errors[1]) if errors else 0.0
        return result

    def stream(self, candidate: Candidate) -> dict[str, float]:
        """Download the big file through ``candidate``, sampling its memory."""
        idle = rss_kib(candidate.pid)
        peak = idle
        done = threading.Event()

        def sample() -> None:
            nonlocal peak
            while not done.is_set():
                peak = max(peak, rss_kib(candidate.pid))
                time.sleep(0.01)

        sampler = threading.Thread(target=sample)
        sampler.start()
        started = time.perf_counter()
        output = subprocess.run(
            [
                "taskset",
                "-c",
                LOAD_CORE,
                "curl",
                "-s",
                "-o",
                "/dev/null",
                "-w",
                "%{http_code} %{size_download}",
                f"http://127.0.0.1:{candidate.port}/big.bin",
            ],
            capture_output=True,
            text=True,
            timeout=600,
            check=True,
        ).stdout
        seconds = time.perf_counter() - started
        done.set()
        sampler.join()
        status, size_text = output.split()
        size = int(size_text)
        if status != "200" or size != self.args.stream_mib * 2**20:
            message = f"{candidate.name}: download answered {status}, {size} bytes"
            raise RuntimeError(message)
        return {"mib_s": size / seconds / 2**20, "growth_mib": (peak - idle) / 1024}

    def soak(self, kstats: Candidate) -> list[tuple[int, float]]:
        """Many requests to kstats-proxy, with its RSS after each wrk run."""
        marks: list[tuple[int, float]] = []
        sent = 0
        while sent < self.args.soak_requests:
            result = self.wrk(kstats.port, "stats GET", 10)
            sent += int(result["rps"] * 10)
            marks.append((sent, rss_kib(kstats.pid) / 1024))
        return marks


def median(samples: list[dict[str, float]], key: str) -> float:
    return statistics.median(sample[key] for sample in samples)


def report(
    candidates: list[Candidate], workloads: list[str], args: argparse.Namespace
) -> str:
    nginx, baseline, kstats = candidates
    lines = [
        f"kstats-proxy benchmark, {time.strftime('%Y-%m-%d')}, {os.cpu_count()} cores, "
        f"proxies pinned to core {PROXY_CORE}; wrk -t1 -c{args.connections} "
        f"-d{args.duration}s, {args.rounds} interleaved rounds, medians",
        "",
        "| workload | candidate | requests/s | p50 ms | p90 ms | p99 ms | vs nginx "
        "| vs baseline | RSS after MiB |",
        "| --- | --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: |",
    ]
    for workload in workloads:
        ceiling = median(nginx.samples[workload], "rps")
        floor = median(baseline.samples[workload], "rps")
        for candidate in candidates:
            samples = candidate.samples[workload]
            rps = median(samples, "rps")
            versus_baseline = f"{rps / floor:.2f}" if candidate is kstats else ""
            lines.append(
                f"| {workload} | {candidate.name} | {rps:,.0f} | "
                f"{median(samples, 'p50'):.2f} | {median(samples, 'p90'):.2f} | "
                f"{median(samples, 'p99'):.2f} | {rps / ceiling:.2f} | "
                f"{versus_baseline} | {candidate.rss_after_kib / 1024:.1f} |"
            )
    lines += [
        "",
        f"| {args.stream_mib} MiB download, {args.rounds} rounds | MiB/s (median) "
        "| vs nginx | peak RSS growth MiB (max) |",
        "| --- | ---: | ---: | ---: |",
    ]
    for candidate in candidates:
        stream = candidate.stream
        lines.append(
            f"| {candidate.name} | {stream['mib_s']:,.0f} | "
            f"{stream['mib_s'] / nginx.stream['mib_s']:.2f} | {stream['growth_mib']:.1f} |"
        )
    return "\n".join(lines)


def soak_summary(marks: list[tuple[int, float]]) -> str:
    """RSS at the marks the targets name: after 200k, 500k and the end."""

    def rss_after(count: int) -> float:
        return next((rss for sent, rss in marks if sent >= count), marks[-1][1])

    second, fifth = rss_after(200_000), rss_after(500_000)
    return (
        f"RSS after 200k {second:.1f} MiB, after 500k {fifth:.1f} MiB "
        f"(growth {fifth - second:+.1f} MiB), after {marks[-1][0]:,} "
        f"{marks[-1][1]:.1f} MiB"
    )


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--duration", type=int, default=10, help="seconds per wrk run")
    parser.add_argument("--rounds", type=int, default=3, help="interleaved rounds")
    parser.add_argument("--connections", type=int, default=64)
    parser.add_argument("--stream-mib", type=int, default=1024, help="download size")
    parser.add_argument("--soak", action="store_true", help="also a memory soak")
    parser.add_argument("--soak-requests", type=int, default=1_000_000)
    args = parser.parse_args()

    ensure_tools()
    bench = Bench(args)
    workloads = ["stats GET", "KAVA POST"]
    try:
        candidates = bench.start()

        # warm up each candidate, then interleave the measured rounds
        for candidate in candidates:
            for workload in workloads:
                bench.wrk(candidate.port, workload, 2)
        for round_number in range(args.rounds):
            for workload in workloads:
                for candidate in candidates:
                    result = bench.wrk(candidate.port, workload, args.duration)
                    candidate.samples.setdefault(workload, []).append(result)
                    print(
                        f"round {round_number + 1} {workload:<9} {candidate.name:<16} "
                        f"{result['rps']:>9,.0f} req/s  p99 {result.get('p99', 0):.2f} ms",
                        flush=True,
                    )
        for candidate in candidates:
            candidate.rss_after_kib = rss_kib(candidate.pid)
        # the first download on a fresh machine state is slow whoever
        # serves it: one untimed, then interleaved rounds as above
        bench.stream(candidates[0])
        downloads: dict[str, list[dict[str, float]]] = {}
        for _ in range(args.rounds):
            for candidate in candidates:
                result = bench.stream(candidate)
                downloads.setdefault(candidate.name, []).append(result)
        for candidate in candidates:
            samples = downloads[candidate.name]
            candidate.stream = {
                "mib_s": median(samples, "mib_s"),
                "growth_mib": max(sample["growth_mib"] for sample in samples),
            }

        print()
        print(report(candidates, workloads, args))
        if args.soak:
            print("\nsoak, kstats-proxy: requests sent, RSS MiB")
            marks = bench.soak(candidates[2])
            for sent, rss in marks:
                print(f"  {sent:>9,}  {rss:.1f}")
            print(soak_summary(marks))
    finally:
        bench.stop_all()
    return 0


if __name__ == "__main__":
    sys.exit(main())
