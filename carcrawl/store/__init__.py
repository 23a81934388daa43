"""The SQLite checkpoint: the single source of truth, and the only module that speaks SQL.

Every query/source pair (a *search*), candidate URL and stored image has a row with a ``state``
(``pending``, ``in_flight``, ``done``, ``failed``, ``rejected``) and a ``reason``. A restart turns
``in_flight`` back into ``pending`` and goes on. Writes are buffered and committed in one
transaction per ``commit_rows`` rows or ``commit_interval`` seconds (never one per row); a kill
loses at most the last uncommitted batch, which is redone on resume because its rows were never
marked done. WAL mode lets ``carcrawl status`` read while a crawl writes.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import json
import sqlite3
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

import aiosqlite

from carcrawl.errors import CheckpointError, DiskFullError
from carcrawl.models import Candidate, Labels, Query, Verdict

SCHEMA_VERSION = 1
APPLICATION_ID = 0x63617263  # "carc"

SCHEMA = """
CREATE TABLE IF NOT EXISTS meta(key TEXT PRIMARY KEY, value TEXT);
CREATE TABLE IF NOT EXISTS runs(
  id INTEGER PRIMARY KEY, command TEXT, settings TEXT, started_at REAL, finished_at REAL,
  state TEXT NOT NULL DEFAULT 'running', reason TEXT);
CREATE TABLE IF NOT EXISTS queries(
  id INTEGER PRIMARY KEY, kind TEXT NOT NULL, text TEXT NOT NULL,
  make TEXT NOT NULL DEFAULT '', model TEXT NOT NULL DEFAULT '', color TEXT NOT NULL DEFAULT '',
  body_type TEXT NOT NULL DEFAULT '', category TEXT NOT NULL DEFAULT '',
  UNIQUE(kind, text));
CREATE TABLE IF NOT EXISTS searches(
  id INTEGER PRIMARY KEY, query_id INTEGER NOT NULL REFERENCES queries(id), source TEXT NOT NULL,
  target INTEGER NOT NULL, state TEXT NOT NULL DEFAULT 'pending', reason TEXT,
  cursor TEXT, pages INTEGER NOT NULL DEFAULT 0, found INTEGER NOT NULL DEFAULT 0,
  total_hits INTEGER, updated_at REAL, UNIQUE(query_id, source));
CREATE INDEX IF NOT EXISTS searches_state ON searches(state, id);
CREATE TABLE IF NOT EXISTS candidates(
  id INTEGER PRIMARY KEY, url TEXT NOT NULL, url_key TEXT NOT NULL UNIQUE, source TEXT NOT NULL,
  query_id INTEGER, page INTEGER, rank INTEGER, title TEXT, page_url TEXT, thumbnail_url TEXT,
  width INTEGER, height INTEGER, license TEXT, license_url TEXT, creator TEXT, attribution TEXT,
  make TEXT NOT NULL DEFAULT '', model TEXT NOT NULL DEFAULT '', color TEXT NOT NULL DEFAULT '',
  body_type TEXT NOT NULL DEFAULT '', category TEXT NOT NULL DEFAULT '',
  state TEXT NOT NULL DEFAULT 'pending', reason TEXT, attempts INTEGER NOT NULL DEFAULT 0,
  sha256 TEXT, final_url TEXT, updated_at REAL);
CREATE INDEX IF NOT EXISTS candidates_state ON candidates(state, id);
CREATE INDEX IF NOT EXISTS candidates_sha ON candidates(sha256);
CREATE TABLE IF NOT EXISTS images(
  sha256 TEXT PRIMARY KEY, path TEXT NOT NULL, format TEXT NOT NULL, bytes INTEGER NOT NULL,
  width INTEGER, height INTEGER, candidate_id INTEGER NOT NULL,
  state TEXT NOT NULL DEFAULT 'pending', reason TEXT, created_at REAL);
CREATE INDEX IF NOT EXISTS images_state ON images(state);
CREATE TABLE IF NOT EXISTS verdicts(
  sha256 TEXT PRIMARY KEY, keep INTEGER NOT NULL, reason TEXT NOT NULL, top5 TEXT NOT NULL,
  embedding BLOB, model TEXT NOT NULL, created_at REAL);
CREATE TABLE IF NOT EXISTS progress(
  ts REAL NOT NULL, run_id INTEGER, searched INTEGER, fetched INTEGER, failed INTEGER,
  classified INTEGER, bytes INTEGER);
"""

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


@dataclass(frozen=True, slots=True)
class StoredImage:
    sha256: str
    path: str
    format: str


class Store:
    """Async facade over one SQLite file. Writes are buffered; call :meth:`flush` or let the
    background flusher commit them. Reads see committed data only."""

    def __init__(self, db: aiosqlite.Connection, path: Path, commit_rows: int, commit_interval: float):
        self._db = db
        self.path = path
        self.commit_rows = commit_rows
        self.commit_interval = commit_interval
        self._ops: list[tuple[str, list[tuple[Any, ...]]]] = []
        self._pending_rows = 0
        self._lock = asyncio.Lock()
        self._flusher: asyncio.Task[None] | None = None
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
            await _check_and_init(db, existed, path)
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
        """Commit buffered writes every ``commit_interval`` seconds (or sooner when full)."""
        if self._flusher is None:
            self._flusher = asyncio.create_task(self._flush_loop(), name="store-flusher")

    async def _flush_loop(self) -> None:
        while True:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._wake.wait(), self.commit_interval)
            self._wake.clear()
            await self.flush()

    # -- buffered writes -----------------------------------------------------------------------

    def _write(self, sql: str, params: tuple[Any, ...]) -> None:
        if self._ops and self._ops[-1][0] is sql:
            self._ops[-1][1].append(params)
        else:
            self._ops.append((sql, [params]))
        self._pending_rows += 1
        if self._pending_rows >= self.commit_rows:
            self._wake.set()

    async def flush(self) -> int:
        """Commit everything buffered in one transaction. Returns the number of rows written."""
        async with self._lock:
            ops, self._ops = self._ops, []
            n, self._pending_rows = self._pending_rows, 0
            if not ops:
                return 0
            try:
                # one hop to aiosqlite's thread for the whole batch, not one per statement group:
                # record_fetched alternates two statements, so 500 images made ~1 000 hops, the
                # flusher fell behind the downloads and the backlog grew memory ~1 KB per image
                await self._db._execute(_apply_batch, self._db._conn, ops)
            except sqlite3.OperationalError as e:
                raise _disk_full(e, self.path) from None
        for callback in self.on_commit:
            callback()
        return n

    # -- runs and meta -------------------------------------------------------------------------

    @_full_is_clear
    async def start_run(self, command: str, settings_json: str) -> int:
        cur = await self._db.execute(
            "INSERT INTO runs(command, settings, started_at) VALUES (?,?,?)",
            (command, settings_json, time.time()),
        )
        return int(cur.lastrowid or 0)

    @_full_is_clear
    async def finish_run(self, run_id: int, state: str, reason: str | None = None) -> None:
        await self.flush()
        await self._db.execute(
            "UPDATE runs SET finished_at=?, state=?, reason=? WHERE id=?", (time.time(), state, reason, run_id)
        )

    async def get_meta(self, key: str) -> str | None:
        async with self._db.execute("SELECT value FROM meta WHERE key=?", (key,)) as cur:
            row = await cur.fetchone()
        return row[0] if row else None

    @_full_is_clear
    async def set_meta(self, key: str, value: str) -> None:
        await self.flush()
        await self._db.execute("INSERT OR REPLACE INTO meta(key, value) VALUES (?,?)", (key, value))

    @_full_is_clear
    async def recover(self) -> dict[str, int]:
        """Turn rows a killed run left ``in_flight`` back into ``pending``."""
        out = {}
        await self._db.execute("BEGIN IMMEDIATE")
        for table in ("searches", "candidates"):
            cur = await self._db.execute(f"UPDATE {table} SET state='pending' WHERE state='in_flight'")
            out[table] = cur.rowcount
        await self._db.execute("UPDATE runs SET state='killed' WHERE state='running'")
        await self._db.execute("COMMIT")
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
        async with self._db.execute(sql, (source, after_id, limit)) as cur:
            rows = await cur.fetchall()
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
            self._write(
                _SQL_INSERT_CANDIDATE,
                (c.url, key, c.source, task.query_id, page, rank, c.title, c.page_url, c.thumbnail_url,
                 c.width, c.height, c.license, c.license_url, c.creator, c.attribution, *lab, now),
            )
        self._write(
            _SQL_UPDATE_SEARCH,
            (state if done else "in_flight", reason, next_cursor, page + 1, found, total_hits, now, task.search_id),
        )

    # -- candidates ----------------------------------------------------------------------------

    def add_url_candidate(self, url: str, key: str, labels: Labels, source: str = "urls", rank: int = 0) -> None:
        self._write(
            _SQL_INSERT_CANDIDATE,
            (url, key, source, None, None, rank, None, None, None, None, None, None, None, None, None,
             *_labels(labels), time.time()),
        )

    async def next_candidates(self, after_id: int, limit: int) -> list[DownloadTask]:
        """The next pending candidate URLs (by id); marked ``in_flight`` with the next commit."""
        async with self._db.execute(
            "SELECT id, url, attempts FROM candidates WHERE state='pending' AND id>? ORDER BY id LIMIT ?",
            (after_id, limit),
        ) as cur:
            rows = await cur.fetchall()
        if rows:
            self._write(_SQL_CANDIDATES_IN_FLIGHT, (after_id, rows[-1][0]))
        return [DownloadTask(r[0], r[1], r[2]) for r in rows]

    def record_fetched(
        self, candidate_id: int, *, sha256: str, final_url: str, attempts: int, image: StoredImage, size: int
    ) -> None:
        now = time.time()
        self._write(
            _SQL_INSERT_IMAGE, (image.sha256, image.path, image.format, size, candidate_id, now)
        )
        self._write(_SQL_CANDIDATE_DONE, (sha256, final_url, attempts, now, candidate_id))

    def record_failure(self, candidate_id: int, reason: str, attempts: int, state: str = "failed") -> None:
        self._write(_SQL_CANDIDATE_FAILED, (state, reason, attempts, time.time(), candidate_id))

    # -- images and verdicts -------------------------------------------------------------------

    async def known_verdicts(self, shas: list[str]) -> set[str]:
        if not shas:
            return set()
        marks = ",".join("?" * len(shas))
        async with self._db.execute(f"SELECT sha256 FROM verdicts WHERE sha256 IN ({marks})", shas) as cur:
            return {r[0] for r in await cur.fetchall()}

    def record_verdicts(self, verdicts: Iterable[Verdict]) -> None:
        now = time.time()
        for v in verdicts:
            top5 = json.dumps([[p.label, round(p.score, 5), p.index] for p in v.top5])
            self._write(_SQL_INSERT_VERDICT, (v.sha256, int(v.keep), v.reason, top5, v.embedding, v.model, now))
            self._write(
                _SQL_IMAGE_CLASSIFIED,
                ("done" if v.keep else "rejected", v.reason, v.width, v.height, v.sha256),
            )

    def mark_images_unclassified(self, shas: Iterable[str], reason: str = "classify_disabled") -> None:
        for sha in shas:
            self._write("UPDATE images SET state='done', reason=? WHERE sha256=? AND state='pending'", (reason, sha))

    async def images_awaiting_verdict(self, after_sha: str, limit: int) -> list[StoredImage]:
        async with self._db.execute(
            "SELECT sha256, path, format FROM images WHERE state='pending' AND sha256>? ORDER BY sha256 LIMIT ?",
            (after_sha, limit),
        ) as cur:
            return [StoredImage(*r) for r in await cur.fetchall()]

    def record_progress(self, run_id: int, searched: int, fetched: int, failed: int, classified: int, nbytes: int) -> None:
        self._write(
            "INSERT INTO progress(ts, run_id, searched, fetched, failed, classified, bytes) VALUES (?,?,?,?,?,?,?)",
            (time.time(), run_id, searched, fetched, failed, classified, nbytes),
        )

    # -- reads for status / export ------------------------------------------------------------

    async def count_pending_work(self) -> tuple[int, int, int]:
        """(pending searches, pending candidates, images awaiting a verdict)."""
        out = []
        for sql in (
            "SELECT count(*) FROM searches WHERE state IN ('pending','in_flight')",
            "SELECT count(*) FROM candidates WHERE state IN ('pending','in_flight')",
            "SELECT count(*) FROM images WHERE state='pending'",
        ):
            async with self._db.execute(sql) as cur:
                row = await cur.fetchone()
                out.append(int(row[0]) if row else 0)
        return out[0], out[1], out[2]

    async def rows(self, sql: str, params: tuple[Any, ...] = ()) -> AsyncIterator[sqlite3.Row]:
        """Stream rows of a read-only query (for export/report modules that live beside this one)."""
        async with self._db.execute(sql, params) as cur:
            async for row in cur:
                yield row


def _apply_batch(con: sqlite3.Connection, ops: list[tuple[str, list[tuple[Any, ...]]]]) -> None:
    """On aiosqlite's thread: BEGIN, every buffered statement in order, COMMIT (ROLLBACK on error)."""
    con.execute("BEGIN IMMEDIATE")
    try:
        for sql, rows in ops:
            con.executemany(sql, rows)
        con.execute("COMMIT")
    except BaseException:
        with contextlib.suppress(sqlite3.Error):  # SQLite may have rolled back already
            con.execute("ROLLBACK")
        raise


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
    " make, model, color, body_type, category, updated_at) VALUES (?,?,?,?,?,?,?,?,?,?,?,?,?,?,?,?,?,?,?,?,?)"
)
_SQL_CANDIDATES_IN_FLIGHT = "UPDATE candidates SET state='in_flight' WHERE state='pending' AND id>? AND id<=?"
_SQL_INSERT_IMAGE = (
    "INSERT OR IGNORE INTO images(sha256, path, format, bytes, candidate_id, created_at) VALUES (?,?,?,?,?,?)"
)
_SQL_CANDIDATE_DONE = (
    "UPDATE candidates SET state='done', reason=NULL, sha256=?, final_url=?, attempts=?, updated_at=? WHERE id=?"
)
_SQL_CANDIDATE_FAILED = "UPDATE candidates SET state=?, reason=?, attempts=?, updated_at=? WHERE id=?"
_SQL_INSERT_VERDICT = (
    "INSERT OR REPLACE INTO verdicts(sha256, keep, reason, top5, embedding, model, created_at)"
    " VALUES (?,?,?,?,?,?,?)"
)
_SQL_IMAGE_CLASSIFIED = (
    "UPDATE images SET state=?, reason=?, width=coalesce(?, width), height=coalesce(?, height) WHERE sha256=?"
)


async def _check_and_init(db: aiosqlite.Connection, existed: bool, path: Path) -> None:
    try:
        async with db.execute("PRAGMA application_id") as cur:
            row = await cur.fetchone()
            app_id = row[0] if row else 0
        async with db.execute("PRAGMA user_version") as cur:
            row = await cur.fetchone()
            version = row[0] if row else 0
    except sqlite3.DatabaseError as e:
        raise CheckpointError(f"{path}: not an SQLite database ({e})") from None
    if existed and app_id not in (0, APPLICATION_ID):
        raise CheckpointError(f"{path}: an SQLite file, but not a carcrawl checkpoint")
    if existed and app_id == APPLICATION_ID and version != SCHEMA_VERSION:
        raise CheckpointError(
            f"{path}: checkpoint schema version {version}, this carcrawl reads {SCHEMA_VERSION}; "
            "use --fresh to start over"
        )
    await db.execute("PRAGMA journal_mode=WAL")
    await db.execute("PRAGMA synchronous=NORMAL")
    await db.execute("PRAGMA busy_timeout=10000")
    await db.execute("PRAGMA temp_store=MEMORY")
    await db.executescript(SCHEMA)
    await db.execute(f"PRAGMA application_id={APPLICATION_ID}")
    await db.execute(f"PRAGMA user_version={SCHEMA_VERSION}")


# -- synchronous read-only access (status works while a crawl runs, from another process) ------


def open_readonly(path: str | Path) -> sqlite3.Connection:
    p = Path(path)
    if not p.exists():
        raise CheckpointError(f"{p}: no checkpoint here")
    con = sqlite3.connect(f"file:{p}?mode=ro", uri=True, timeout=10)
    try:
        app_id = con.execute("PRAGMA application_id").fetchone()[0]
    except sqlite3.DatabaseError as e:
        con.close()
        raise CheckpointError(f"{p}: not an SQLite database ({e})") from None
    if app_id != APPLICATION_ID:
        con.close()
        raise CheckpointError(f"{p}: not a carcrawl checkpoint")
    con.row_factory = sqlite3.Row
    return con


# reasons that carry an argument are counted under their prefix (one line, not one per image)
_REASON_KEY = "CASE WHEN reason LIKE 'near_duplicate_of:%' THEN 'near_duplicate' ELSE reason END"


def status_counts(con: sqlite3.Connection) -> dict[str, Any]:
    """Counts by state and reason for every table, plus rates from the progress log."""

    def grouped(table: str) -> dict[str, int]:
        out: dict[str, int] = {}
        for state, reason, n in con.execute(
            f"SELECT state, coalesce({_REASON_KEY}, ''), count(*) FROM {table} GROUP BY 1, 2 ORDER BY 3 DESC"
        ):
            key = f"{state}:{reason}" if reason else state
            out[key] = n
        return out

    def by_state(table: str) -> dict[str, int]:
        return {s: n for s, n in con.execute(f"SELECT state, count(*) FROM {table} GROUP BY 1")}

    reasons: dict[str, int] = {}
    for table in ("candidates", "images"):
        for reason, n in con.execute(
            f"SELECT {_REASON_KEY}, count(*) FROM {table} WHERE reason IS NOT NULL AND state != 'done' GROUP BY 1"
        ):
            reasons[reason] = reasons.get(reason, 0) + n
    out: dict[str, Any] = {
        "queries": con.execute("SELECT count(*) FROM queries").fetchone()[0],
        "searches": {"by_state": by_state("searches"), "by_reason": grouped("searches")},
        "candidates": {"by_state": by_state("candidates"), "by_reason": grouped("candidates")},
        "images": {"by_state": by_state("images"), "by_reason": grouped("images")},
        "reasons": dict(sorted(reasons.items(), key=lambda kv: -kv[1])),
        "kept": con.execute("SELECT count(*) FROM verdicts WHERE keep=1").fetchone()[0],
        "rejected_by_classifier": con.execute("SELECT count(*) FROM verdicts WHERE keep=0").fetchone()[0],
        "stored_bytes": con.execute("SELECT coalesce(sum(bytes), 0) FROM images").fetchone()[0],
    }
    run = con.execute("SELECT id, state, started_at, finished_at FROM runs ORDER BY id DESC LIMIT 1").fetchone()
    if run:
        out["last_run"] = {"id": run[0], "state": run[1], "started_at": run[2], "finished_at": run[3]}
        rows = con.execute(
            "SELECT ts, fetched, failed, classified FROM progress WHERE run_id=? ORDER BY ts", (run[0],)
        ).fetchall()
        if len(rows) >= 2 and rows[-1][0] > rows[0][0]:
            span = rows[-1][0] - rows[0][0]
            done = (rows[-1][1] + rows[-1][2]) - (rows[0][1] + rows[0][2])
            rate = done / span
            pending = out["candidates"]["by_state"].get("pending", 0) + out["candidates"]["by_state"].get("in_flight", 0)
            out["rate_urls_per_s"] = round(rate, 2)
            out["rate_classified_per_s"] = round((rows[-1][3] - rows[0][3]) / span, 2)
            out["eta_seconds"] = round(pending / rate, 1) if rate > 0 else None
    return out


def iter_rows(con: sqlite3.Connection, sql: str, params: tuple[Any, ...] = ()) -> Iterator[sqlite3.Row]:
    """Stream rows (for export and report, which run after or beside a crawl)."""
    yield from con.execute(sql, params)


def category_report(con: sqlite3.Connection) -> list[dict[str, Any]]:
    """Per category of a URL-list fetch: requested, downloaded, kept, failed and why."""
    out: dict[str, dict[str, Any]] = {}
    for cat, state, reason, n, kept in con.execute(
        "SELECT c.category, c.state, coalesce(c.reason, ''), count(*), sum(coalesce(v.keep, 0))"
        " FROM candidates c LEFT JOIN verdicts v ON v.sha256 = c.sha256 GROUP BY 1, 2, 3"
    ):
        r = out.setdefault(cat or "", {"category": cat or "", "requested": 0, "downloaded": 0, "kept": 0, "failed": 0, "reasons": {}})
        r["requested"] += n
        if state == "done":
            r["downloaded"] += n
            r["kept"] += kept or 0
        elif state in ("failed", "rejected"):
            r["failed"] += n
            r["reasons"][reason] = r["reasons"].get(reason, 0) + n
    rows = sorted(out.values(), key=lambda r: r["category"])
    for r in rows:
        r["reasons"] = sorted(r["reasons"].items(), key=lambda kv: -kv[1])
    return rows
