"""The driver of a sharded crawl: the command's own process.

1. **Search pass**, here, with the ordinary pipeline told to stop before downloading: it loads
   the job (queries or URL rows) into the main checkpoint and runs every search, so each engine's
   token bucket is one bucket for the whole crawl. Ctrl-C here behaves as in one process.
2. **Split**: pending candidates go to ``OUT/shards/NNN/checkpoint.sqlite`` by host
   (:mod:`carcrawl.distributed.plan`); the shard count is fixed until those shards are merged.
3. **Run**: one Ray task per shard with work, at most ``workers`` in flight, each the ordinary
   pipeline on its shard (:mod:`carcrawl.distributed.worker`); Ray retries a task whose worker
   died, and the retry resumes from the shard's checkpoint. Progress is read from the shards'
   checkpoints; Ctrl-C is forwarded through the stop file (first: drain, second: stop now).
4. **Merge**: each shard with no work left is folded into the main checkpoint and output folder
   as soon as it is done (:mod:`carcrawl.distributed.merge`).

An interrupted run leaves unmerged shards; the same command runs what is unfinished and merges.
"""

from __future__ import annotations

import dataclasses
import logging
import os
import shutil
import signal
import socket
import time
from collections import Counter
from collections.abc import Callable
from pathlib import Path
from typing import Any

from carcrawl.config import Settings
from carcrawl.distributed.merge import merge_into_main
from carcrawl.distributed.plan import (
    shard_checkpoint,
    shard_dir,
    shard_of,
    shard_settings,
    shards_root,
    stop_file,
)
from carcrawl.distributed.worker import ShardOutcome, run_shard
from carcrawl.errors import CarcrawlError, ConfigError
from carcrawl.stats import Stats
from carcrawl.store.shards import (
    combined_status,
    finish_split,
    latest_progress,
    planned_shards,
    shard_checkpoints,
    shard_has_work,
    split_pending,
)

log = logging.getLogger(__name__)

POLL_S = 0.5
TASK_RETRIES = 3  # a shard whose worker process died is run again (resuming) this many times


def import_ray() -> Any:
    try:
        import ray
    except ImportError:
        raise ConfigError(
            "--workers / --ray need Ray, an optional extra: pip install 'carcrawl[ray]'"
        ) from None
    return ray


def run_sharded(
    settings: Settings,
    job: Any,
    *,
    command: str,
    fresh: bool,
    workers: int | None,
    address: str | None,
    on_event: Callable[[str, Any], None],
    run_async: Callable[[Any], Any],
) -> Any:
    """The whole sharded crawl; returns a :class:`carcrawl.pipeline.RunResult` for all shards."""
    from carcrawl.pipeline import Pipeline, RunResult, run_with_signals

    if workers is not None and workers < 1:
        raise ConfigError("--workers: must be 1 or more")
    ray = import_ray()
    if address:
        _reachable(address)  # before anything is loaded or searched
    settings = _absolute(settings)
    main = settings.checkpoint_path
    if fresh:
        shutil.rmtree(shards_root(settings), ignore_errors=True)
    started = time.monotonic()
    prep = run_async(run_with_signals(
        Pipeline(settings, job, command=command, fresh=fresh, on_event=on_event, search_only=True)
    ))
    if prep.state != "done":
        return prep

    stop = stop_file(settings)
    stop.unlink(missing_ok=True)
    t_ray = time.monotonic()
    planned = planned_shards(main)
    _init_ray(ray, address, workers or planned or 1)
    t_shards = time.monotonic()
    try:
        n = planned or workers or max(1, int(ray.cluster_resources().get("CPU", 1)))
        in_flight_cap = min(workers or n, n)
        if workers is not None and n != workers:
            log.warning("this folder was split into %d shards by an earlier run; running at most %d at once", n, in_flight_cap)
        split_pending(main, [shard_checkpoint(settings, k) for k in range(n)], lambda url: shard_of(url, n))
        base = Counter(prep.stats["counts"])
        outcomes, state = _run_shards(ray, settings, command, n, in_flight_cap, on_event, base)
        t_end = time.monotonic()
    finally:
        ray.shutdown()
        stop.unlink(missing_ok=True)
    if state == "done":
        finish_split(main)
        shutil.rmtree(shards_root(settings), ignore_errors=True)

    counts: Counter[str] = Counter(prep.stats["counts"])
    reasons: Counter[str] = Counter(prep.stats["reasons"])
    classifier = None
    per_shard: Counter[str] = Counter()
    for o in outcomes:
        per_shard[str(o.shard)] += o.counts.get("fetched", 0)
        counts.update(o.counts)
        reasons.update(o.reasons)
        classifier = classifier or o.classifier
    stats = {"elapsed_s": round(time.monotonic() - started, 3), "counts": dict(counts),
             "reasons": dict(reasons.most_common()), "workers": in_flight_cap, "shards": n,
             "fetched_per_shard": dict(per_shard),
             # where the time went: Ray's start-up, then the shards (split, runs, merges)
             "ray_start_s": round(t_shards - t_ray, 3), "shard_phase_s": round(t_end - t_shards, 3)}
    status = status_of(settings)
    return RunResult(state, prep.run_id, stats["elapsed_s"], stats, status, classifier)  # type: ignore[arg-type]


def _absolute(settings: Settings) -> Settings:
    """Output paths made absolute: a worker on another node (or in another folder) must write
    where the driver merges from."""
    c = settings.crawl
    crawl = dataclasses.replace(c, out=str(Path(c.out).resolve()),
                                checkpoint=str(Path(c.checkpoint).resolve()) if c.checkpoint else "")
    return dataclasses.replace(settings, crawl=crawl)


def status_of(settings: Settings) -> dict[str, Any]:
    """The main checkpoint and any unmerged shards counted as one dataset."""
    main = settings.checkpoint_path
    return combined_status(main, shard_checkpoints(main))


def _init_ray(ray: Any, address: str | None, cpus: int) -> None:
    quiet = {"logging_level": logging.ERROR, "log_to_driver": False}
    if address:
        try:
            ray.init(address=address, **quiet)
        except (ConnectionError, RuntimeError) as e:
            raise ConfigError(f"--ray {address}: cannot connect to the Ray cluster ({str(e).splitlines()[0]})") from None
        return
    # a local cluster sized to the shards asked for (not to the cores), a small object store
    # (only outcomes cross it), no dashboard
    ray.init(num_cpus=cpus, include_dashboard=False, object_store_memory=80 * 2**20, **quiet)


def _reachable(address: str, timeout: float = 5.0) -> None:
    """A ``host:port`` that does not answer is one clear error now, not Ray's minutes of
    reconnect attempts (``auto`` and ``ray://`` addresses are left to Ray)."""
    host, sep, port = address.rpartition(":")
    if not sep or not port.isdigit() or "://" in address:
        return
    try:
        socket.create_connection((host.strip("[]") or "127.0.0.1", int(port)), timeout=timeout).close()
    except OSError as e:
        raise ConfigError(f"--ray {address}: no Ray cluster answers there ({e.strerror or e})") from None


def _run_shards(
    ray: Any, settings: Settings, command: str, n: int, cap: int, on_event: Callable[[str, Any], None],
    base: Counter[str],
) -> tuple[list[ShardOutcome], str]:
    main = settings.checkpoint_path
    out = settings.out_dir
    threads = max(1, (os.cpu_count() or 1) // cap)
    remote = ray.remote(num_cpus=1, max_retries=TASK_RETRIES)(run_shard)
    stop = stop_file(settings)

    todo: list[int] = []
    for k in range(n):
        if shard_has_work(shard_checkpoint(settings, k)):
            todo.append(k)
        else:  # finished before (a run killed before its merge), or got no hosts at all
            merge_into_main(main, shard_dir(settings, k), out, k)

    presses = 0

    def on_signal(signum: int, frame: Any) -> None:
        nonlocal presses
        presses += 1
        if presses > 2:  # the shards did not stop on "now": leave them to Ray's shutdown
            raise KeyboardInterrupt
        stop.parent.mkdir(parents=True, exist_ok=True)
        stop.write_text("drain" if presses == 1 else "now")
        if presses == 1:
            on_event("stopping", None)

    old = {sig: signal.signal(sig, on_signal) for sig in (signal.SIGINT, signal.SIGTERM)}
    outcomes: list[ShardOutcome] = []
    running: dict[Any, int] = {}
    stats = Stats()
    done_counts: Counter[str] = Counter(base)
    interrupted = False
    try:
        while todo or running:
            while todo and len(running) < cap and not presses:
                k = todo.pop(0)
                ref = remote.remote(shard_settings(settings, k, threads), k, command, stop)
                running[ref] = k
            if not running:
                break  # stopped before every shard started
            ready, _ = ray.wait(list(running), num_returns=1, timeout=POLL_S)
            for ref in ready:
                k = running.pop(ref)
                try:
                    outcome: ShardOutcome = ray.get(ref)
                except Exception as e:  # noqa: BLE001 - a shard's error, unwrapped for the user
                    stop.write_text("now")
                    raise _unwrap(e, k) from None
                outcomes.append(outcome)
                done_counts.update(outcome.counts)
                if outcome.state == "done" and not shard_has_work(shard_checkpoint(settings, k)):
                    merge_into_main(main, shard_dir(settings, k), out, k)
                else:
                    interrupted = True
            _report(settings, running.values(), done_counts, stats, on_event)
    finally:
        for sig, handler in old.items():
            signal.signal(sig, handler)
    state = "interrupted" if (interrupted or presses or todo) else "done"
    return outcomes, state


def _report(settings: Settings, running: Any, done: Counter[str], stats: Stats,
            on_event: Callable[[str, Any], None]) -> None:
    """Progress of all workers: finished shards' counts plus what running shards last recorded."""
    c: Counter[str] = Counter(done)
    for k in running:
        _, fetched, failed, classified, nbytes = latest_progress(shard_checkpoint(settings, k))
        c["fetched"] += fetched
        c["failed"] += failed
        c["classified"] += classified
        c["bytes"] += nbytes
    stats.counts = c
    on_event("progress", stats)


def _unwrap(e: Exception, shard: int) -> Exception:
    """A shard's CarcrawlError as itself (one clear line), anything else named by its shard."""
    cause = getattr(e, "cause", None)
    if isinstance(cause, CarcrawlError):
        return cause
    first = str(cause or e).strip().splitlines()
    return CarcrawlError(f"shard {shard}: {first[-1] if first else type(e).__name__}")
