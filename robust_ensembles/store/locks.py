"""Entry locks that jobs wait on: `<entry>/.lock`, held with flock for the holder's lifetime and naming it.

The holder opens `<entry>/.lock`, takes an exclusive `flock` on it and writes its host, pid and start
time into it; on release it empties the file and unlocks (the file is never deleted, so two jobs can
never hold locks on two different files of one entry). The kernel drops a flock when its process dies,
however it dies, so a lock cannot outlive its job (on NFS, Linux maps flock onto the server's byte-range
locks, which the server frees when the client's lease ends). A job that finds the lock taken:

* waits while it is held (one line saying for whom and how long at most), polling every `poll_s`, up
  to `timeout_s` (`store.lock.timeout_s`), then gives up with a `StoreBusyError`;
* takes it when it is free, saying so with a warning when the file still names a holder: a job that
  was killed (`kill -9`, a preempted node) before it could release.
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

from robust_ensembles.core.errors import ConfigError, StoreBusyError

log = logging.getLogger(__name__)

LOCK = ".lock"


def me() -> dict:
    return {"host": socket.gethostname(), "pid": os.getpid(),
            "since": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds")}


def _read(f) -> dict:
    f.seek(0)
    text = f.read()
    try:
        return json.loads(text) if text.strip() else {}
    except json.JSONDecodeError:
        return {"unreadable": text[:80]}


def holder_of(entry: Path) -> dict | None:
    """Who holds the entry's lock now (its record; {} when the holder wrote none yet), or None when nobody
    does. Reads without taking the lock."""
    path = Path(entry) / LOCK
    try:
        f = open(path)
    except (FileNotFoundError, PermissionError):
        return None
    with f:
        try:
            fcntl.flock(f, fcntl.LOCK_SH | fcntl.LOCK_NB)  # (a job taking the lock this instant retries: __enter__)
        except BlockingIOError:
            return _read(f)
        fcntl.flock(f, fcntl.LOCK_UN)
        return None


def describe(holder: dict) -> str:
    return f"pid {holder.get('pid')} on {holder.get('host')} (since {holder.get('since')})" if holder.get("pid") \
        else "a job that has not written its name yet"


class EntryLock:
    """Context manager: hold `<entry>/.lock`, waiting for a holder up to timeout_s."""

    def __init__(self, entry: Path, timeout_s: float = 0, poll_s: float = 5.0, what: str = ""):
        for key, value, low in (("timeout_s", timeout_s, 0), ("poll_s", poll_s, 1e-9)):
            if isinstance(value, bool) or not isinstance(value, (int, float)) or value < low:
                raise ConfigError(f"store.lock.{key}={value!r} must be a number of seconds "
                                  f"{'>= 0' if low == 0 else '> 0'}.")
        self.entry, self.timeout_s, self.poll_s = Path(entry), float(timeout_s), float(poll_s)
        self.what = what or self.entry.name
        self.file = None
        self.waited_s = 0.0

    def __enter__(self) -> "EntryLock":
        self.entry.mkdir(parents=True, exist_ok=True)
        f = open(self.entry / LOCK, "a+")
        try:
            return self._take(f)
        except BaseException:
            f.close()
            raise

    def _take(self, f) -> "EntryLock":
        start, announced, glance = time.monotonic(), False, 0
        while True:
            try:
                fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)
                break
            except BlockingIOError:
                pass
            holder, waited = _read(f), time.monotonic() - start
            if not holder and glance < 5:  # an empty lock held an instant: `holder_of` looking, or a holder starting
                glance += 1
                time.sleep(0.05)
                continue
            if waited >= self.timeout_s:
                raise StoreBusyError(
                    f"{self.what} is held by another job, {describe(holder)}, and stayed held for the "
                    f"{self.timeout_s:g} s this job may wait (store.lock.timeout_s). Rerun when that job ends (the "
                    f"entry is then skipped or resumed), or raise store.lock.timeout_s.")
            if not announced:
                log.warning("[store] waiting for %s: another job holds it, %s; up to %g s (store.lock.timeout_s), "
                            "then this job skips or resumes it", self.what, describe(holder), self.timeout_s)
                announced = True
            time.sleep(min(self.poll_s, max(self.timeout_s - waited, 0.01)))
        left = _read(f)
        if left.get("pid"):
            log.warning("[store] broke the lock of %s: left by %s, a job that ended without releasing it (killed); "
                        "this job goes on with the entry", self.entry, describe(left))
        f.seek(0)
        f.truncate()
        f.write(json.dumps(me()))
        f.flush()
        self.file, self.waited_s = f, time.monotonic() - start
        if announced:
            log.info("[store] %s released after %.0f s of waiting", self.what, self.waited_s)
        return self

    def __exit__(self, *exc) -> None:
        f, self.file = self.file, None
        if f is None:
            return
        try:
            f.seek(0)
            f.truncate()  # nobody's: an empty lock file
            f.flush()
        finally:
            fcntl.flock(f, fcntl.LOCK_UN)
            f.close()
