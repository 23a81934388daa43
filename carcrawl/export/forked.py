"""Run parts of one CPU-bound dataset pass in forked child processes, one per core.

Forked, not spawned: a child starts in a millisecond with numpy and pyarrow already imported,
where a spawned interpreter imports them again (~1 s on the 2-core benchmark machine, a fifth of
the pass it would share). The caller holds no SQLite connection while it forks (see
:meth:`carcrawl.store.dataset.DatasetDB.released`): each part opens its own. A child's result
comes back pickled through a pipe; its exception is raised in the parent; a child that dies
without a result is a :class:`CarcrawlError`.
"""

from __future__ import annotations

import contextlib
import ctypes
import os
import pickle
import signal
import sys
import threading
from collections.abc import Callable
from typing import TYPE_CHECKING, Any, TypeVar

from carcrawl.errors import CarcrawlError

if TYPE_CHECKING:
    from carcrawl.store.dataset import DatasetDB

T = TypeVar("T")

MAX_WORKERS = 4


def available() -> bool:
    """Whether parts can be forked here: on Linux, from a process running one thread (a child
    forked while another thread holds a lock would wait for it forever; the CLI has one thread,
    a program calling the export from its own threads gets the single-process pass)."""
    return sys.platform.startswith("linux") and hasattr(os, "fork") and threading.active_count() == 1


def cores() -> int:
    """Cores this process may run on."""
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1


class Child:
    """One part running in a forked child; :meth:`result` waits for it."""

    def __init__(self, fn: Callable[[], Any]) -> None:
        r, w = os.pipe()
        parent = os.getpid()
        pid = os.fork()
        if pid == 0:  # the child: run, send, leave without the parent's exit handlers
            os.close(r)
            code = 0
            try:
                _die_with(parent)
                try:
                    answer: tuple[bool, Any] = (True, fn())
                except BaseException as e:  # noqa: BLE001 - every failure goes to the parent
                    answer = (False, e)
                try:
                    data = pickle.dumps(answer, protocol=pickle.HIGHEST_PROTOCOL)
                except Exception as e:  # noqa: BLE001 - an unpicklable exception: its text
                    data = pickle.dumps((False, CarcrawlError(f"a worker failed: {answer[1]!r} ({e})")))
                with os.fdopen(w, "wb") as f:
                    f.write(data)
            except BaseException:  # noqa: BLE001 - the parent sees a child without a result
                code = 1
            finally:
                os._exit(code)
        os.close(w)
        self.pid, self._read = pid, r

    def result(self) -> Any:
        with os.fdopen(self._read, "rb") as f:
            data = f.read()
        os.waitpid(self.pid, 0)
        self.pid = 0
        if not data:
            raise CarcrawlError("a worker of the dataset pass died before it finished (out of memory?)")
        try:
            ok, value = pickle.loads(data)
        except Exception as e:  # noqa: BLE001 - e.g. an exception class that cannot be rebuilt here
            raise CarcrawlError(f"a worker of the dataset pass failed and its error could not be read ({e})") from None
        if not ok:
            raise value
        return value

    def kill(self) -> None:
        """End a child whose result is no longer wanted (the parent failed or was interrupted)."""
        if self.pid:
            with contextlib.suppress(ProcessLookupError, ChildProcessError):
                os.kill(self.pid, signal.SIGKILL)
                os.waitpid(self.pid, 0)
            self.pid = 0
            with contextlib.suppress(OSError):
                os.close(self._read)


PR_SET_PDEATHSIG = 1  # linux/prctl.h


def _die_with(parent: int) -> None:
    """The kernel kills this child when its parent dies (a SIGKILLed export leaves no worker
    reading on); a parent already gone by now ends it here."""
    with contextlib.suppress(OSError, AttributeError):
        ctypes.CDLL(None, use_errno=True).prctl(PR_SET_PDEATHSIG, signal.SIGKILL)
    if os.getppid() != parent:
        os._exit(1)


def run_parts(db: DatasetDB, parts: list[Callable[[DatasetDB], T]]) -> list[T]:
    """``parts[0](db)`` in this process and every other part in a forked child with its own
    connection to ``db``'s checkpoint; their results in order. ``db``'s connection is closed
    while the children fork and opened again after (one part: no fork, nothing closed)."""
    from carcrawl.store.dataset import DatasetDB

    if len(parts) == 1:
        return [parts[0](db)]

    def in_child(part: Callable[[DatasetDB], T]) -> Callable[[], T]:
        def run() -> T:
            with DatasetDB.open(db.path) as own:
                return part(own)
        return run

    children: list[Child] = []
    try:
        with db.released():
            children = [Child(in_child(part)) for part in parts[1:]]
        first = parts[0](db)
        return [first, *(c.result() for c in children)]
    finally:
        for c in children:
            c.kill()
