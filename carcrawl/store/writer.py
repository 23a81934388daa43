"""The checkpoint writer: the :class:`Store` (the crawl's one connection). Writes are buffered and
committed in one transaction per ``commit_rows`` rows or ``commit_interval`` seconds (never one per
row); a kill loses at most the last uncommitted batch, which is redone on resume because its rows
were never marked done. WAL mode lets ``carcrawl status`` read while a crawl writes.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import json
import sqlite3
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

import aiosqlite

from carcrawl.errors import DiskFullError
from carcrawl.models import Candidate, Labels, Query, Verdict
from carcrawl.quota import class_of
from carcrawl.store.schema import check_and_init
from carcrawl.urlsafety import refuse

T = TypeVar("T")
SQLITE_FULL = 13  # sqlite3 result code: "database or disk is full"


def _disk_full(e: sqlite3.OperationalError, path: Path) -> Exception:
    """``e`` as a :class:`DiskFullError` when SQLite says the disk is full, else ``e`` itself."""
    if getattr(e, "sqlite_errorcode", None) == SQLITE_FULL or "disk is full" in str(e):
        return DiskFullError(
            f"{path}: no space left on the device for the checkpoint; everything committed so far is kept. "
            "Free some space and run the same command again to resume."
        )
    return e


def _full_is_clear(method: Callable[..., Awaitable[T]]) -> Callable[..., Awaitable[T]]:
    """Decorator for Store methods that write: a full disk becomes one clear DiskFullError."""

    @functools.wraps(method)
    async def wrapper(self: Store, *args: Any, **kwargs: Any) -> T:
        try:
            return await method(self, *args, **kwargs)
        except sqlite3.OperationalError as e:
            raise _disk_full(e, self.path) from None

    return wrapper


TERMINAL_STATES = ("done", "failed", "rejected")


@dataclass(frozen=True, slots=True)
class SearchTask:
    """A (query, source) pair to search, with where it got to last time."""

    search_id: int
    query_id: int
    text: str
    kind: str
    labels: Labels
    source: str
    target: int
    cursor: str | None
    pages: int
    found: int


@dataclass(frozen=True, slots=True)
class DownloadTask:
    """A candidate URL to fetch."""

    candidate_id: int
    url: str
    attempts: int
    label: str = ""  # the class a per-class quota counts (carcrawl.quota.class_of)
    key: str = ""  # url_key: its origin prefix is what the fair feeder groups by


@dataclass(frozen=True, slots=True)
class StoredImage:
    sha256: str
    path: str
    format: str


class Store:
    """Async facade over one SQLite file (aiosqlite, its public API only). Writes are buffered;
    call :meth:`flush` or run :meth:`flush_forever` (the pipeline owns that task). A commit that
    fails puts its batch back, so no buffered row is lost, and raises (a full disk: one clear
    :class:`DiskFullError`). Reads wait for a commit in progress, so they see committed data only.
    """

    def __init__(self, db: aiosqlite.Connection, path: Path, commit_rows: int, commit_interval: float):
        self._db = db
        self.path = path
        self.commit_rows = commit_rows
        self.commit_interval = commit_interval
        self._ops: dict[str, list[tuple[Any, ...]]] = {}  # statement -> its rows, in write order
        self._pending_rows = 0
        self._lock = asyncio.Lock()
        self._flusher: asyncio.Task[None] | None = None
        self.commits = 0  # batches committed so far
        self.new_candidates = 0  # distinct candidate rows inserted so far (what the download bar counts)
        self._wake = asyncio.Event()
        self.on_commit: list[Any] = []  # callbacks run after each commit (the feeders wait on these)

    # -- lifecycle ---------------------------------------------------------------------------

    @classmethod
    async def open(
        cls, path: str | Path, *, fresh: bool = False, commit_rows: int = 500, commit_interval: float = 1.0
    ) -> Store:
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        if fresh:
            for suffix in ("", "-wal", "-shm"):
                Path(str(path) + suffix).unlink(missing_ok=True)
        existed = path.exists() and path.stat().st_size > 0
        db = await aiosqlite.connect(path, isolation_level=None)
        try:
            await check_and_init(db, existed, path)
        except sqlite3.OperationalError as e:
            await db.close()
            raise _disk_full(e, path) from None
        except BaseException:
            await db.close()
            raise
        return cls(db, path, commit_rows, commit_interval)

    async def close(self) -> None:
        """Commit what is buffered and close. The connection is closed even when that last commit
        fails (a full disk), so its worker thread never keeps the process alive."""
        try:
            if self._flusher is not None:
                self._flusher.cancel()
                with contextlib.suppress(asyncio.CancelledError, Exception):
                    await self._flusher
                self._flusher = None
            await self.flush()
            with contextlib.suppress(sqlite3.Error):
                await self._db.execute("PRAGMA wal_checkpoint(TRUNCATE)")
        finally:
            await self._db.close()

    def start_flusher(self) -> None:
        """A background :meth:`flush_forever` owned by the store (for callers without a TaskGroup;
        the pipeline runs ``flush_forever`` in its own). ``close`` ends it."""
        if self._flusher is None:
            self._flusher = asyncio.create_task(self.flush_forever(), name="store-flusher")

    async def flush_forever(self) -> None:
        """Commit buffered writes every ``commit_interval`` seconds (or sooner when full). Returns
        only by raising: a failed commit ends it with the error, its batch kept in the buffer."""
        while True:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._wake.wait(), self.commit_interval)
            self._wake.clear()
            await self.flush()

    # -- buffered writes -----------------------------------------------------------------------

    def _write(self, sql: str, params: tuple[Any, ...]) -> None:
        rows = self._ops.get(sql)
        if rows is None:
            rows = self._ops[sql] = []
        rows.append(params)
        self._pending_rows += 1
        if self._pending_rows >= self.commit_rows:
            self._wake.set()

    @property
    def buffered(self) -> int:
        """Rows written but not committed yet."""
        return self._pending_rows

    async def flush(self) -> int:
        """Commit everything buffered in one transaction. Returns the number of rows written.

        On failure the batch goes back in front of what was buffered meanwhile (nothing is lost)
        and the error is raised. A commit under way is finished even if the caller is cancelled
        (a second Ctrl-C), so the connection is never left inside a transaction."""
        async with self._lock:
            ops, self._ops = self._ops, {}
            n, self._pending_rows = self._pending_rows, 0
            if not ops:
                return 0
            commit = asyncio.ensure_future(self._apply(ops))
            try:
                await asyncio.shield(commit)
            except BaseException as e:
                if isinstance(e, asyncio.CancelledError) and not commit.done():
                    with contextlib.suppress(BaseException):
                        await commit  # finish (or roll back) what the thread is doing
                if not commit.done() or commit.cancelled() or commit.exception() is not None:
                    self._restore(ops, n)
                if isinstance(e, sqlite3.OperationalError):
                    raise _disk_full(e, self.path) from None
                raise
            self.commits += 1
            self.new_candidates += commit.result()
        for callback in self.on_commit:
            callback()
        return n

    def _restore(self, ops: dict[str, list[tuple[Any, ...]]], n: int) -> None:
        newer, self._ops = self._ops, ops
        for sql, rows in newer.items():
            self._ops.setdefault(sql, []).extend(rows)
        self._pending_rows += n

    async def _apply(self, ops: dict[str, list[tuple[Any, ...]]]) -> int:
        """One transaction: BEGIN, one ``executemany`` per statement (in the dependency order of
        :data:`_APPLY_ORDER`, so a batch costs ~10 thread hops, not one per row or per change of
        statement), COMMIT; ROLLBACK on any error."""
        db = self._db
        added = 0  # candidates really inserted (a URL another search found already is ignored)
        await db.execute("BEGIN IMMEDIATE")
        try:
            for sql in sorted(ops, key=_apply_rank):
                cur = await db.executemany(sql, ops[sql])
                if sql is _SQL_INSERT_CANDIDATE:
                    added += max(0, cur.rowcount)
            await db.execute("COMMIT")
        except BaseException:
            with contextlib.suppress(sqlite3.Error):  # SQLite may have rolled back already
                await db.execute("ROLLBACK")
            raise
        return added

    # -- runs and meta -------------------------------------------------------------------------

    @_full_is_clear
    async def start_run(self, command: str, settings_json: str) -> int:
        async with self._lock:
            cur = await self._db.execute(
                "INSERT INTO runs(command, settings, started_at) VALUES (?,?,?)",
                (command, settings_json, time.time()),
            )
        return int(cur.lastrowid or 0)

    @_full_is_clear
    async def finish_run(self, run_id: int, state: str, reason: str | None = None) -> None:
        await self.flush()
        async with self._lock:
            await self._db.execute(
                "UPDATE runs SET finished_at=?, state=?, reason=? WHERE id=?", (time.time(), state, reason, run_id)
            )

    async def get_meta(self, key: str) -> str | None:
        async with self._lock, self._db.execute("SELECT value FROM meta WHERE key=?", (key,)) as cur:
            row = await cur.fetchone()
        return row[0] if row else None

    @_full_is_clear
    async def set_meta(self, key: str, value: str) -> None:
        await self.flush()
        async with self._lock:
            await self._db.execute("INSERT OR REPLACE INTO meta(key, value) VALUES (?,?)", (key, value))

    @_full_is_clear
    async def recover(self) -> dict[str, int]:
        """Turn rows a killed run left ``in_flight`` back into ``pending``."""
        out = await self.reset_in_flight()
        async with self._lock:
            await self._db.execute("UPDATE runs SET state='killed' WHERE state='running'")
        return out

    @_full_is_clear
    async def reset_in_flight(self) -> dict[str, int]:
        """Commit what is buffered, then turn every ``in_flight`` search and candidate back into
        ``pending``. The end of a run calls it (nothing is in flight once the stages are done), so
        ``carcrawl status`` after a Ctrl-C shows the untried work as pending, not in flight."""
        await self.flush()
        out = {}
        async with self._lock:
            await self._db.execute("BEGIN IMMEDIATE")
            try:
                for table in ("searches", "candidates"):
                    cur = await self._db.execute(f"UPDATE {table} SET state='pending' WHERE state='in_flight'")
                    out[table] = cur.rowcount
                await self._db.execute("COMMIT")
            except BaseException:
                with contextlib.suppress(sqlite3.Error):
                    await self._db.execute("ROLLBACK")
                raise
        return out

    # -- queries and searches ------------------------------------------------------------------

    async def add_queries(self, queries: Iterable[Query], sources: list[str], target_per_source: int) -> int:
        """Insert queries (idempotent) and one search row per query and source. Streams in chunks
        so 100 000 queries never sit in a list."""
        added = 0
        chunk: list[Query] = []
        for q in queries:
            chunk.append(q)
            if len(chunk) >= 2000:
                added += await self._add_query_chunk(chunk, sources, target_per_source)
                chunk = []
        if chunk:
            added += await self._add_query_chunk(chunk, sources, target_per_source)
        return added

    @_full_is_clear
    async def _add_query_chunk(self, chunk: list[Query], sources: list[str], target: int) -> int:
        await self.flush()
        async with self._lock:
            return await self._insert_queries(chunk, sources, target)

    async def _insert_queries(self, chunk: list[Query], sources: list[str], target: int) -> int:
        await self._db.execute("BEGIN IMMEDIATE")
        try:
            cur = await self._db.executemany(
                "INSERT OR IGNORE INTO queries(kind, text, make, model, color, body_type, category)"
                " VALUES (?,?,?,?,?,?,?)",
                [(q.kind, q.text, *_labels(q.labels)) for q in chunk],
            )
            added = cur.rowcount
            for source in sources:
                await self._db.executemany(
                    "INSERT OR IGNORE INTO searches(query_id, source, target)"
                    " SELECT id, ?, ? FROM queries WHERE kind=? AND text=?",
                    [(source, target, q.kind, q.text) for q in chunk],
                )
            await self._db.execute("COMMIT")
        except BaseException:
            with contextlib.suppress(sqlite3.Error):
                await self._db.execute("ROLLBACK")
            raise
        return max(added, 0)

    async def next_searches(self, source: str, after_id: int, limit: int) -> list[SearchTask]:
        """Pending searches for one source, oldest first, marked ``in_flight`` on commit."""
        sql = (
            "SELECT s.id, q.id, q.text, q.kind, q.make, q.model, q.color, q.body_type, q.category,"
            " s.source, s.target, s.cursor, s.pages, s.found FROM searches s JOIN queries q ON q.id=s.query_id"
            " WHERE s.state='pending' AND s.source=? AND s.id>? ORDER BY s.id LIMIT ?"
        )
        async with self._lock:
            rows = await self._db.execute_fetchall(sql, (source, after_id, limit))
        tasks = [
            SearchTask(r[0], r[1], r[2], r[3], Labels(*r[4:9]), r[9], r[10], r[11], r[12], r[13]) for r in rows
        ]
        for t in tasks:
            self._write(_SQL_SEARCH_IN_FLIGHT, (t.search_id,))
        return tasks

    def record_search_page(
        self,
        task: SearchTask,
        *,
        page: int,
        candidates: Iterable[tuple[int, Candidate, str]],
        next_cursor: str | None,
        found: int,
        total_hits: int | None,
        done: bool,
        state: str = "done",
        reason: str | None = None,
    ) -> None:
        """One page of a search: its candidates (rank, candidate, url_key) and where to go next."""
        now = time.time()
        lab = _labels(task.labels)
        for rank, c, key in candidates:
            url, key, refused = refuse(c.url, key)
            self._write(
                _SQL_INSERT_CANDIDATE,
                (url, key, c.source, task.query_id, page, rank, c.title, c.page_url, c.thumbnail_url,
                 c.width, c.height, c.license, c.license_url, c.creator, c.attribution, *lab, now,
                 "failed" if refused else "pending", refused),
            )
        self._write(
            _SQL_UPDATE_SEARCH,
            (state if done else "in_flight", reason, next_cursor, page + 1, found, total_hits, now, task.search_id),
        )

    # -- candidates ----------------------------------------------------------------------------

    def add_url_candidate(self, url: str, key: str, labels: Labels, source: str = "urls", rank: int = 0) -> None:
        url, key, refused = refuse(url, key)
        self._write(
            _SQL_INSERT_CANDIDATE,
            (url, key, source, None, None, rank, None, None, None, None, None, None, None, None, None,
             *_labels(labels), time.time(), "failed" if refused else "pending", refused),
        )

    async def next_candidates(self, after_id: int, limit: int, *, mark: bool = True) -> list[DownloadTask]:
        """The next pending candidate URLs (by id); with ``mark`` all of them are marked
        ``in_flight`` with the next commit (else the caller marks those it takes: :meth:`take`)."""
        async with self._lock:
            rows = list(await self._db.execute_fetchall(
                "SELECT id, url, attempts, make, model, category, url_key FROM candidates"
                " WHERE state='pending' AND id>? ORDER BY id LIMIT ?",
                (after_id, limit),
            ))
        if rows and mark:
            self._write(_SQL_CANDIDATES_IN_FLIGHT, (after_id, rows[-1][0]))
        return [_download_task(r) for r in rows]

    async def stored_per_class(self) -> tuple[int, dict[str, int]]:
        """Distinct stored images, in all and per class (of the candidate that first stored
        each): where the image cap and the per-class quotas start from."""
        counts: dict[str, int] = {}
        async with self._lock:
            rows = await self._db.execute_fetchall(
                "SELECT c.make, c.model, c.category, count(*) FROM images i JOIN candidates c ON c.id = i.candidate_id"
                " GROUP BY 1, 2, 3"
            )
        for make, model, category, n in rows:
            key = class_of(make, model, category)
            counts[key] = counts.get(key, 0) + n
        return sum(counts.values()), counts

    async def next_candidates_of(self, origin: str, after_key: str, limit: int) -> list[DownloadTask]:
        """Pending candidates of one origin (``scheme://host[:port]/``), by url_key after
        ``after_key``: a range of the url_key index, so a host's backlog is read without
        rescanning the others' (the fair feeder's per-host cursor). Not marked: see :meth:`take`."""
        upper = origin[:-1] + chr(ord(origin[-1]) + 1)  # every key that starts with ``origin`` is below
        async with self._lock:
            rows = await self._db.execute_fetchall(
                "SELECT id, url, attempts, make, model, category, url_key FROM candidates"
                " WHERE url_key >= ? AND url_key > ? AND url_key < ? AND state='pending' ORDER BY url_key LIMIT ?",
                (origin, after_key, upper, limit),
            )
        return [_download_task(r) for r in rows]

    def take(self, candidate_id: int) -> None:
        """Mark one candidate ``in_flight`` with the next commit (it was handed to the scheduler)."""
        self._write(_SQL_CANDIDATE_IN_FLIGHT, (candidate_id,))

    async def has_pending_candidates(self) -> bool:
        async with self._lock:
            rows = await self._db.execute_fetchall("SELECT 1 FROM candidates WHERE state='pending' LIMIT 1")
        return bool(list(rows))

    def record_fetched(
        self, candidate_id: int, *, sha256: str, final_url: str, attempts: int, image: StoredImage, size: int,
        unclassified: str | None = None,
    ) -> None:
        """A stored image and its candidate done. The image waits for a verdict (``pending``),
        unless ``unclassified`` gives the reason it will get none (classification is off): then
        it is written ``done`` with that reason at once, in the same statement (an image already
        known and still ``pending`` is marked so too; one with a verdict is left as it is)."""
        now = time.time()
        if unclassified is None:
            self._write(_SQL_INSERT_IMAGE, (image.sha256, image.path, image.format, size, candidate_id, now))
        else:
            self._write(
                _SQL_INSERT_IMAGE_UNCLASSIFIED,
                (image.sha256, image.path, image.format, size, candidate_id, now, unclassified),
            )
        self._write(_SQL_CANDIDATE_DONE, (sha256, final_url, attempts, now, candidate_id))

    def record_failure(self, candidate_id: int, reason: str, attempts: int, state: str = "failed") -> None:
        self._write(_SQL_CANDIDATE_FAILED, (state, reason, attempts, time.time(), candidate_id))

    # -- images and verdicts -------------------------------------------------------------------

    async def known_verdicts(self, shas: list[str]) -> set[str]:
        if not shas:
            return set()
        marks = ",".join("?" * len(shas))
        async with self._lock:
            rows = await self._db.execute_fetchall(f"SELECT sha256 FROM verdicts WHERE sha256 IN ({marks})", shas)
        return {r[0] for r in rows}

    def record_verdicts(self, verdicts: Iterable[Verdict]) -> None:
        now = time.time()
        for v in verdicts:
            top5 = json.dumps([[p.label, round(p.score, 5), p.index] for p in v.top5])
            self._write(_SQL_INSERT_VERDICT, (v.sha256, int(v.keep), v.reason, top5, v.embedding, v.model, now))
            if v.hashes is not None:  # decoded once: export will not decode this image again
                self._write(_SQL_INSERT_HASHES, (v.sha256, v.hashes, v.width, v.height))
            self._write(
                _SQL_IMAGE_CLASSIFIED,
                ("done" if v.keep else "rejected", v.reason, v.width, v.height, v.sha256),
            )

    async def images_awaiting_verdict(self, after_sha: str, limit: int) -> list[StoredImage]:
        async with self._lock:
            rows = await self._db.execute_fetchall(
                "SELECT sha256, path, format FROM images WHERE state='pending' AND sha256>? ORDER BY sha256 LIMIT ?",
                (after_sha, limit),
            )
        return [StoredImage(*r) for r in rows]

    def record_progress(self, run_id: int, searched: int, fetched: int, failed: int, classified: int, nbytes: int) -> None:
        self._write(_SQL_PROGRESS, (time.time(), run_id, searched, fetched, failed, classified, nbytes))

    # -- reads for status / export ------------------------------------------------------------

    async def count_pending_work(self) -> tuple[int, int, int]:
        """(pending searches, pending candidates, images awaiting a verdict)."""
        out = []
        for sql in (
            "SELECT count(*) FROM searches WHERE state IN ('pending','in_flight')",
            "SELECT count(*) FROM candidates WHERE state IN ('pending','in_flight')",
            "SELECT count(*) FROM images WHERE state='pending'",
        ):
            async with self._lock:
                rows = list(await self._db.execute_fetchall(sql))
            out.append(int(rows[0][0]) if rows else 0)
        return out[0], out[1], out[2]

    async def rows(self, sql: str, params: tuple[Any, ...] = ()) -> AsyncIterator[sqlite3.Row]:
        """Stream rows of a read-only query (for export/report modules that live beside this one).
        Between rows it may see a commit in progress; use it only when no crawl writes."""
        async with self._db.execute(sql, params) as cur:
            async for row in cur:
                yield row


def _download_task(r: Any) -> DownloadTask:
    """A DownloadTask from (id, url, attempts, make, model, category, url_key)."""
    return DownloadTask(r[0], r[1], r[2], class_of(r[3], r[4], r[5]), r[6])


def _labels(labels: Labels) -> tuple[str, str, str, str, str]:
    return (labels.make, labels.model, labels.color, labels.body_type, labels.category)


_SQL_SEARCH_IN_FLIGHT = "UPDATE searches SET state='in_flight' WHERE id=? AND state='pending'"
_SQL_UPDATE_SEARCH = (
    "UPDATE searches SET state=?, reason=?, cursor=?, pages=?, found=?, total_hits=coalesce(?, total_hits),"
    " updated_at=? WHERE id=?"
)
_SQL_INSERT_CANDIDATE = (
    "INSERT OR IGNORE INTO candidates(url, url_key, source, query_id, page, rank, title, page_url,"
    " thumbnail_url, width, height, license, license_url, creator, attribution,"
    " make, model, color, body_type, category, updated_at, state, reason)"
    " VALUES (?,?,?,?,?,?,?,?,?,?,?,?,?,?,?,?,?,?,?,?,?,?,?)"
)
_SQL_CANDIDATES_IN_FLIGHT = "UPDATE candidates SET state='in_flight' WHERE state='pending' AND id>? AND id<=?"
_SQL_CANDIDATE_IN_FLIGHT = "UPDATE candidates SET state='in_flight' WHERE id=? AND state='pending'"
_SQL_INSERT_IMAGE = (
    "INSERT OR IGNORE INTO images(sha256, path, format, bytes, candidate_id, created_at) VALUES (?,?,?,?,?,?)"
)
# the same, written in its final state when no verdict will come (classification off): one
# statement where an insert and then an update (``state='done' ... WHERE state='pending'``) were two
_SQL_INSERT_IMAGE_UNCLASSIFIED = (
    "INSERT INTO images(sha256, path, format, bytes, candidate_id, created_at, state, reason) VALUES (?,?,?,?,?,?,'done',?)"
    " ON CONFLICT(sha256) DO UPDATE SET state='done', reason=excluded.reason WHERE images.state='pending'"
)
_SQL_CANDIDATE_DONE = (
    "UPDATE candidates SET state='done', reason=NULL, sha256=?, final_url=?, attempts=?, updated_at=? WHERE id=?"
)
_SQL_CANDIDATE_FAILED = "UPDATE candidates SET state=?, reason=?, attempts=?, updated_at=? WHERE id=?"
# an upsert, never INSERT OR REPLACE: a REPLACE would delete the old row without its trigger (schema.py)
_SQL_INSERT_VERDICT = (
    "INSERT INTO verdicts(sha256, keep, reason, top5, embedding, model, created_at) VALUES (?,?,?,?,?,?,?)"
    " ON CONFLICT(sha256) DO UPDATE SET keep=excluded.keep, reason=excluded.reason, top5=excluded.top5,"
    " embedding=excluded.embedding, model=excluded.model, created_at=excluded.created_at"
)
_SQL_INSERT_HASHES = "INSERT OR REPLACE INTO image_hashes(sha256, hashes, width, height) VALUES (?,?,?,?)"
_SQL_IMAGE_CLASSIFIED = (
    "UPDATE images SET state=?, reason=?, width=coalesce(?, width), height=coalesce(?, height) WHERE sha256=?"
)
_SQL_PROGRESS = (
    "INSERT INTO progress(ts, run_id, searched, fetched, failed, classified, bytes) VALUES (?,?,?,?,?,?,?)"
)

#: the order a batch's statements run in. A batch keeps one row list per statement (so it costs
#: one ``executemany`` each), which is only correct when running them in this order gives what
#: running the rows in write order would: new rows before the updates that may touch them (an
#: image is inserted before it is classified), and the ``in_flight`` marks
#: (which touch only ``pending`` rows) before the outcomes. Rows of one statement keep their order.
_APPLY_ORDER = (
    _SQL_INSERT_CANDIDATE,
    _SQL_SEARCH_IN_FLIGHT,
    _SQL_CANDIDATES_IN_FLIGHT,
    _SQL_CANDIDATE_IN_FLIGHT,
    _SQL_UPDATE_SEARCH,
    _SQL_INSERT_IMAGE,
    _SQL_INSERT_IMAGE_UNCLASSIFIED,
    _SQL_CANDIDATE_DONE,
    _SQL_CANDIDATE_FAILED,
    _SQL_INSERT_VERDICT,
    _SQL_INSERT_HASHES,
    _SQL_IMAGE_CLASSIFIED,
    _SQL_PROGRESS,
)
_RANK = {sql: i for i, sql in enumerate(_APPLY_ORDER)}


def _apply_rank(sql: str) -> int:
    """Position of a statement in :data:`_APPLY_ORDER`; any other statement runs after those."""
    return _RANK.get(sql, len(_RANK))
