"""The download stage: pending candidates from the checkpoint → polite fetches → files + rows.

A feeder reads pending candidates from SQLite in pages (never all of them), and a scheduler
keeps one small queue per host and starts a transfer only when its host has a free lease (its
concurrency cap and minimum interval allow it) and the global concurrency allows it. So a slow or
strict host never blocks a worker that could serve another host, and memory is bounded by
``buffer`` items however many URLs the crawl has. Verified bytes go on to the classify stage
through a bounded queue (back-pressure), files are written content-addressed, and every outcome
is a row with a reason.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import logging
import math
from collections import deque
from collections.abc import Awaitable, Callable
from dataclasses import dataclass

from carcrawl.config import DownloadSettings
from carcrawl.errors import DiskFullError
from carcrawl.filestore import ImageFiles
from carcrawl.models import Failure, Fetched
from carcrawl.net import HttpClient, backoff_delay, host_key
from carcrawl.quota import Quota
from carcrawl.stats import Stats
from carcrawl.store import DownloadTask, Store

log = logging.getLogger(__name__)

#: duplicates remembered in memory (~150 B each) so the classifier skips them; older ones are
#: caught by the verdict lookup in the checkpoint. Bounded low so memory stays flat: 100 000 made
#: peak RSS of a 100k-URL crawl ~15 MB higher than a 10k one.
RECENT_SHAS = 10_000

#: reasons that say the content is unwanted (state ``rejected``), not that the transfer failed
_REJECT_PREFIXES = ("not_image", "robots_disallowed", "noai", "too_", "unsupported", "empty", "truncated_image",
                    "quota_full")
_JPEG_SOF = frozenset({0xC0, 0xC1, 0xC2, 0xC3, 0xC5, 0xC6, 0xC7, 0xC9, 0xCA, 0xCB, 0xCD, 0xCE, 0xCF})


def image_size(body: bytes, fmt: str) -> tuple[int, int] | None:
    """(width, height) from the image's header, without decoding; ``None`` when unknown."""
    try:
        if fmt == "png" and body[12:16] == b"IHDR":
            return int.from_bytes(body[16:20], "big"), int.from_bytes(body[20:24], "big")
        if fmt == "gif":
            return int.from_bytes(body[6:8], "little"), int.from_bytes(body[8:10], "little")
        if fmt == "bmp":
            return int.from_bytes(body[18:22], "little", signed=True), abs(int.from_bytes(body[22:26], "little", signed=True))
        if fmt == "webp":
            kind = body[12:16]
            if kind == b"VP8X":
                return 1 + int.from_bytes(body[24:27], "little"), 1 + int.from_bytes(body[27:30], "little")
            if kind == b"VP8L":
                bits = int.from_bytes(body[21:25], "little")
                return 1 + (bits & 0x3FFF), 1 + ((bits >> 14) & 0x3FFF)
            if kind == b"VP8 ":
                return int.from_bytes(body[26:28], "little") & 0x3FFF, int.from_bytes(body[28:30], "little") & 0x3FFF
        if fmt == "jpeg":
            i, n = 2, len(body)
            while i + 9 <= n:
                if body[i] != 0xFF:
                    return None
                marker = body[i + 1]
                if marker == 0xFF:  # fill byte
                    i += 1
                    continue
                if marker in _JPEG_SOF:
                    return int.from_bytes(body[i + 7 : i + 9], "big"), int.from_bytes(body[i + 5 : i + 7], "big")
                if marker == 0xDA:  # scan data before any frame header
                    return None
                if 0xD0 <= marker <= 0xD8 or marker == 0x01:
                    i += 2
                    continue
                i += 2 + int.from_bytes(body[i + 2 : i + 4], "big")
    except (IndexError, ValueError):
        return None
    return None


def content_problem(body: bytes, fmt: str, max_pixels: int) -> str | None:
    """Cheap checks on stored-to-be bytes, before any decoder sees them: a header claiming more
    than ``max_pixels`` (a decompression bomb: a 50 000 x 50 000 PNG is a few hundred KB) or a
    JPEG/PNG cut short (no end marker after the last scan / no IEND chunk)."""
    size = image_size(body, fmt)
    if size is not None and size[0] * size[1] > max_pixels:
        return "too_many_pixels"
    if fmt == "jpeg":
        # the end marker is near the end, so search back for it and then forward for a scan
        # start after it: a tail search, not two scans of the whole body (rfind(FFDA) walks back
        # to the first scan, near the start of a baseline JPEG: ~0.3 ms per 450 KB image)
        end = body.rfind(b"\xff\xd9")
        if body.find(b"\xff\xda", end + 1 if end >= 0 else 0) >= 0:
            return "truncated_image"
    if fmt == "png" and b"IEND" not in body[-4096:]:
        return "truncated_image"
    return None


@dataclass(frozen=True, slots=True)
class ClassifyItem:
    """Verified bytes on their way to the classifier."""

    sha256: str
    body: bytes


#: what a transfer hands back to the scheduler: ``None`` (an outcome was recorded, or the URL is
#: left for the next run), a retry (the next attempt, and the seconds to wait before it), or the
#: rest of its work, which needs no connection (storing the bytes it received)
Retry = tuple[DownloadTask, float]
Rest = Callable[[], Awaitable[None]]


class HostScheduler:
    """Per-host queues; starts ``run(task)`` when the host's lease and the global cap allow.

    It holds at most ``buffer`` tasks (waiting, running or waiting to be retried), so memory is
    bounded whatever the crawl's size. Transfers are tasks of the stage's TaskGroup (``start``):
    they have an owner, and cancelling the stage cancels them. ``drain`` drops every task not yet
    running, refuses new ones, and lets the running ones finish: ``wait_idle`` then always ends."""

    def __init__(self, client: HttpClient, concurrency: int, buffer: int,
                 run: Callable[[DownloadTask], Awaitable[Retry | Rest | None]],
                 give_up: Callable[[DownloadTask, str], None] | None = None):
        self.limiter = client.hosts
        self.concurrency = concurrency
        self.buffer = buffer
        self._run = run
        self._give_up = give_up
        self._room = asyncio.Semaphore(buffer)  # tasks held (waiting + running + retrying), all hosts
        # transfers whose bytes are in, being stored without a transfer slot: at most as many
        # as run, so the bodies in memory stay bounded (a full disk or classifier queue holds
        # the next finished transfer in its slot, and so the network)
        self._storing = asyncio.Semaphore(concurrency)
        self._waiting: dict[str, deque[DownloadTask]] = {}
        self._timers: dict[str, asyncio.TimerHandle] = {}
        self._retry_timers: set[asyncio.TimerHandle] = set()
        self._blocked_on_global: deque[str] = deque()
        self._held_by: dict[str, int] = {}  # tasks held per host (the fair feeder's share)
        self.released = asyncio.Event()  # set whenever a held task ends (the feeder may top up)
        self.active = 0
        self.held = 0
        self._idle = asyncio.Event()
        self._idle.set()
        self._group: asyncio.TaskGroup | None = None
        self.draining = False

    def start(self, group: asyncio.TaskGroup) -> None:
        """Transfers become tasks of ``group`` (the download stage's)."""
        self._group = group

    async def submit(self, task: DownloadTask) -> bool:
        """Hold ``task`` until its host can take it; ``False`` (not held) once draining."""
        if self.draining:
            return False
        await self._room.acquire()
        if self.draining:  # the drain began while this waited for room
            self._room.release()
            return False
        self.held += 1
        host = host_key(task.url)
        self._held_by[host] = self._held_by.get(host, 0) + 1
        self._idle.clear()
        self._enqueue(task)
        return True

    def held_by(self, host: str) -> int:
        """Tasks of ``host`` held now (waiting, running or waiting for a retry)."""
        return self._held_by.get(host, 0)

    def _enqueue(self, task: DownloadTask) -> None:
        host = host_key(task.url)
        q = self._waiting.get(host)
        if q is None:
            q = self._waiting[host] = deque()
        q.append(task)
        self._pump(host)

    def _pump(self, host: str) -> None:
        if self.draining:
            return
        q = self._waiting.get(host)
        given_up = self.limiter.given_up(host) if q else None
        if given_up is not None and q:
            while q:  # the host is given up for the run: its queued URLs are recorded with why
                task = q.popleft()
                if self._give_up is not None:
                    self._give_up(task, given_up)
                self._release_one(host)
        while q:
            if self.active >= self.concurrency:
                if host not in self._blocked_on_global:
                    self._blocked_on_global.append(host)
                return
            wait = self.limiter.try_lease(host)
            if wait > 0:
                # at its cap, a finishing transfer of this host pumps it again; the timer is a
                # fallback for leases held by redirect hops of other hosts' transfers, and the
                # wake-up when a paused host (Retry-After) may go on
                if host not in self._timers:
                    delay = 1.0 if wait == math.inf else wait
                    self._timers[host] = asyncio.get_running_loop().call_later(delay, self._timer_fired, host)
                return
            task = q.popleft()
            self.active += 1
            assert self._group is not None, "HostScheduler.start(group) was not called"
            run = self._go(host, task)
            try:
                self._group.create_task(run)
            except RuntimeError:  # the stage's TaskGroup is ending (a failure, a second Ctrl-C)
                run.close()
                self.active -= 1
                self.limiter.release(host)
                q.appendleft(task)
                self.draining = True
                return
        if q is not None and not q:
            del self._waiting[host]

    def _timer_fired(self, host: str) -> None:
        self._timers.pop(host, None)
        self._pump(host)

    async def _go(self, host: str, task: DownloadTask) -> None:
        retry: Retry | None = None
        transferring = True
        try:
            outcome = await self._run(task)
            if callable(outcome):
                # the bytes are in: the transfer's slot goes to the next URL while they are
                # stored (the file batch's linger and hashing no longer hold a connection idle)
                async with self._storing:
                    transferring = False
                    self._end_transfer(host)
                    await outcome()
            else:
                retry = outcome
        finally:
            if transferring:
                self.active -= 1
            if retry is not None and not self.draining:
                self._hold_for_retry(*retry)  # keeps its room: a retry is still work held
            else:
                self._release_one(host)
            if transferring:
                self._pump_after(host)

    def _end_transfer(self, host: str) -> None:
        self.active -= 1
        self._pump_after(host)

    def _pump_after(self, host: str) -> None:
        """The fetch released its lease: let this host and hosts waiting on the global cap go on."""
        self._pump(host)
        while self._blocked_on_global and self.active < self.concurrency:
            self._pump(self._blocked_on_global.popleft())

    def _hold_for_retry(self, task: DownloadTask, delay: float) -> None:
        loop = asyncio.get_running_loop()
        handle: asyncio.TimerHandle

        def fire() -> None:
            self._retry_timers.discard(handle)
            if not self.draining:
                self._enqueue(task)

        handle = loop.call_later(delay, fire)
        self._retry_timers.add(handle)

    def _release_one(self, host: str | None) -> None:
        self.held -= 1
        if host is not None:
            n = self._held_by.get(host, 0) - 1
            if n > 0:
                self._held_by[host] = n
            else:
                self._held_by.pop(host, None)
        self._room.release()
        self.released.set()
        if self.held == 0:
            self._idle.set()

    def drain(self) -> None:
        """Start nothing new; transfers running finish. Tasks still waiting (or waiting for a retry)
        are dropped: their rows stay ``in_flight`` until the run's end turns them back into
        ``pending`` (and a resume would too)."""
        self.draining = True
        dropped = sum(len(q) for q in self._waiting.values()) + len(self._retry_timers)
        self._waiting.clear()
        self._blocked_on_global.clear()
        for h in (*self._timers.values(), *self._retry_timers):
            h.cancel()
        self._timers.clear()
        self._retry_timers.clear()
        for _ in range(dropped):
            self._release_one(None)
        self._held_by.clear()
        if self.held == 0:
            self._idle.set()

    async def wait_idle(self) -> None:
        await self._idle.wait()

    def close(self) -> None:
        """Cancel the timers (the stage is ending; its TaskGroup cancels the transfers)."""
        for h in (*self._timers.values(), *self._retry_timers):
            h.cancel()
        self._timers.clear()
        self._retry_timers.clear()


@dataclass(slots=True)
class _Deferred:
    """An origin whose host reached its share of the buffer: its rows are read by url_key."""

    host: str
    ready_at: int  # the checkpoint commit after which its cursor may start (the id scan's marks are in)
    cursor: str = ""
    done: bool = False


def _just_below(key: str) -> str:
    """A string below ``key`` and above every string below it that a url_key can be."""
    if not key:
        return ""
    below = ord(key[-1]) - 1
    if 0xD800 <= below <= 0xDFFF:  # no surrogates in text SQLite can store
        below = 0xD7FF
    return key[:-1] + chr(below) + "\U0010ffff"


def _origin(key: str) -> str | None:
    """``scheme://host[:port]/`` of a url_key, or ``None`` when it has no such shape."""
    start = key.find("://")
    if start < 0:
        return None
    slash = key.find("/", start + 3)
    return key[: slash + 1] if slash > start + 3 else None


class DownloadStage:
    """Feeds pending candidates through the scheduler until the search stage is done and no
    pending candidate remains, or until ``stop`` (a drain) or a failure."""

    def __init__(
        self,
        store: Store,
        client: HttpClient,
        files: ImageFiles,
        settings: DownloadSettings,
        stats: Stats,
        classify_queue: asyncio.Queue[ClassifyItem | None] | None,
        page_size: int = 512,
        max_pixels: int = 50_000_000,
        quota: Quota | None = None,
    ):
        self.quota = quota
        self.store = store
        self.client = client
        self.files = files
        self.settings = settings
        self.stats = stats
        self.classify_queue = classify_queue
        self.page_size = page_size
        self.max_pixels = max_pixels
        buffer = max(2 * settings.concurrency, page_size)
        self.scheduler = HostScheduler(client, settings.concurrency, buffer, self._fetch_one, self._host_given_up)
        self._committed = asyncio.Event()
        store.on_commit.append(self._committed.set)
        self.stopping = False
        self.aborted = False
        self._recent_shas: dict[str, None] = {}

    async def run(self, upstream_done: asyncio.Event) -> None:
        """Feed and fetch. A transfer that raises (a full disk) ends the stage's TaskGroup, which
        cancels the other transfers; the error goes up to the pipeline."""
        try:
            async with asyncio.TaskGroup() as group:
                self.scheduler.start(group)
                await self._feed(upstream_done)
                await self.scheduler.wait_idle()
        except BaseException:
            self.aborted = True  # what cancelled transfers would record is not the URL's outcome
            raise
        finally:
            self.scheduler.close()

    async def _feed(self, upstream_done: asyncio.Event) -> None:
        """Read pending candidates by id and hand them to the scheduler, fairly across hosts.

        A host may hold at most ``share`` of the buffer. When the id scan meets a host at its
        share, that host's origin is *deferred*: the id scan skips its rows from then on, and
        they are read by a cursor over the url_key index of that origin alone, topped up whenever
        the host falls to half its share. So a list grouped by host (10 000 URLs of one host, then
        the next) keeps every host busy, and no row is read twice: each scan has its own cursor,
        and a deferred origin's cursor starts only after the id scan's marks for it are committed."""
        sched = self.scheduler
        share = max(4 * self.settings.per_host_concurrency, sched.buffer // 8)
        deferred: dict[str, _Deferred] = {}
        after_id = 0
        scanned_all = False
        while not self.stopping:
            sched.released.clear()
            self._committed.clear()
            progressed = False
            for origin, d in list(deferred.items()):
                room = share - sched.held_by(d.host)
                if d.done or room < share // 2 or self.store.commits < d.ready_at:
                    continue
                tasks = await self.store.next_candidates_of(origin, d.cursor, room)
                if len(tasks) < room:
                    d.done = True  # read to the end of its range (new rows reset the cursor)
                if tasks:
                    d.cursor = tasks[-1].key
                    progressed = True
                    for t in tasks:
                        if not await self._take(t):
                            return
            if not scanned_all:
                tasks = await self.store.next_candidates(after_id, self.page_size, mark=False)
                if tasks:
                    progressed = True
                    after_id = tasks[-1].candidate_id
                    for t in tasks:
                        origin = _origin(t.key)
                        d = deferred.get(origin) if origin else None
                        if d is not None:  # its origin's cursor reads it
                            if t.key <= d.cursor:  # behind the cursor (a late insert): step back,
                                d.cursor = _just_below(t.key)  # once the marks behind it are in
                                d.ready_at = self.store.commits + 2
                            d.done = False
                            continue
                        host = host_key(t.url)
                        if origin and sched.held_by(host) >= share:
                            deferred[origin] = _Deferred(host, ready_at=self.store.commits + 2)
                            continue
                        if not await self._take(t):
                            return
                else:
                    scanned_all = upstream_done.is_set()
            if progressed:
                continue
            if scanned_all and sched.held == 0 and all(d.done for d in deferred.values()):
                await self.store.flush()
                if not await self.store.has_pending_candidates():
                    return
                # rows the scans passed (inserted behind a cursor): go round once more
                after_id, scanned_all = 0, False
                deferred.clear()
                continue
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._wake(), 0.5)

    async def _wake(self) -> None:
        """A commit (new candidates, or marks the deferred cursors wait for) or room freed."""
        waits = [asyncio.ensure_future(self._committed.wait()), asyncio.ensure_future(self.scheduler.released.wait())]
        try:
            await asyncio.wait(waits, return_when=asyncio.FIRST_COMPLETED)
        finally:
            for w in waits:
                w.cancel()

    async def _take(self, task: DownloadTask) -> bool:
        if not await self.scheduler.submit(task):
            return False
        self.store.take(task.candidate_id)
        return True

    def stop(self) -> None:
        """Stop feeding new work; transfers in flight finish; queued and retry-waiting URLs are
        left for the next run."""
        self.stopping = True
        self.scheduler.drain()

    async def _fetch_one(self, task: DownloadTask) -> Retry | Rest | None:
        attempts = task.attempts + 1
        q = self.quota
        if q is not None and (q.full or q.class_full(task.label)):
            # checked as the transfer would start, so a full class costs no request: give the
            # host's lease back unused
            self.scheduler.limiter.release(host_key(task.url))
            if not q.full:
                self._record_failure(task.candidate_id, "quota_full", task.attempts)
            return None  # at the cap the run is draining: the URL is left for a later run
        try:
            result = await self.client.fetch_image(task.candidate_id, task.url, leased=True)
            if isinstance(result, Failure):
                return self._failed(task, result, attempts)
            problem = content_problem(result.body, result.format, self.max_pixels)
            if problem is not None:
                return self._failed(task, Failure(task.candidate_id, task.url, problem), attempts)
        except (asyncio.CancelledError, DiskFullError):
            raise  # a full disk ends the stage (and the run) with its one clear message
        except Exception as e:  # noqa: BLE001 - a bug in one URL's path must not end the crawl
            return self._internal_error(task, e, attempts)
        fetched = result

        async def store() -> None:
            try:
                await self._stored(fetched, attempts, task.label)
            except (asyncio.CancelledError, DiskFullError):
                raise
            except Exception as e:  # noqa: BLE001 - as above
                self._internal_error(task, e, attempts)

        return store

    def _internal_error(self, task: DownloadTask, e: Exception, attempts: int) -> Retry | None:
        log.exception("internal error on %s", task.url)
        return self._failed(task, Failure(task.candidate_id, task.url, f"internal_error:{type(e).__name__}"), attempts)

    def _failed(self, task: DownloadTask, failure: Failure, attempts: int) -> Retry | None:
        if self.aborted:
            return None
        s = self.settings
        if not failure.terminal and self.stopping:
            # a timeout or a 5xx while draining is not the URL's outcome: it stays for the next
            # run (``in_flight`` now, ``pending`` after the run's last commit), as if never tried
            return None
        if not failure.terminal and attempts <= s.max_retries:
            # the host is paused by the client on 429/503 (Retry-After), so the retry's own delay
            # is only the backoff; it waits in the scheduler, holding its room
            delay = backoff_delay(attempts - 1, s.backoff_base, s.backoff_max, failure.retry_after)
            self.stats.inc("retries")
            return dataclasses.replace(task, attempts=attempts), delay
        self._record_failure(task.candidate_id, failure.reason, attempts)
        return None

    def _host_given_up(self, task: DownloadTask, reason: str) -> None:
        if not self.aborted:
            self._record_failure(task.candidate_id, reason, task.attempts)

    def _record_failure(self, candidate_id: int, reason: str, attempts: int) -> None:
        self.stats.inc("failed")
        self.stats.reason(reason)
        state = "rejected" if reason.startswith(_REJECT_PREFIXES) else "failed"
        self.store.record_failure(candidate_id, reason, attempts, state)

    async def _stored(self, fetched: Fetched, attempts: int, label: str = "") -> None:
        image = await self.files.write(None, fetched.format, fetched.body)
        sha = image.sha256
        duplicate = sha in self._recent_shas
        self.store.record_fetched(
            fetched.candidate_id,
            sha256=sha,
            final_url=fetched.final_url,
            attempts=attempts,
            image=image,
            size=len(fetched.body),
            # no classifier: the image row is written in its final state (one statement, not two)
            unclassified="classify_disabled" if self.classify_queue is None and not duplicate else None,
        )
        self.stats.inc("fetched")
        self.stats.inc("bytes", len(fetched.body))
        if duplicate:
            self.stats.inc("duplicates")
            return
        self._recent_shas[sha] = None
        if len(self._recent_shas) > RECENT_SHAS:
            self._recent_shas.pop(next(iter(self._recent_shas)))
        if self.quota is not None:
            self.quota.stored(label)
        if self.classify_queue is not None:
            await self.classify_queue.put(ClassifyItem(sha, fetched.body))

