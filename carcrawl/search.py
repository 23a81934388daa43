"""The search stage: pending (query, source) searches → result pages → candidate rows.

Each engine gets its own token bucket and concurrency (engines are stricter than image hosts:
the seed crawl's search phase took 5 hours because engines get persnickety). A block/CAPTCHA
page pauses the whole engine, not just one query. A search pages on until its per-query target
is met, the results run dry, or ``max_pages``; its cursor is checkpointed after every page, so a
resumed crawl continues from the page it had reached. Body-type searches only count hits.
"""

from __future__ import annotations

import asyncio
import logging
from dataclasses import dataclass

from carcrawl.config import EngineSettings
from carcrawl.models import Failure, SearchPage
from carcrawl.net import HttpClient, TokenBucket, backoff_delay, parse_retry_after
from carcrawl.sources import normalize_url
from carcrawl.sources.base import SearchSource
from carcrawl.stats import Stats
from carcrawl.store import SearchTask, Store

log = logging.getLogger(__name__)

MAX_PAGE_RETRIES = 3
MAX_BLOCKS_PER_SEARCH = 3
#: problems that mean "the engine is overloaded": they pause the engine's bucket
ENGINE_OVERLOAD = frozenset({"http_429", "http_503"})


@dataclass
class Engine:
    """A source plus its politeness state."""

    source: SearchSource
    settings: EngineSettings
    bucket: TokenBucket


class SearchStage:
    def __init__(self, store: Store, client: HttpClient, engines: dict[str, Engine], stats: Stats):
        self.store = store
        self.client = client
        self.engines = engines
        self.stats = stats
        self.stopping = False

    async def run(self) -> None:
        """One feeder and ``concurrency`` workers per engine, all in one TaskGroup: a worker that
        fails cancels the rest and the error goes up to the pipeline."""
        async with asyncio.TaskGroup() as group:
            for name, eng in self.engines.items():
                group.create_task(self._run_engine(name, eng), name=f"search-{name}")

    def stop(self) -> None:
        self.stopping = True

    async def _run_engine(self, name: str, engine: Engine) -> None:
        queue: asyncio.Queue[SearchTask | None] = asyncio.Queue(maxsize=engine.settings.concurrency * 2)
        async with asyncio.TaskGroup() as workers:
            for i in range(engine.settings.concurrency):
                workers.create_task(self._worker(engine, queue), name=f"search-{name}-{i}")
            after_id = 0
            while not self.stopping:
                tasks = await self.store.next_searches(name, after_id, 100)
                if not tasks:
                    break
                after_id = tasks[-1].search_id
                for t in tasks:
                    if self.stopping:
                        break
                    await queue.put(t)
            for _ in range(engine.settings.concurrency):
                await queue.put(None)

    async def _worker(self, engine: Engine, queue: asyncio.Queue[SearchTask | None]) -> None:
        while (task := await queue.get()) is not None:
            if self.stopping:
                continue
            await self._search(engine, task)

    async def _search(self, engine: Engine, task: SearchTask) -> None:
        source, es = engine.source, engine.settings
        cursor, page_no, found = task.cursor, task.pages, task.found
        counting = task.kind == "bodytype"
        distinct: set[str] = set()
        retries = blocks = 0
        while not self.stopping:
            if page_no >= es.max_pages:
                self._finish(task, page_no, cursor, found, None, distinct, counting)
                return
            await engine.bucket.acquire()
            request = source.build_request(task.text, cursor, es.per_page)
            resp = await self.client.fetch_page(request)
            self.stats.inc("search_requests")
            if isinstance(resp, Failure):
                page = SearchPage(problem=resp.reason)
                retryable, retry_after = not resp.terminal, resp.retry_after
            else:
                page = source.parse(resp.status, resp.headers, resp.body, cursor)
                retryable = resp.status in (429, 500, 502, 503, 504)
                retry_after = parse_retry_after(resp.headers.get("retry-after"))
            if page.blocked:
                blocks += 1
                self.stats.inc("search_blocked")
                log.warning("%s returned a block page; pausing the engine for %.1f s", source.name, es.block_backoff)
                engine.bucket.pause(es.block_backoff)
                if blocks >= MAX_BLOCKS_PER_SEARCH:
                    self._fail(task, page_no, cursor, found, "blocked")
                    return
                continue
            if page.problem and retryable and retries < MAX_PAGE_RETRIES:
                retries += 1
                delay = backoff_delay(retries, 1.0, 120.0, retry_after)
                if page.problem in ENGINE_OVERLOAD:
                    # the engine says it is overloaded: the whole engine waits, not just this query
                    # (the other workers' next acquire waits for the pause too)
                    log.warning("%s answered %s; pausing the engine for %.1f s", source.name, page.problem, delay)
                    engine.bucket.pause(delay)
                else:
                    await asyncio.sleep(delay)
                continue
            if page.problem and page.problem not in ("no_results", "empty") and not page.candidates:
                self.stats.reason(f"search:{page.problem}")
                if page_no == task.pages and not counting:
                    self._fail(task, page_no, cursor, found, page.problem)
                else:  # later pages going bad ends the search with what it found
                    self._finish(task, page_no, None, found, page.total_hits, distinct, counting, page.problem)
                return
            retries = 0
            rows = []
            if not counting:
                for c in page.candidates:
                    if found >= task.target:
                        break
                    key = normalize_url(c.url)
                    if key in distinct:
                        continue
                    distinct.add(key)
                    found += 1
                    rows.append((found, c, key))
            else:
                distinct.update(normalize_url(c.url) for c in page.candidates)
            self.stats.inc("candidates", len(rows))
            done = (
                page.next_cursor is None
                or (not counting and found >= task.target)
                or (counting and page.total_hits is not None)
            )
            total = page.total_hits if page.total_hits is not None else (len(distinct) if counting and done else None)
            self.store.record_search_page(
                task, page=page_no, candidates=rows, next_cursor=page.next_cursor, found=found,
                total_hits=total, done=done,
            )
            page_no += 1
            cursor = page.next_cursor
            if done:
                self.stats.inc("searches_done")
                return

    def _finish(
        self, task: SearchTask, page_no: int, cursor: str | None, found: int, total: int | None,
        distinct: set[str], counting: bool, reason: str | None = None,
    ) -> None:
        if counting and total is None:
            total = len(distinct)
        self.store.record_search_page(
            task, page=page_no - 1, candidates=(), next_cursor=cursor, found=found, total_hits=total,
            done=True, reason=reason,
        )
        self.stats.inc("searches_done")

    def _fail(self, task: SearchTask, page_no: int, cursor: str | None, found: int, reason: str) -> None:
        self.store.record_search_page(
            task, page=page_no - 1, candidates=(), next_cursor=cursor, found=found, total_hits=None,
            done=True, state="failed", reason=reason,
        )
        self.stats.inc("searches_failed")
