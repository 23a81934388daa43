"""The checkpoint side of a sharded crawl (``--workers`` / ``--ray``): split, merge, count.

A sharded crawl keeps the main checkpoint as the one dataset. Its pending candidates are copied,
with their ids, into one checkpoint per shard (``OUT/shards/NNN/checkpoint.sqlite``) chosen by a
hash of the host, and marked ``sharded`` (reason ``shard:NNN``) in the main one, so a
single-process run never fetches them twice. Each shard is then crawled by an ordinary pipeline;
when it has no work left its outcome is merged back in one transaction (``ATTACH``, ``UPDATE ...
FROM`` by candidate id, ``INSERT OR IGNORE`` of its per-image tables). Until then
:func:`combined_status` counts the main checkpoint and the shards as one.
"""

from __future__ import annotations

import re
import sqlite3
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

from carcrawl.errors import CheckpointError
from carcrawl.store import APPLICATION_ID, SCHEMA, SCHEMA_VERSION, open_readonly, status_counts
from carcrawl.store.schema import BACKFILL_STATE_COUNTS

SHARDED = "sharded"  # state of a main-checkpoint candidate whose shard has not been merged yet
SHARDS_META = "shards"  # meta key: how many shards the unmerged split has
#: tables that are not per-image data: the shard's own bookkeeping, or rows the driver owns
#: (state_counts: main's triggers count the merged rows themselves)
_NOT_MERGED = {"meta", "runs", "progress", "queries", "searches", "candidates", "state_counts"}
_CANDIDATE_RESULT = ("state", "reason", "attempts", "sha256", "final_url", "updated_at")


def shard_name(k: int) -> str:
    return f"{k:03d}"


def shards_root(main: Path) -> Path:
    """Shards live beside the main checkpoint: ``shards/NNN/checkpoint.sqlite``."""
    return main.parent / "shards"


def shard_checkpoints(main: Path, n: int | None = None) -> list[Path]:
    """The checkpoints of the main checkpoint's ``n`` shards (default: its unmerged split's)."""
    n = planned_shards(main) if n is None else n
    return [shards_root(main) / shard_name(k) / "checkpoint.sqlite" for k in range(n)]


def _connect(path: Path) -> sqlite3.Connection:
    con = sqlite3.connect(path, timeout=30, isolation_level=None)
    con.execute("PRAGMA busy_timeout=30000")
    return con


def _init_checkpoint(path: Path) -> None:
    """An empty checkpoint with the schema the pipeline's store opens without complaint."""
    path.parent.mkdir(parents=True, exist_ok=True)
    con = _connect(path)
    try:
        con.execute("PRAGMA journal_mode=WAL")
        con.executescript(SCHEMA)
        con.executescript(BACKFILL_STATE_COUNTS)
        con.execute(f"PRAGMA application_id={APPLICATION_ID}")
        con.execute(f"PRAGMA user_version={SCHEMA_VERSION}")
    finally:
        con.close()


_IDENTIFIER = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")


def identifier(name: str) -> str:
    """A table or column name read from a checkpoint's own schema, checked and quoted before it is
    formatted into SQL (names cannot be bound as parameters)."""
    if not _IDENTIFIER.fullmatch(name):
        raise CheckpointError(f"unexpected name in a checkpoint's schema: {name!r}")
    return f'"{name}"'


def identifiers(names: list[str] | tuple[str, ...], of: str = "") -> str:
    """Comma-separated, each checked and quoted by :func:`identifier`; ``of`` qualifies them with a
    (checked) schema and table, e.g. ``"s.candidates"``."""
    prefix = "".join(identifier(part) + "." for part in of.split(".")) if of else ""
    return ", ".join(prefix + identifier(n) for n in names)


def _columns(con: sqlite3.Connection, schema: str, table: str) -> list[str]:
    return [r[0] for r in con.execute("SELECT name FROM pragma_table_info(?, ?)", (table, schema))]


def _tables(con: sqlite3.Connection, schema: str) -> list[str]:
    return [r[0] for r in con.execute("SELECT name FROM pragma_table_list WHERE schema=? AND type='table'", (schema,))]


def planned_shards(main: Path) -> int:
    """How many shards the main checkpoint's unmerged split has (0 = none)."""
    if not main.exists():
        return 0
    con = open_readonly(main)
    try:
        row = con.execute("SELECT value FROM meta WHERE key=?", (SHARDS_META,)).fetchone()
    finally:
        con.close()
    return int(row[0]) if row else 0


def split_pending(main: Path, shard_paths: list[Path], shard_of: Callable[[str], int]) -> list[int]:
    """Copy the main checkpoint's pending candidates into the shard checkpoints (same ids), the
    shard chosen by ``shard_of(url)``, and mark them ``sharded`` in main. One transaction per
    shard; a kill between two leaves rows either still pending in main (split again next time,
    ``INSERT OR IGNORE`` by id) or sharded. Returns the rows moved per shard."""
    n = len(shard_paths)
    for p in shard_paths:
        if not p.exists():
            _init_checkpoint(p)
    con = _connect(main)
    moved = [0] * n
    try:
        row = con.execute("SELECT value FROM meta WHERE key=?", (SHARDS_META,)).fetchone()
        if row and int(row[0]) != n:
            raise CheckpointError(f"{main}: split into {row[0]} shards, not {n}")
        con.execute("INSERT OR REPLACE INTO meta(key, value) VALUES (?, ?)", (SHARDS_META, str(n)))
        con.create_function("carcrawl_shard", 1, lambda url: shard_of(url) % n, deterministic=True)
        con.execute("CREATE TEMP TABLE split_rows(id INTEGER PRIMARY KEY, shard INTEGER NOT NULL)")
        con.execute("INSERT INTO split_rows SELECT id, carcrawl_shard(url) FROM main.candidates WHERE state='pending'")
        for k, p in enumerate(shard_paths):
            con.execute("ATTACH DATABASE ? AS s", (str(p),))
            try:
                theirs = set(_columns(con, "s", "candidates"))
                names = [c for c in _columns(con, "main", "candidates") if c in theirs]
                con.execute("BEGIN IMMEDIATE")
                try:
                    cur = con.execute(
                        f"INSERT OR IGNORE INTO s.candidates({identifiers(names)}) SELECT {identifiers(names)}"
                        " FROM main.candidates"
                        " WHERE id IN (SELECT id FROM split_rows WHERE shard=?)", (k,)
                    )
                    moved[k] = max(cur.rowcount, 0)
                    con.execute(
                        "UPDATE main.candidates SET state=?, reason=? WHERE id IN (SELECT id FROM split_rows WHERE shard=?)",
                        (SHARDED, f"shard:{shard_name(k)}", k),
                    )
                    con.execute("COMMIT")
                except BaseException:
                    con.execute("ROLLBACK")
                    raise
            finally:
                con.execute("DETACH DATABASE s")
        con.execute("DROP TABLE temp.split_rows")
    finally:
        con.close()
    return moved


def shard_has_work(shard: Path) -> bool:
    """True while a shard has candidates to fetch or images awaiting a verdict."""
    con = open_readonly(shard)
    try:
        cands = con.execute("SELECT count(*) FROM candidates WHERE state IN ('pending','in_flight')").fetchone()[0]
        images = con.execute("SELECT count(*) FROM images WHERE state='pending'").fetchone()[0]
    finally:
        con.close()
    return bool(cands or images)


def image_paths(shard: Path) -> Iterator[str]:
    """The relative path of every image a shard stored (``images/ab/cd/<sha>.<ext>``)."""
    con = open_readonly(shard)
    try:
        for (path,) in con.execute("SELECT path FROM images"):
            yield path
    finally:
        con.close()


def merge_shard(main: Path, shard: Path, k: int) -> int:
    """Fold a finished shard into the main checkpoint in one transaction: its candidates' outcomes
    (by id), then every per-image table (images, verdicts, whatever the dataset side adds) with
    ``INSERT OR IGNORE``. Main rows of that shard the shard does not know go back to ``pending``.
    Idempotent: merging the same shard twice changes nothing. Returns the candidates updated."""
    con = _connect(main)
    try:
        con.execute("ATTACH DATABASE ? AS s", (str(shard),))
        con.execute("BEGIN IMMEDIATE")
        try:
            cur = con.execute(
                f"UPDATE main.candidates SET ({identifiers(_CANDIDATE_RESULT)})"
                f" = ({identifiers(_CANDIDATE_RESULT, of='s.candidates')}) FROM s.candidates"
                " WHERE main.candidates.id = s.candidates.id AND main.candidates.state=? AND main.candidates.reason=?",
                (SHARDED, f"shard:{shard_name(k)}"),
            )
            updated = max(cur.rowcount, 0)
            con.execute(
                "UPDATE main.candidates SET state='pending', reason=NULL WHERE state=? AND reason=?",
                (SHARDED, f"shard:{shard_name(k)}"),
            )
            main_tables = set(_tables(con, "main"))
            for table in _tables(con, "s"):
                if table in _NOT_MERGED or table.startswith("sqlite_") or table not in main_tables:
                    continue
                theirs = set(_columns(con, "s", table))
                cols = [c for c in _columns(con, "main", table) if c in theirs]
                con.execute(f"INSERT OR IGNORE INTO main.{identifier(table)}({identifiers(cols)})"
                            f" SELECT {identifiers(cols)} FROM s.{identifier(table)}")
            con.execute("COMMIT")
        except BaseException:
            con.execute("ROLLBACK")
            raise
        con.execute("DETACH DATABASE s")
    finally:
        con.close()
    return updated


def finish_split(main: Path) -> None:
    """Forget the split once every shard is merged (a later run may split anew)."""
    con = _connect(main)
    try:
        left = con.execute("SELECT count(*) FROM candidates WHERE state=?", (SHARDED,)).fetchone()[0]
        if left:
            raise CheckpointError(f"{main}: {left} candidates still belong to unmerged shards")
        con.execute("DELETE FROM meta WHERE key=?", (SHARDS_META,))
    finally:
        con.close()


def latest_progress(shard: Path) -> tuple[int, int, int, int, int]:
    """The counters a shard's running pipeline last recorded: (searched, fetched, failed,
    classified, bytes) of its current run; zeros before the first record."""
    if not shard.exists():
        return (0, 0, 0, 0, 0)
    try:
        con = open_readonly(shard)
    except CheckpointError:
        return (0, 0, 0, 0, 0)
    try:
        row = con.execute(
            "SELECT searched, fetched, failed, classified, bytes FROM progress"
            " WHERE run_id=(SELECT max(id) FROM runs) ORDER BY rowid DESC LIMIT 1"
        ).fetchone()
    except sqlite3.Error:
        row = None
    finally:
        con.close()
    return tuple(int(x or 0) for x in row) if row else (0, 0, 0, 0, 0)  # type: ignore[return-value]


def combined_status(main: Path, shards: list[Path]) -> dict[str, Any]:
    """:func:`status_counts` of the main checkpoint and its unmerged shards, as one dataset: the
    main's ``sharded`` placeholders are replaced by what the shards say about those rows."""
    con = open_readonly(main)
    try:
        out = status_counts(con)
    finally:
        con.close()
    cands = out["candidates"]
    cands["by_state"].pop(SHARDED, None)
    for key in [k for k in cands["by_reason"] if k.startswith(SHARDED + ":")]:
        del cands["by_reason"][key]
    out["reasons"] = {k: v for k, v in out["reasons"].items() if not k.startswith("shard:")}
    rate = 0.0
    for path in shards:
        if not path.exists():
            continue
        con = open_readonly(path)
        try:
            part = status_counts(con)
        finally:
            con.close()
        for table in ("candidates", "images"):
            for sub in ("by_state", "by_reason"):
                _add(out[table][sub], part[table][sub])
        _add(out["reasons"], part["reasons"])
        for key in ("kept", "kept_duplicates", "rejected_by_classifier", "stored_bytes"):
            if key in out and key in part:
                out[key] += part[key]
        rate += part.get("rate_urls_per_s", 0.0)
    out["reasons"] = dict(sorted(out["reasons"].items(), key=lambda kv: -kv[1]))
    if shards:
        out["shards"] = len(shards)
        if rate > 0:
            left = cands["by_state"].get("pending", 0) + cands["by_state"].get("in_flight", 0)
            out["rate_urls_per_s"] = round(rate, 2)
            out["eta_seconds"] = round(left / rate, 1)
    return out


def _add(into: dict[str, int], more: dict[str, int]) -> None:
    for k, v in more.items():
        into[k] = into.get(k, 0) + v
