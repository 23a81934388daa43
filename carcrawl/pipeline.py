"""Wires the stages into one asyncio pipeline and runs it to the end, or until told to stop.

    queries/URL list ─► checkpoint ─► SearchStage ─► checkpoint ─► DownloadStage ─► files
                                                                        │ bounded queue
                                                                        ▼
                                                   checkpoint ◄── ClassifyStage

The checkpoint is the hand-off between search and download (so both resume from it); the queue
between download and classify is bounded, so a slow classifier slows the downloads instead of
filling memory. :func:`run` is the whole crawl; the CLI, the demo, tests and benchmarks call it.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import hashlib
import json
import logging
import signal
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from carcrawl.classify_stage import ClassifyStage, load_classifier
from carcrawl.config import ClassifyConfig, Settings
from carcrawl.download import ClassifyItem, DownloadStage
from carcrawl.errors import CarcrawlError
from carcrawl.filestore import ImageFiles
from carcrawl.models import Query
from carcrawl.net import HttpClient, TokenBucket
from carcrawl.quota import Quota
from carcrawl.search import Engine, SearchStage
from carcrawl.stats import Stats
from carcrawl.store import Store, open_readonly, status_counts

log = logging.getLogger(__name__)


@dataclass
class Job:
    """What to crawl: queries to search for, or URL rows to fetch directly.

    ``fingerprint`` identifies the input: a resumed run with the same input skips loading it
    again, a run with a changed input adds what is new (idempotent inserts)."""

    queries: Callable[[], Iterable[Query]] | None = None
    urls: Callable[[], Iterable[Any]] | None = None  # rows with .url and .labels (carcrawl.urllists.UrlRow)
    fingerprint: str = ""
    bodytype_queries: Callable[[], Iterable[Query]] | None = None
    bodytype_sources: tuple[str, ...] = ()


@dataclass
class RunResult:
    state: str  # done | interrupted
    run_id: int
    elapsed_s: float
    stats: dict[str, Any]
    status: dict[str, Any]
    classifier: str | None = None


class Pipeline:
    """One crawl run. ``stop()`` (first Ctrl-C) drains and commits; cancelling the task of
    :meth:`run` (second Ctrl-C) stops at once; a kill loses only uncommitted rows.

    Every task has an owner: the stages, the checkpoint's flusher and the progress reporter run
    in one ``asyncio.TaskGroup``, so a stage that fails (a full disk, a classifier that will not
    load, a commit that fails) cancels the others and the run ends with that stage's error."""

    def __init__(
        self,
        settings: Settings,
        job: Job,
        *,
        command: str = "crawl",
        fresh: bool = False,
        on_event: Callable[[str, Any], None] | None = None,
        classifier_loader: Callable[[ClassifyConfig], Any] = load_classifier,
        search_only: bool = False,
    ):
        self.settings = settings
        self.job = job
        self.command = command
        self.fresh = fresh
        self.stats = Stats()
        self.on_event = on_event or (lambda kind, data: None)
        self.classifier_loader = classifier_loader
        self.search_only = search_only  # load the job and search; downloads are left to shards
        self._stages: list[Any] = []
        self.stopping = False
        self.capped = False  # stopped because --max-images was reached: a finished run, not an interrupted one
        self.classifier_name: str | None = None

    def stop(self) -> None:
        self.stopping = True
        for stage in self._stages:
            stage.stop()
        self.on_event("stopping", None)

    async def run(self) -> RunResult:
        s = self.settings
        out = s.out_dir
        out.mkdir(parents=True, exist_ok=True)
        store = await Store.open(
            s.checkpoint_path, fresh=self.fresh, commit_rows=s.store.commit_rows, commit_interval=s.store.commit_interval
        )
        state = "failed"
        reason: str | None = None
        run_id = 0
        files = ImageFiles(out)
        try:
            recovered = await store.recover()
            if any(recovered.values()):
                self.on_event("recovered", recovered)
            run_id = await store.start_run(self.command, _settings_json(s))
            removed = await asyncio.to_thread(files.prepare)
            if removed:
                self.on_event("temp_removed", removed)
            await self._load_job(store)
            pending = await store.count_pending_work()
            self.on_event("start", {"searches": pending[0], "candidates": pending[1], "unclassified": pending[2]})
            async with HttpClient(s.download, s.user_agent, s.crawl.allow_networks) as client:
                await self._run_stages(store, client, files, run_id)
            state = "interrupted" if self.stopping else "done"
        except asyncio.CancelledError:
            state, reason = "interrupted", "cancelled"
            raise
        except CarcrawlError as e:
            state, reason = "failed", str(e)
            raise
        finally:
            # the last commit and the close run to their end even if a second Ctrl-C cancels us
            # meanwhile: an open aiosqlite connection is a live thread, which would hang the exit
            closing = asyncio.ensure_future(self._close(store, files, run_id, state, reason))
            try:
                await asyncio.shield(closing)
            except asyncio.CancelledError:
                if not closing.done():
                    await closing
                raise
        status = await asyncio.to_thread(_read_status, s.checkpoint_path)
        return RunResult(state, run_id, self.stats.snapshot()["elapsed_s"], self.stats.snapshot(), status, self.classifier_name)  # type: ignore[arg-type]

    async def _close(self, store: Store, files: ImageFiles, run_id: int, state: str, reason: str | None) -> None:
        with contextlib.suppress(Exception):
            await files.close()  # the writes still under way end (their threads too) before the last commit
        with contextlib.suppress(Exception):
            store.record_progress(run_id, *self._progress_numbers())
            # the stages are over, so nothing is in flight: what is still marked so (queued,
            # waiting for a retry, cut off by a failure) is work for the next run
            await store.reset_in_flight()
            await store.finish_run(run_id, state, reason)
        try:
            await store.close()
        except CarcrawlError:
            if state != "failed":  # the last commit failed: say so (unless an error is already on its way)
                raise

    async def _load_job(self, store: Store) -> None:
        s = self.settings
        key = "job:" + hashlib.sha256(self.job.fingerprint.encode()).hexdigest()[:16]
        if await store.get_meta(key) == "loaded":
            return
        sources = [n for n in s.crawl.sources if n != "urls"]
        if self.job.queries is not None and sources:
            target = -(-s.crawl.per_query // len(sources))
            n = await store.add_queries(self.job.queries(), sources, target)
            self.on_event("queries_added", n)
        if self.job.bodytype_queries is not None and self.job.bodytype_sources:
            await store.add_queries(self.job.bodytype_queries(), list(self.job.bodytype_sources), 0)
        if self.job.urls is not None:
            from carcrawl.sources import normalize_url

            n = 0
            for row in self.job.urls():
                store.add_url_candidate(row.url, normalize_url(row.url), row.labels, rank=n)
                n += 1
                if n % 5000 == 0:
                    await store.flush()
            await store.flush()
            self.on_event("urls_added", n)
        await store.set_meta(key, "loaded")

    def _engines(self) -> dict[str, Engine]:
        from carcrawl.sources import make_source

        engines = {}
        wanted = [n for n in self.settings.crawl.sources if n != "urls"]
        for extra in self.job.bodytype_sources:
            if extra not in wanted:
                wanted.append(extra)
        for name in wanted:
            es = self.settings.engines[name]
            options = dict(es.options)
            if es.base_url:
                options["base_url"] = es.base_url
            try:
                source = make_source(name, **options)
            except (TypeError, ValueError) as e:
                raise CarcrawlError(f"engines.{name}.options: {e}") from None
            engines[name] = Engine(source, es, TokenBucket(es.rate, es.burst))
        return engines

    async def _run_stages(self, store: Store, client: HttpClient, files: ImageFiles, run_id: int) -> None:
        s = self.settings
        classify_on = s.classify.enabled and not self.search_only
        queue: asyncio.Queue[ClassifyItem | None] | None = asyncio.Queue(s.download.queue_size) if classify_on else None
        search = SearchStage(store, client, self._engines(), self.stats)
        download = DownloadStage(store, client, files, s.download, self.stats, queue, max_pixels=s.classify.max_pixels,
                                 quota=await self._quota(store))
        self._stages: list[Any] = [search, download]
        classify = None
        if classify_on:
            assert queue is not None

            def ready(desc: str) -> None:
                self.classifier_name = desc
                self.on_event("classifier", desc)

            classify = ClassifyStage(store, files, s.classify, self.stats, queue, self.classifier_loader, ready)
            classify.start_loading()
            self._stages.append(classify)
        if self.stopping:
            for stage in self._stages:
                stage.stop()
        elif self.capped:  # the cap was reached before this run stored anything
            search.stop()
            download.stop()
        search_done = asyncio.Event()
        stages_done = asyncio.Event()

        async def searching() -> None:
            await search.run()
            await store.flush()
            search_done.set()

        async def downloading() -> None:
            try:
                await download.run(search_done)
            finally:
                await files.drain()
            if queue is not None:  # only on a normal end: a cancelled run has no classifier to tell
                await queue.put(None)

        known = store.new_candidates  # the distinct URLs loaded before the start event counted them

        async def reporting() -> None:
            while not stages_done.is_set():
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(stages_done.wait(), s.store.commit_interval)
                self.stats.counts["new_candidates"] = store.new_candidates - known
                store.record_progress(run_id, *self._progress_numbers())
                self.on_event("progress", self.stats)

        async def flushing() -> None:
            flusher = asyncio.ensure_future(store.flush_forever())
            ended = asyncio.ensure_future(stages_done.wait())
            try:
                await asyncio.wait({flusher, ended}, return_when=asyncio.FIRST_COMPLETED)
            finally:
                flusher.cancel()
                ended.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await flusher  # its error (a failed commit) ends the run

        async def stages() -> None:
            async with asyncio.TaskGroup() as inner:
                inner.create_task(searching(), name="search")
                if not self.search_only:
                    inner.create_task(downloading(), name="download")
                if classify is not None:
                    inner.create_task(classify.run(), name="classify")
                    inner.create_task(classify.loaded(), name="classifier-load")
            stages_done.set()

        try:
            async with asyncio.TaskGroup() as group:
                group.create_task(stages(), name="stages")
                group.create_task(flushing(), name="store-flusher")
                group.create_task(reporting(), name="progress")
        except BaseExceptionGroup as eg:
            raise _first_error(eg) from None

    async def _quota(self, store: Store) -> Quota | None:
        c = self.settings.crawl
        if not c.max_images and not c.per_class:
            return None
        total, counts = await store.stored_per_class()

        def full() -> None:
            # like a drain, but only of search and download: what was stored still gets classified
            self.capped = True
            self.on_event("capped", c.max_images)
            for stage in self._stages[:2]:
                stage.stop()

        quota = Quota(c.max_images, c.per_class, total, counts, on_full=full)
        if quota.full:
            full()
        return quota

    def _progress_numbers(self) -> tuple[int, int, int, int, int]:
        c = self.stats.counts
        return (c["searches_done"], c["fetched"], c["failed"], c["classified"], c["bytes"])


def _first_error(eg: BaseExceptionGroup) -> BaseException:
    """The error to end the run with: the first that is not a cancellation (a TaskGroup gathers
    the failing stage's error and what the others raised while they were cancelled)."""
    for e in eg.exceptions:
        if isinstance(e, BaseExceptionGroup):
            e = _first_error(e)
        if not isinstance(e, asyncio.CancelledError):
            return e
    return eg.exceptions[0]


def _settings_json(settings: Settings) -> str:
    data = dataclasses.asdict(settings)
    for eng in data.get("engines", {}).values():  # never store secrets that slipped into options
        for k in list(eng.get("options", {})):
            if "key" in k.lower() or "secret" in k.lower() or "token" in k.lower():
                eng["options"][k] = "***"
    return json.dumps(data, default=str, sort_keys=True)


def _read_status(path: Path) -> dict[str, Any]:
    con = open_readonly(path)
    try:
        return status_counts(con)
    finally:
        con.close()


async def run_with_signals(pipeline: Pipeline) -> RunResult:
    """Run a pipeline with Ctrl-C handling: the first SIGINT/SIGTERM drains and commits, the
    second cancels at once (what was committed stays committed)."""
    loop = asyncio.get_running_loop()
    task = asyncio.current_task()
    presses = 0

    def on_signal() -> None:
        nonlocal presses
        presses += 1
        if presses == 1:
            pipeline.stop()
        elif task is not None:
            task.cancel()

    installed = []
    for sig in (signal.SIGINT, signal.SIGTERM):
        with contextlib.suppress(NotImplementedError, RuntimeError):
            loop.add_signal_handler(sig, on_signal)
            installed.append(sig)
    try:
        return await pipeline.run()
    finally:
        for sig in installed:
            loop.remove_signal_handler(sig)
            if presses:  # already stopping: a late press must not kill the process mid-exit
                signal.signal(sig, signal.SIG_IGN)

