"""The checkpoint's schema: DDL, version, and the checks a file must pass to be opened
(an SQLite file, a carcrawl checkpoint, this schema version)."""

from __future__ import annotations

import sqlite3
from pathlib import Path

import aiosqlite

from carcrawl.errors import CheckpointError

SCHEMA_VERSION = 1
APPLICATION_ID = 0x63617263  # "carc"

_TABLES = """
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
CREATE INDEX IF NOT EXISTS images_state_reason ON images(state, reason, bytes);
CREATE TABLE IF NOT EXISTS verdicts(
  sha256 TEXT PRIMARY KEY, keep INTEGER NOT NULL, reason TEXT NOT NULL, top5 TEXT NOT NULL,
  embedding BLOB, model TEXT NOT NULL, created_at REAL);
CREATE TABLE IF NOT EXISTS image_hashes(
  sha256 TEXT PRIMARY KEY, hashes BLOB, width INTEGER, height INTEGER, error TEXT, indexed INTEGER);
CREATE INDEX IF NOT EXISTS verdicts_keep ON verdicts(keep);
CREATE TABLE IF NOT EXISTS progress(
  ts REAL NOT NULL, run_id INTEGER, searched INTEGER, fetched INTEGER, failed INTEGER,
  classified INTEGER, bytes INTEGER);
CREATE INDEX IF NOT EXISTS progress_run ON progress(run_id, ts);
"""


def reason_key(col: str) -> str:
    """A reason as status counts it: reasons that carry an argument under their prefix
    (``not_vehicle:<class>`` as ``not_vehicle``, ``near_duplicate_of:<sha>`` as ``near_duplicate``)."""
    return (f"CASE WHEN {col} LIKE 'near_duplicate_of:%' THEN 'near_duplicate'"
            f" WHEN {col} LIKE 'not_vehicle:%' THEN 'not_vehicle' ELSE coalesce({col}, '') END")


def counted_state(col: str) -> str:
    """A candidate's state as counted: ``in_flight`` under ``pending`` (the crawl moves every URL
    through it and back, two counter writes each way; status counts the few in flight by index)."""
    return f"CASE {col} WHEN 'in_flight' THEN 'pending' ELSE {col} END"


#: Counters of rows by (table, state, reason key), kept by triggers in the same transaction as
#: the rows, so ``carcrawl status`` reads a few dozen rows instead of grouping 1M candidates
#: (3 s at 850k images). A reason key is ``reason_key()``'s, a candidate state
#: ``counted_state()``'s, written out here (the SQL is literal, never built from values).
#: Verdicts are counted by ``keep``; ``kept_duplicates`` counts the near-duplicate copies whose
#: verdict kept them (triggers of their own, whose WHEN spares every other row the look-up).
#: Rows are never REPLACEd in these tables (a REPLACE deletes without firing the delete trigger):
#: verdicts are upserted.
STATE_COUNTS_SCHEMA = """
CREATE TABLE IF NOT EXISTS state_counts(
  tbl TEXT NOT NULL, state TEXT NOT NULL, reason TEXT NOT NULL, n INTEGER NOT NULL, bytes INTEGER NOT NULL,
  PRIMARY KEY(tbl, state, reason)) WITHOUT ROWID;

CREATE TRIGGER IF NOT EXISTS candidates_count_insert AFTER INSERT ON candidates BEGIN
  INSERT INTO state_counts(tbl, state, reason, n, bytes) VALUES ('candidates',
    CASE NEW.state WHEN 'in_flight' THEN 'pending' ELSE NEW.state END,
    CASE WHEN NEW.reason LIKE 'near_duplicate_of:%' THEN 'near_duplicate'
         WHEN NEW.reason LIKE 'not_vehicle:%' THEN 'not_vehicle' ELSE coalesce(NEW.reason, '') END, 1, 0)
  ON CONFLICT(tbl, state, reason) DO UPDATE SET n = n + excluded.n, bytes = bytes + excluded.bytes;
END;
CREATE TRIGGER IF NOT EXISTS candidates_count_delete AFTER DELETE ON candidates BEGIN
  INSERT INTO state_counts(tbl, state, reason, n, bytes) VALUES ('candidates',
    CASE OLD.state WHEN 'in_flight' THEN 'pending' ELSE OLD.state END,
    CASE WHEN OLD.reason LIKE 'near_duplicate_of:%' THEN 'near_duplicate'
         WHEN OLD.reason LIKE 'not_vehicle:%' THEN 'not_vehicle' ELSE coalesce(OLD.reason, '') END, -1, 0)
  ON CONFLICT(tbl, state, reason) DO UPDATE SET n = n + excluded.n, bytes = bytes + excluded.bytes;
END;
CREATE TRIGGER IF NOT EXISTS candidates_count_update AFTER UPDATE OF state, reason ON candidates
  WHEN CASE OLD.state WHEN 'in_flight' THEN 'pending' ELSE OLD.state END
       IS NOT CASE NEW.state WHEN 'in_flight' THEN 'pending' ELSE NEW.state END
    OR OLD.reason IS NOT NEW.reason BEGIN
  INSERT INTO state_counts(tbl, state, reason, n, bytes) VALUES ('candidates',
    CASE OLD.state WHEN 'in_flight' THEN 'pending' ELSE OLD.state END,
    CASE WHEN OLD.reason LIKE 'near_duplicate_of:%' THEN 'near_duplicate'
         WHEN OLD.reason LIKE 'not_vehicle:%' THEN 'not_vehicle' ELSE coalesce(OLD.reason, '') END, -1, 0)
  ON CONFLICT(tbl, state, reason) DO UPDATE SET n = n + excluded.n, bytes = bytes + excluded.bytes;
  INSERT INTO state_counts(tbl, state, reason, n, bytes) VALUES ('candidates',
    CASE NEW.state WHEN 'in_flight' THEN 'pending' ELSE NEW.state END,
    CASE WHEN NEW.reason LIKE 'near_duplicate_of:%' THEN 'near_duplicate'
         WHEN NEW.reason LIKE 'not_vehicle:%' THEN 'not_vehicle' ELSE coalesce(NEW.reason, '') END, 1, 0)
  ON CONFLICT(tbl, state, reason) DO UPDATE SET n = n + excluded.n, bytes = bytes + excluded.bytes;
END;

CREATE TRIGGER IF NOT EXISTS images_count_insert AFTER INSERT ON images BEGIN
  INSERT INTO state_counts(tbl, state, reason, n, bytes) VALUES ('images', NEW.state,
    CASE WHEN NEW.reason LIKE 'near_duplicate_of:%' THEN 'near_duplicate'
         WHEN NEW.reason LIKE 'not_vehicle:%' THEN 'not_vehicle' ELSE coalesce(NEW.reason, '') END, 1, NEW.bytes)
  ON CONFLICT(tbl, state, reason) DO UPDATE SET n = n + excluded.n, bytes = bytes + excluded.bytes;
END;
CREATE TRIGGER IF NOT EXISTS images_count_delete AFTER DELETE ON images BEGIN
  INSERT INTO state_counts(tbl, state, reason, n, bytes) VALUES ('images', OLD.state,
    CASE WHEN OLD.reason LIKE 'near_duplicate_of:%' THEN 'near_duplicate'
         WHEN OLD.reason LIKE 'not_vehicle:%' THEN 'not_vehicle' ELSE coalesce(OLD.reason, '') END, -1, -OLD.bytes)
  ON CONFLICT(tbl, state, reason) DO UPDATE SET n = n + excluded.n, bytes = bytes + excluded.bytes;
END;
CREATE TRIGGER IF NOT EXISTS images_count_update AFTER UPDATE OF state, reason, bytes ON images
  WHEN OLD.state IS NOT NEW.state OR OLD.reason IS NOT NEW.reason OR OLD.bytes IS NOT NEW.bytes BEGIN
  INSERT INTO state_counts(tbl, state, reason, n, bytes) VALUES ('images', OLD.state,
    CASE WHEN OLD.reason LIKE 'near_duplicate_of:%' THEN 'near_duplicate'
         WHEN OLD.reason LIKE 'not_vehicle:%' THEN 'not_vehicle' ELSE coalesce(OLD.reason, '') END, -1, -OLD.bytes)
  ON CONFLICT(tbl, state, reason) DO UPDATE SET n = n + excluded.n, bytes = bytes + excluded.bytes;
  INSERT INTO state_counts(tbl, state, reason, n, bytes) VALUES ('images', NEW.state,
    CASE WHEN NEW.reason LIKE 'near_duplicate_of:%' THEN 'near_duplicate'
         WHEN NEW.reason LIKE 'not_vehicle:%' THEN 'not_vehicle' ELSE coalesce(NEW.reason, '') END, 1, NEW.bytes)
  ON CONFLICT(tbl, state, reason) DO UPDATE SET n = n + excluded.n, bytes = bytes + excluded.bytes;
END;
CREATE TRIGGER IF NOT EXISTS images_kept_duplicates_insert AFTER INSERT ON images
  WHEN NEW.state = 'rejected' AND NEW.reason LIKE 'near_duplicate_of:%'
   AND EXISTS (SELECT 1 FROM verdicts WHERE sha256 = NEW.sha256 AND keep = 1) BEGIN
  UPDATE state_counts SET n = n + 1 WHERE tbl = 'kept_duplicates';
END;
CREATE TRIGGER IF NOT EXISTS images_kept_duplicates_delete AFTER DELETE ON images
  WHEN OLD.state = 'rejected' AND OLD.reason LIKE 'near_duplicate_of:%'
   AND EXISTS (SELECT 1 FROM verdicts WHERE sha256 = OLD.sha256 AND keep = 1) BEGIN
  UPDATE state_counts SET n = n - 1 WHERE tbl = 'kept_duplicates';
END;
CREATE TRIGGER IF NOT EXISTS images_kept_duplicates_update AFTER UPDATE OF state, reason ON images
  WHEN OLD.reason LIKE 'near_duplicate_of:%' OR NEW.reason LIKE 'near_duplicate_of:%' BEGIN
  UPDATE state_counts SET n = n - 1 WHERE tbl = 'kept_duplicates'
    AND OLD.state = 'rejected' AND OLD.reason LIKE 'near_duplicate_of:%'
    AND EXISTS (SELECT 1 FROM verdicts WHERE sha256 = OLD.sha256 AND keep = 1);
  UPDATE state_counts SET n = n + 1 WHERE tbl = 'kept_duplicates'
    AND NEW.state = 'rejected' AND NEW.reason LIKE 'near_duplicate_of:%'
    AND EXISTS (SELECT 1 FROM verdicts WHERE sha256 = NEW.sha256 AND keep = 1);
END;

CREATE TRIGGER IF NOT EXISTS verdicts_count_insert AFTER INSERT ON verdicts BEGIN
  INSERT INTO state_counts(tbl, state, reason, n, bytes) VALUES ('verdicts', CAST(NEW.keep AS TEXT), '', 1, 0)
  ON CONFLICT(tbl, state, reason) DO UPDATE SET n = n + excluded.n;
END;
CREATE TRIGGER IF NOT EXISTS verdicts_count_delete AFTER DELETE ON verdicts BEGIN
  INSERT INTO state_counts(tbl, state, reason, n, bytes) VALUES ('verdicts', CAST(OLD.keep AS TEXT), '', -1, 0)
  ON CONFLICT(tbl, state, reason) DO UPDATE SET n = n + excluded.n;
END;
CREATE TRIGGER IF NOT EXISTS verdicts_count_update AFTER UPDATE OF keep ON verdicts
  WHEN OLD.keep IS NOT NEW.keep BEGIN
  INSERT INTO state_counts(tbl, state, reason, n, bytes) VALUES ('verdicts', CAST(OLD.keep AS TEXT), '', -1, 0)
  ON CONFLICT(tbl, state, reason) DO UPDATE SET n = n + excluded.n;
  INSERT INTO state_counts(tbl, state, reason, n, bytes) VALUES ('verdicts', CAST(NEW.keep AS TEXT), '', 1, 0)
  ON CONFLICT(tbl, state, reason) DO UPDATE SET n = n + excluded.n;
END;
CREATE TRIGGER IF NOT EXISTS verdicts_kept_duplicates_insert AFTER INSERT ON verdicts
  WHEN NEW.keep = 1 AND EXISTS (SELECT 1 FROM images WHERE sha256 = NEW.sha256 AND state = 'rejected'
                                AND reason LIKE 'near_duplicate_of:%') BEGIN
  UPDATE state_counts SET n = n + 1 WHERE tbl = 'kept_duplicates';
END;
CREATE TRIGGER IF NOT EXISTS verdicts_kept_duplicates_delete AFTER DELETE ON verdicts
  WHEN OLD.keep = 1 AND EXISTS (SELECT 1 FROM images WHERE sha256 = OLD.sha256 AND state = 'rejected'
                                AND reason LIKE 'near_duplicate_of:%') BEGIN
  UPDATE state_counts SET n = n - 1 WHERE tbl = 'kept_duplicates';
END;
CREATE TRIGGER IF NOT EXISTS verdicts_kept_duplicates_update AFTER UPDATE OF keep ON verdicts
  WHEN OLD.keep IS NOT NEW.keep AND EXISTS (SELECT 1 FROM images WHERE sha256 = NEW.sha256 AND state = 'rejected'
                                            AND reason LIKE 'near_duplicate_of:%') BEGIN
  UPDATE state_counts SET n = n + ((NEW.keep = 1) - (OLD.keep = 1)) WHERE tbl = 'kept_duplicates';
END;
"""

STATE_COUNTS_META = "state_counts"  # meta key, set once the counters hold every row

#: the counters from the rows themselves: run once, in one transaction, on a checkpoint from before
#: the counters (on a new one it counts nothing); afterwards the triggers keep them
BACKFILL_STATE_COUNTS = """
BEGIN IMMEDIATE;
DELETE FROM state_counts;
INSERT INTO state_counts(tbl, state, reason, n, bytes)
  SELECT 'candidates', CASE state WHEN 'in_flight' THEN 'pending' ELSE state END,
    CASE WHEN reason LIKE 'near_duplicate_of:%' THEN 'near_duplicate'
         WHEN reason LIKE 'not_vehicle:%' THEN 'not_vehicle' ELSE coalesce(reason, '') END, count(*), 0
  FROM candidates GROUP BY 2, 3;
INSERT INTO state_counts(tbl, state, reason, n, bytes)
  SELECT 'images', state,
    CASE WHEN reason LIKE 'near_duplicate_of:%' THEN 'near_duplicate'
         WHEN reason LIKE 'not_vehicle:%' THEN 'not_vehicle' ELSE coalesce(reason, '') END,
    count(*), coalesce(sum(bytes), 0)
  FROM images GROUP BY 2, 3;
INSERT INTO state_counts(tbl, state, reason, n, bytes)
  SELECT 'verdicts', CAST(keep AS TEXT), '', count(*), 0 FROM verdicts GROUP BY 2;
INSERT INTO state_counts(tbl, state, reason, n, bytes)
  SELECT 'kept_duplicates', '', '', count(*), 0 FROM images i
  WHERE i.state = 'rejected' AND i.reason LIKE 'near_duplicate_of:%'
    AND EXISTS (SELECT 1 FROM verdicts WHERE sha256 = i.sha256 AND keep = 1);
INSERT OR REPLACE INTO meta(key, value) VALUES ('state_counts', '1');
COMMIT;
"""

SCHEMA = _TABLES + STATE_COUNTS_SCHEMA


async def check_and_init(db: aiosqlite.Connection, existed: bool, path: Path) -> None:
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
    async with db.execute("SELECT 1 FROM meta WHERE key = ?", (STATE_COUNTS_META,)) as cur:
        counted = await cur.fetchone()
    if not counted:
        await db.executescript(BACKFILL_STATE_COUNTS)
    await db.execute(f"PRAGMA application_id={APPLICATION_ID}")
    await db.execute(f"PRAGMA user_version={SCHEMA_VERSION}")
