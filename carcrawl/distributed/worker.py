"""One shard, run inside a Ray worker: today's single-process pipeline, unchanged, on the
shard's own folder and checkpoint.

The driver cannot call into a pipeline in another process, so it asks it to stop through a file
every worker can see (the output folder is shared by all nodes): ``drain`` does what the first
Ctrl-C does in one process (finish transfers in flight, commit, exit), ``now`` what the second
does (cancel; what was committed stays committed). A retried shard (Ray re-runs a task whose
worker died) simply opens its checkpoint again and resumes, like any killed crawl.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from carcrawl.config import Settings

STOP_POLL_S = 0.2
PID_FILE = "worker.pid"


@dataclass(frozen=True)
class ShardOutcome:
    """What a shard's run reports back to the driver (small: it crosses processes)."""

    shard: int
    state: str  # done | interrupted | cancelled
    counts: dict[str, int] = field(default_factory=dict)
    reasons: dict[str, int] = field(default_factory=dict)
    elapsed_s: float = 0.0
    classifier: str | None = None
    pid: int = 0


def read_stop(path: Path) -> str:
    try:
        return path.read_text().strip()
    except OSError:
        return ""


async def _watch(stop: Path, pipeline: Any, main: asyncio.Task[Any]) -> None:
    draining = False
    while True:
        word = read_stop(stop)
        if word == "now":
            main.cancel()
            return
        if word == "drain" and not draining:
            draining = True
            pipeline.stop()
        await asyncio.sleep(STOP_POLL_S)


def run_shard(settings: Settings, shard: int, command: str, stop: Path) -> ShardOutcome:
    """Run shard ``shard`` to the end (or until the stop file says so) and say how it went."""
    from carcrawl.pipeline import Job, Pipeline

    logging.basicConfig(level=logging.WARNING, format=f"%(levelname)s shard {shard} %(name)s: %(message)s")
    out = settings.out_dir
    out.mkdir(parents=True, exist_ok=True)
    (out / PID_FILE).write_text(f"{os.getpid()}\n")  # which process runs this shard (operators, tests)
    pipeline = Pipeline(settings, Job(fingerprint="shard"), command=f"{command} (shard {shard})")

    async def go() -> Any:
        main = asyncio.current_task()
        assert main is not None
        watcher = asyncio.create_task(_watch(stop, pipeline, main))
        try:
            return await pipeline.run()
        finally:
            watcher.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await watcher

    try:
        result = _run(go())
    except asyncio.CancelledError:
        snap = pipeline.stats.snapshot()
        return ShardOutcome(shard, "cancelled", dict(snap["counts"]), dict(snap["reasons"]),  # type: ignore[call-overload]
                            float(snap["elapsed_s"]), pipeline.classifier_name, os.getpid())  # type: ignore[arg-type]
    return ShardOutcome(shard, result.state, dict(result.stats["counts"]), dict(result.stats["reasons"]),
                        result.elapsed_s, result.classifier, os.getpid())


def _run(coro: Any) -> Any:
    try:
        import uvloop
    except ImportError:
        return asyncio.run(coro)
    return uvloop.run(coro)
