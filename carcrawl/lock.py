"""One crawl per output folder: an advisory ``flock`` on ``<out>/.carcrawl.lock``.

Two crawls on one folder would each apply their own per-host limits (politeness silently doubled)
and race on the checkpoint, so a second ``crawl``/``fetch``/``demo`` refuses at once and names the
process that holds the folder. ``flock`` belongs to the open file, so the kernel drops it when the
holder dies in any way, SIGKILL included: a killed crawl never leaves a stale lock, and the file
left behind only tells who held it last. ``status`` uses :func:`holder` to tell a run that is
still going from one that was killed (its row still says ``running``).
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import IO

from carcrawl.errors import CarcrawlError

LOCK_NAME = ".carcrawl.lock"


class FolderLockedError(CarcrawlError):
    """Another carcrawl process holds the output folder."""

    exit_code = 75  # EX_TEMPFAIL: try again when the other run is over


@dataclass(frozen=True)
class Holder:
    """Who holds (or last held) the folder, as the holder wrote it into the lock file."""

    pid: int
    command: str
    started_at: float

    def describe(self) -> str:
        started = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(self.started_at)) if self.started_at else "?"
        return f"pid {self.pid} ({self.command}), started {started}"


def _read(path: Path) -> Holder | None:
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
        return Holder(int(data["pid"]), str(data.get("command", "?")), float(data.get("started_at", 0)))
    except (OSError, ValueError, KeyError, TypeError):
        return None


class FolderLock:
    """``with FolderLock(out, "carcrawl crawl ..."):`` holds the folder for the block.

    Acquisition does not wait for the other run (that could be hours): it retries for a fraction
    of a second only, so a ``status`` peeking at the lock at that instant does not look like a crawl."""

    def __init__(self, out: Path, command: str, retry_s: float = 0.5):
        self.path = Path(out) / LOCK_NAME
        self.command = command
        self.retry_s = retry_s
        self._file: IO[str] | None = None

    def acquire(self) -> None:
        f = open(self.path, "a+", encoding="utf-8")  # noqa: SIM115 - held until release()
        deadline = time.monotonic() + self.retry_s
        while True:
            try:
                fcntl.flock(f.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
                break
            except BlockingIOError:
                if time.monotonic() >= deadline:
                    f.close()
                    who = _read(self.path)
                    held = who.describe() if who else "another process"
                    raise FolderLockedError(
                        f"{self.path.parent}: already in use by {held}; wait for it to finish "
                        f"(or stop it with Ctrl-C) and run this again"
                    ) from None
                time.sleep(0.05)
        f.seek(0)
        f.truncate()
        f.write(json.dumps({"pid": os.getpid(), "command": self.command, "started_at": time.time()}))
        f.flush()
        self._file = f

    def release(self) -> None:
        f, self._file = self._file, None
        if f is not None:
            with contextlib.suppress(OSError):
                fcntl.flock(f.fileno(), fcntl.LOCK_UN)
            f.close()

    def __enter__(self) -> FolderLock:
        self.acquire()
        return self

    def __exit__(self, *exc: object) -> None:
        self.release()


def holder(out: Path) -> Holder | None:
    """The process holding ``out`` now, or None when nobody does (a killed run's lock is free)."""
    path = Path(out) / LOCK_NAME
    try:
        f = open(path, encoding="utf-8")  # noqa: SIM115
    except OSError:
        return None
    with f:
        try:
            fcntl.flock(f.fileno(), fcntl.LOCK_SH | fcntl.LOCK_NB)
        except BlockingIOError:
            return _read(path) or Holder(0, "?", 0.0)
        fcntl.flock(f.fileno(), fcntl.LOCK_UN)
    return None


def command_line() -> str:
    """How this process was started, for the lock file (``carcrawl crawl --out x``)."""
    args = sys.argv[1:]
    return " ".join(["carcrawl", *args])[:300]
