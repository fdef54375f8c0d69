"""Entry locks that jobs wait on: one lock file per store entry, created atomically, naming its holder.

`<entry>/.lock` is created with O_CREAT|O_EXCL (atomic on local disks and NFS) and holds the holder's
host, pid, process start time and since when it holds the lock. A job that finds it:

* waits while the holder lives (one line saying for whom and how long at most), polling every
  `poll_s`, up to `timeout_s` (`store.lock.timeout_s`), then gives up with a `StoreBusyError`;
* breaks it with a warning when the holder is a dead process of this host (a job killed mid-fit),
  under a short flock on `<entry>/.lock.guard` so that two waiters never break a live lock.

A holder on another host cannot be checked: the waiter waits, and its timeout message says how to
free an entry whose holder is known to be gone (delete its lock file).
"""

from __future__ import annotations

import datetime
import fcntl
import json
import logging
import os
import socket
import time
from pathlib import Path

from robust_ensembles.errors import StoreBusyError

log = logging.getLogger(__name__)

LOCK, GUARD = ".lock", ".lock.guard"


def process_start(pid: int) -> str | None:
    """The start time of process `pid` (clock ticks since boot, from /proc), to tell a reused pid apart."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    return stat.rsplit(")", 1)[1].split()[19]


def me() -> dict:
    return {"host": socket.gethostname(), "pid": os.getpid(), "process_start": process_start(os.getpid()),
            "since": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds")}


def holder_of(entry: Path) -> dict | None:
    """Who holds the entry's lock ({} when its file is unreadable), or None when nobody does."""
    try:
        return json.loads((entry / LOCK).read_text())
    except FileNotFoundError:
        return None
    except (OSError, json.JSONDecodeError):
        return {}


def alive(holder: dict) -> bool | None:
    """Whether the holder process lives: True/False on this host, None on another host (unknowable)."""
    if holder.get("host") != socket.gethostname() or not isinstance(holder.get("pid"), int):
        return None
    try:
        os.kill(holder["pid"], 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        pass
    started = holder.get("process_start")
    return started is None or process_start(holder["pid"]) in (None, started)


def describe(holder: dict) -> str:
    return f"pid {holder.get('pid')} on {holder.get('host')} (since {holder.get('since')})" if holder else "an unknown holder"


def break_if_dead(entry: Path, holder: dict) -> bool:
    """Remove the lock of a dead holder of this host (the same holder still, checked under the guard)."""
    with open(entry / GUARD, "a") as guard:
        fcntl.flock(guard, fcntl.LOCK_EX)
        try:
            now = holder_of(entry)
            if now is None:
                return True
            if now != holder or alive(now) is not False:
                return False
            log.warning("[store] broke the lock of %s: left by %s, a process that is gone (a job killed mid-fit); "
                        "resuming the entry", entry, describe(holder))
            (entry / LOCK).unlink(missing_ok=True)
            return True
        finally:
            fcntl.flock(guard, fcntl.LOCK_UN)


class EntryLock:
    """Context manager: hold `<entry>/.lock`, waiting for a live holder up to timeout_s."""

    def __init__(self, entry: Path, timeout_s: float = 0, poll_s: float = 5.0, what: str = ""):
        if timeout_s is None or timeout_s < 0 or poll_s <= 0:
            raise ValueError(f"store lock: timeout_s={timeout_s!r} must be >= 0 and poll_s={poll_s!r} > 0")
        self.entry, self.timeout_s, self.poll_s, self.what = Path(entry), float(timeout_s), float(poll_s), what or Path(entry).name
        self.mine: dict | None = None
        self.waited_s = 0.0

    def _try(self) -> bool:
        try:
            fd = os.open(self.entry / LOCK, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
        except FileExistsError:
            return False
        self.mine = me()
        with os.fdopen(fd, "w") as f:
            f.write(json.dumps(self.mine))
        return True

    def __enter__(self) -> "EntryLock":
        self.entry.mkdir(parents=True, exist_ok=True)
        start, announced = time.monotonic(), False
        while not self._try():
            holder = holder_of(self.entry)
            if holder is None:  # released between our try and our read
                continue
            if holder and alive(holder) is False and break_if_dead(self.entry, holder):
                continue
            waited = time.monotonic() - start
            if waited >= self.timeout_s:
                raise StoreBusyError(
                    f"{self.what} is held by another job, {describe(holder)}, and stayed held for the "
                    f"{self.timeout_s:g} s this job may wait (store.lock.timeout_s). Rerun when that job ends (the entry "
                    f"is then skipped or resumed), or raise store.lock.timeout_s; if that job is known to be gone, "
                    f"delete {self.entry / LOCK}.")
            if not announced:
                log.warning("[store] waiting for %s: another job holds it, %s; up to %g s (store.lock.timeout_s), "
                            "then this job skips or resumes it", self.what, describe(holder), self.timeout_s)
                announced = True
            time.sleep(min(self.poll_s, max(self.timeout_s - waited, 0.01)))
        self.waited_s = time.monotonic() - start
        if announced:
            log.info("[store] %s released after %.0f s of waiting", self.what, self.waited_s)
        return self

    def __exit__(self, *exc) -> None:
        if holder_of(self.entry) == self.mine:
            (self.entry / LOCK).unlink(missing_ok=True)
