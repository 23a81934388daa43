"""The checkpoint's schema: DDL, version, and the checks a file must pass to be opened
(an SQLite file, a carcrawl checkpoint, this schema version)."""

from __future__ import annotations

import sqlite3
from pathlib import Path

import aiosqlite

from carcrawl.errors import CheckpointError

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
    await db.execute(f"PRAGMA application_id={APPLICATION_ID}")
    await db.execute(f"PRAGMA user_version={SCHEMA_VERSION}")
