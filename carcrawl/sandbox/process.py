"""Run the sandbox on its own: in the foreground (``carcrawl sandbox``) or in a child process.

Benchmarks run the server in a separate process so the client's CPU time is measured honestly;
:class:`SandboxProcess` starts it with the ``spawn`` method, hands back the
:class:`~carcrawl.sandbox.layout.SandboxLayout` (every URL the client needs), and at the end
reports the CPU seconds the server used (``resource.getrusage`` in the child, and ``/proc`` while
it runs).
"""

from __future__ import annotations

import asyncio
import contextlib
import multiprocessing as mp
import os
import signal
import sys
import threading
from collections.abc import Callable
from multiprocessing.connection import Connection
from typing import Any

from carcrawl.sandbox.layout import SandboxLayout

START_TIMEOUT_S = 60.0


def _new_loop() -> asyncio.AbstractEventLoop:
    try:
        import uvloop

        return uvloop.new_event_loop()
    except ImportError:  # pragma: no cover - uvloop is a dependency on Linux
        return asyncio.new_event_loop()


def describe(layout: SandboxLayout) -> str:
    """The human summary ``carcrawl sandbox`` prints: how to crawl it, then where everything is."""
    base = layout.engine_url("bing")
    lines = [
        "carcrawl sandbox is running (Ctrl-C to stop)",
        f"search engines ({', '.join(layout.engine_urls)}) at {base}",
        "crawl it from another terminal:",
        f"  carcrawl crawl --sandbox {base} --make ford --model mustang --out sandbox-out",
        "  carcrawl status sandbox-out",
    ]
    hosts = [f"{a}:{p}" for a, p in zip(layout.host_addresses, layout.host_ports, strict=True)]
    lines.append(f"image hosts ({len(hosts)}): {', '.join(hosts)}")
    lines.append(f"photos: {len(layout.photos)}; example image URL: {next(layout.image_urls(1))}")
    lines.append(f"example fault URL: {layout.fault_url('truncated_jpeg')}")
    return "\n".join(lines)


def serve_forever(on_ready: Callable[[SandboxLayout], None] | None = None, **kwargs: Any) -> None:
    """Run a sandbox in this process until SIGINT/SIGTERM. ``kwargs`` go to ``Sandbox``;
    ``on_ready`` gets the layout once every site is bound (default: print :func:`describe`)."""
    from carcrawl.sandbox.server import Sandbox

    loop = _new_loop()
    asyncio.set_event_loop(loop)
    stop = asyncio.Event()

    async def main() -> None:
        sb = Sandbox(**kwargs)
        await sb.start()
        try:
            for sig in (signal.SIGINT, signal.SIGTERM):
                with contextlib.suppress(NotImplementedError, RuntimeError):
                    loop.add_signal_handler(sig, stop.set)
            (on_ready or (lambda lay: print(describe(lay), flush=True)))(sb.layout)
            await stop.wait()
        finally:
            await sb.stop()

    try:
        loop.run_until_complete(main())
    finally:
        loop.close()


def _child(conn: Connection, kwargs: dict[str, Any]) -> None:
    """Child process body: start, send the layout, serve until told to stop, send CPU seconds."""
    import resource

    from carcrawl.sandbox.server import Sandbox

    loop = _new_loop()
    asyncio.set_event_loop(loop)

    async def main() -> None:
        try:
            sb = Sandbox(**kwargs)
            await sb.start()
        except BaseException as e:  # noqa: BLE001 - the parent must hear why, not time out
            conn.send(("error", f"{type(e).__name__}: {e}"))
            return
        conn.send(("ready", sb.layout))
        done = asyncio.Event()

        def wait_for_stop() -> None:
            try:
                while True:
                    msg = conn.recv()
                    if msg == "stop":
                        break
                    if msg == "stats":
                        loop.call_soon_threadsafe(lambda: conn.send(("stats", sb.stats())))
            except (EOFError, OSError):
                pass  # the parent is gone: stop too
            loop.call_soon_threadsafe(done.set)

        threading.Thread(target=wait_for_stop, daemon=True).start()
        await done.wait()
        await sb.stop()

    try:
        loop.run_until_complete(main())
    finally:
        loop.close()
        ru = resource.getrusage(resource.RUSAGE_SELF)
        with contextlib.suppress(OSError):
            conn.send(("cpu", ru.ru_utime + ru.ru_stime))
        conn.close()


class SandboxProcess:
    """A sandbox in a child process (``spawn``). Use as a context manager::

        with SandboxProcess(hosts=16, latency_ms=(0, 0), fault_rate=0) as layout:
            urls = list(layout.image_urls(10_000))
            ...  # run the client here
        print(proc.cpu_seconds)  # the server's CPU time, user + system

    ``kwargs`` are ``Sandbox``'s. ``async with`` works too (the blocking start runs in a thread).
    The child is started with ``spawn`` (no forked copy of the client's loop or threads), so a
    script that uses this must guard its entry point with ``if __name__ == "__main__":``.
    """

    def __init__(self, **kwargs: Any) -> None:
        self.kwargs = kwargs
        self.layout: SandboxLayout | None = None
        self.cpu_seconds: float | None = None
        self._proc: Any = None
        self._conn: Connection | None = None

    @property
    def pid(self) -> int | None:
        return self._proc.pid if self._proc is not None else None

    def start(self) -> SandboxLayout:
        ctx = mp.get_context("spawn")
        parent, child = ctx.Pipe()
        self._proc = ctx.Process(target=_child, args=(child, self.kwargs), name="carcrawl-sandbox", daemon=True)
        self._proc.start()
        child.close()
        self._conn = parent
        if not parent.poll(START_TIMEOUT_S):
            self.stop()
            raise RuntimeError(f"sandbox process did not start within {START_TIMEOUT_S:.0f}s")
        try:
            kind, payload = parent.recv()
        except EOFError:
            self.stop()
            raise RuntimeError(
                "sandbox process exited during start-up (a script that starts it must guard its "
                "entry point with `if __name__ == \"__main__\":`, which the spawn start method needs)"
            ) from None
        if kind != "ready":
            self.stop()
            raise RuntimeError(f"sandbox process failed to start: {payload}")
        self.layout = payload
        return payload

    def cpu_seconds_now(self) -> float | None:
        """The child's CPU seconds so far (user + system), read from /proc; None off Linux."""
        if self._proc is None or self._proc.pid is None:
            return None
        try:
            with open(f"/proc/{self._proc.pid}/stat") as f:
                fields = f.read().rsplit(")", 1)[1].split()
        except OSError:
            return None
        ticks = os.sysconf("SC_CLK_TCK")
        return (int(fields[11]) + int(fields[12])) / ticks  # utime, stime (fields 14, 15 of stat)

    def stats(self) -> dict[str, Any]:
        """The running server's ``stats()`` (requests per host and engine, statuses, faults)."""
        if self._conn is None:
            raise RuntimeError("sandbox process is not running")
        self._conn.send("stats")
        while True:
            kind, payload = self._conn.recv()
            if kind == "stats":
                return payload

    def stop(self) -> float | None:
        """Stop the child and return its CPU seconds (None if it could not report them)."""
        proc, conn = self._proc, self._conn
        if proc is None:
            return self.cpu_seconds
        if conn is not None:
            with contextlib.suppress(OSError, BrokenPipeError):
                conn.send("stop")
            try:
                while conn.poll(10):
                    kind, payload = conn.recv()
                    if kind == "cpu":
                        self.cpu_seconds = float(payload)
                        break
            except (EOFError, OSError):
                pass
            conn.close()
        proc.join(10)
        if proc.is_alive():  # pragma: no cover - only when the child hangs
            proc.terminate()
            proc.join(5)
        self._proc = self._conn = None
        return self.cpu_seconds

    def __enter__(self) -> SandboxLayout:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    async def __aenter__(self) -> SandboxLayout:
        return await asyncio.to_thread(self.start)

    async def __aexit__(self, *exc: object) -> None:
        await asyncio.to_thread(self.stop)


def run_sandbox_process(**kwargs: Any) -> SandboxProcess:
    """Start a sandbox in a child process and return the running handle (call ``.stop()``);
    its ``.layout`` has every URL."""
    proc = SandboxProcess(**kwargs)
    proc.start()
    return proc


def main(argv: list[str] | None = None) -> int:
    """``python -m carcrawl.sandbox``: run the sandbox in the foreground."""
    import argparse
    from pathlib import Path

    p = argparse.ArgumentParser(prog="python -m carcrawl.sandbox", description=__doc__.split("\n")[0])
    p.add_argument("--photos", type=Path, default=None, help="photo folder (default: the shipped set)")
    p.add_argument("--hosts", type=int, default=8)
    p.add_argument("--latency-ms", type=float, nargs=2, default=(20.0, 80.0), metavar=("LOW", "HIGH"))
    p.add_argument("--bandwidth", type=float, default=None, help="bytes/s per connection")
    p.add_argument("--fault-rate", type=float, default=0.1)
    p.add_argument("--chaos", action="store_true")
    p.add_argument("--results-per-query", type=int, default=40)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--block-after", type=int, default=None)
    p.add_argument("--port", type=int, default=0)
    a = p.parse_args(argv)
    try:
        serve_forever(
            photos=a.photos,
            hosts=a.hosts,
            latency_ms=tuple(a.latency_ms),
            bandwidth=a.bandwidth,
            fault_rate=a.fault_rate,
            chaos=a.chaos,
            results_per_query=a.results_per_query,
            seed=a.seed,
            block_after=a.block_after,
            port=a.port,
        )
    except (ValueError, OSError, FileNotFoundError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    return 0
