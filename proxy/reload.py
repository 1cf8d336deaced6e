"""Hot reload: the rules are read again while the proxy serves.

A :class:`RulesWatcher` looks at the rules path every ``--reload-interval``
seconds and reloads when what it sees differs from what it saw at the last
load. What it sees is a :class:`Fingerprint`: the names in the rules
directory, and for every file the last load read (rules files and the CSV
tables they name) the path it resolves to, its size, its modification
time and its inode. Polling needs no inotify, works on every file system
and sees a Kubernetes ConfigMap update, which changes no visible path:

    rules/..2026_12_03_10_00_00.123/40-moodle.toml   the files, one directory per update
    rules/..data -> ..2026_12_03_10_00_00.123        re-pointed atomically on update
    rules/40-moodle.toml -> ..data/40-moodle.toml    what the proxy is told to read

After the swap, ``rules/40-moodle.toml`` resolves to a file in the new
directory, and the fingerprint differs.

A reload is a whole load (:func:`proxy.rules.loader.load_rules`) run on a
worker thread, so requests are never held up by the disk. It is validated
completely before anything changes: a good load replaces the rules for
requests that start from then on (a request in flight finishes on the set
it started with), a bad one leaves the old rules in place and is logged
with every problem. A bad load is not tried again until the files change
once more, or until SIGHUP asks for a reload whatever the files look like.

Both outcomes are counted in ``kstats_rules_reloads_total{result=...}``.
"""

from __future__ import annotations

import asyncio
import logging
import os
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

from proxy.app import ProxyApp
from proxy.rules.loader import RulesError, load_rules, rules_files
from proxy.rules.model import RuleSet

logger = logging.getLogger("kstats.rules")

# One watched file: the path it resolves to, its size, its modification
# time in nanoseconds and its inode; None while it cannot be read.
FileState = tuple[str, int, int, int] | None


@dataclass(frozen=True, slots=True)
class Fingerprint:
    """What the rules path looked like at one moment; only ever compared.

    ``listing`` holds the names in the rules directory (none for a single
    file), leaving out hidden names: editors' swap files and a ConfigMap's
    timestamped directories come and go, and a ConfigMap update shows in
    the files' resolved paths instead. ``files`` pairs every watched file
    with its :data:`FileState`, in name order.
    """

    listing: tuple[str, ...]
    files: tuple[tuple[str, FileState], ...]


@dataclass(frozen=True, slots=True)
class LoadAttempt:
    """One load of the rules and the fingerprint to compare the next with.

    ``rules`` is None when the load failed; ``problems`` then says why, one
    line per problem, each naming its file.
    """

    fingerprint: Fingerprint
    rules: RuleSet | None = None
    problems: tuple[str, ...] = ()


def file_state(file: str) -> FileState:
    """The state of ``file`` as :data:`FileState` describes it."""
    try:
        real = os.path.realpath(file)
        status = os.stat(real)
    except OSError:
        return None
    return (real, status.st_size, status.st_mtime_ns, status.st_ino)


def directory_listing(path: Path) -> tuple[str, ...]:
    """The names in ``path`` that are not hidden; none for a file."""
    try:
        names = os.listdir(path)
    except OSError:
        return ()
    return tuple(sorted(name for name in names if not name.startswith(".")))


def watched_files(path: Path, inputs: Iterable[str]) -> list[str]:
    """The rules files under ``path`` now, and the files a load read."""
    return sorted({*(str(file) for file in rules_files(path)), *inputs})


def take_fingerprint(path: Path, files: Iterable[str]) -> Fingerprint:
    """The fingerprint of ``path`` and ``files``, read from the disk now."""
    states = tuple((file, file_state(file)) for file in sorted(files))
    return Fingerprint(directory_listing(path), states)


def settle_fingerprint(path: Path, before: Fingerprint, rules: RuleSet) -> Fingerprint:
    """The fingerprint a good load leaves to compare the next poll with.

    It is the one taken before the load, so that a file changed while the
    load read it still differs at the next poll. Only a file first read by
    this load (a table newly named) gets its state from after the load: it
    has no state from before.
    """
    seen = dict(before.files)
    files = watched_files(path, rules.inputs)
    states = tuple(
        (file, seen[file] if file in seen else file_state(file)) for file in files
    )
    return Fingerprint(before.listing, states)


def load_watched(path: Path | str) -> tuple[RuleSet, Fingerprint]:
    """The first load, at start: the rules and their fingerprint.

    Raises :class:`~proxy.rules.loader.RulesError` as ``load_rules`` does.
    """
    path = Path(path)
    before = take_fingerprint(path, watched_files(path, ()))
    rules = load_rules(path)
    return rules, settle_fingerprint(path, before, rules)


def attempt_load(
    path: Path, inputs: tuple[str, ...], last: Fingerprint | None
) -> LoadAttempt | None:
    """Load the rules unless the files still look as they did at ``last``.

    ``inputs`` are the files the rules in use were read from; ``last`` is
    None to load whatever the files look like. Blocks on the disk: run it
    on a worker thread.
    """
    # the fingerprint is taken first, so a change made while the load
    # reads the files shows at the next poll instead of being lost
    before = take_fingerprint(path, watched_files(path, inputs))
    if before == last:
        return None

    try:
        rules = load_rules(path)
    except RulesError as error:
        return LoadAttempt(before, problems=tuple(error.problems))
    return LoadAttempt(settle_fingerprint(path, before, rules), rules)


class RulesWatcher:
    """Reloads the rules of ``app`` when their files change, or when asked.

    ``interval`` is the time between two looks at the files, in seconds;
    0 turns watching off, leaving :meth:`request_reload` (SIGHUP). The
    watcher runs as one background task from :meth:`start` to
    :meth:`stop`, which owns and cancels it.
    """

    def __init__(
        self,
        app: ProxyApp,
        path: Path | str,
        *,
        interval: float,
        fingerprint: Fingerprint | None = None,
    ) -> None:
        self._app = app
        self._path = Path(path)
        self._interval = interval
        # the files at the last load attempt, good or bad; None: unknown
        self._last = fingerprint
        self._requested = asyncio.Event()
        self._lock = asyncio.Lock()
        self._task: asyncio.Task[None] | None = None

    def start(self) -> None:
        """Start watching; call from the event loop."""
        if self._task is None:
            loop = asyncio.get_running_loop()
            self._task = loop.create_task(self._watch(), name="kstats-rules-watcher")

    async def stop(self) -> None:
        """Stop watching; a load on its worker thread is left to finish unused."""
        task, self._task = self._task, None
        if task is not None:
            task.cancel()
            await asyncio.wait([task])

    def request_reload(self) -> None:
        """Have the watcher reload soon, whatever the files look like (SIGHUP)."""
        self._requested.set()

    async def check(self) -> bool:
        """Reload if the files changed since the last attempt; True if swapped."""
        return await self._reload(forced=False)

    async def reload_now(self) -> bool:
        """Reload whatever the files look like; True if the new rules are in use."""
        return await self._reload(forced=True)

    async def _watch(self) -> None:
        timeout = self._interval if self._interval > 0 else None
        while True:
            try:
                async with asyncio.timeout(timeout):
                    await self._requested.wait()
            except TimeoutError:
                pass
            forced = self._requested.is_set()
            self._requested.clear()

            try:
                await self._reload(forced=forced)
            except Exception:
                # the watcher must outlive a bug: the rules in use stay
                logger.exception("checking the rules in %s failed", self._path)

    async def _reload(self, *, forced: bool) -> bool:
        async with self._lock:
            # the disk is read on a worker thread, never on the event loop
            last = None if forced else self._last
            inputs = self._app.rules.inputs
            attempt = await asyncio.to_thread(attempt_load, self._path, inputs, last)
            if attempt is None:
                return False
            self._last = attempt.fingerprint

            metrics = self._app.metrics
            if attempt.rules is None:
                metrics.rules_reloads.inc("failure")
                logger.warning(
                    "rules in %s not reloaded, still using hash %s:\n%s",
                    self._path,
                    self._app.rules.digest,
                    "\n".join(attempt.problems),
                    extra={"fields": {"problems": list(attempt.problems)}},
                )
                return False

            rules = attempt.rules
            self._app.replace_rules(rules)
            metrics.rules_reloads.inc("success")
            logger.info(
                "rules reloaded from %s: %d files, %d rules, hash %s",
                self._path,
                len(rules.files),
                len(rules.rules),
                rules.digest,
            )
            return True
