"""Synchronous read-only access to a checkpoint: ``carcrawl status`` and the category report
work while a crawl runs, from another process (WAL)."""

from __future__ import annotations

import sqlite3
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from carcrawl.errors import CheckpointError
from carcrawl.store.schema import APPLICATION_ID, STATE_COUNTS_META, counted_state, reason_key


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
# (``not_vehicle:<class>`` as ``not_vehicle``, beside ``interior`` and ``vehicle_detail``: what the images were)
_REASON_KEY = reason_key("reason")
_COUNTED_STATE = counted_state("state")


# the first and the last sample of a run (an index search each, not the whole log)
_FIRST_AND_LAST_PROGRESS = (
    "SELECT ts, fetched, failed, classified FROM progress WHERE run_id=? ORDER BY ts LIMIT 1",
    "SELECT ts, fetched, failed, classified FROM progress WHERE run_id=? ORDER BY ts DESC LIMIT 1",
)


def trigger_counters(con: sqlite3.Connection) -> dict[str, dict[tuple[str, str], tuple[int, int]]] | None:
    """The trigger-kept counters (schema.py) by table: {(state, reason key): (rows, bytes)}, with
    candidates in flight counted as pending; None on a checkpoint no writer of this version has
    opened yet (then the rows are counted)."""
    try:
        if con.execute("SELECT 1 FROM meta WHERE key = ?", (STATE_COUNTS_META,)).fetchone() is None:
            return None
        rows = con.execute("SELECT tbl, state, reason, n, bytes FROM state_counts WHERE n != 0").fetchall()
    except sqlite3.OperationalError:  # no such table: an old checkpoint
        return None
    out: dict[str, dict[tuple[str, str], tuple[int, int]]] = {}
    for tbl, state, reason, n, nbytes in rows:
        out.setdefault(tbl, {})[(state, reason)] = (n, nbytes)
    return out


def row_counters(con: sqlite3.Connection) -> dict[str, dict[tuple[str, str], tuple[int, int]]]:
    """The same counters from the rows (old checkpoints; O(rows))."""
    out: dict[str, dict[tuple[str, str], tuple[int, int]]] = {}
    out["candidates"] = {(state, reason): (n, 0) for state, reason, n in con.execute(
        f"SELECT {_COUNTED_STATE}, {_REASON_KEY}, count(*) FROM candidates GROUP BY 1, 2")}
    out["images"] = {(state, reason): (n, nbytes) for state, reason, n, nbytes in con.execute(
        f"SELECT state, {_REASON_KEY}, count(*), coalesce(sum(bytes), 0) FROM images GROUP BY 1, 2")}
    out["verdicts"] = {(str(keep), ""): (n, 0) for keep, n in con.execute("SELECT keep, count(*) FROM verdicts GROUP BY 1")}
    kept_duplicates = con.execute(
        "SELECT count(*) FROM images i JOIN verdicts v ON v.sha256 = i.sha256 WHERE i.state = 'rejected'"
        " AND i.reason LIKE 'near_duplicate_of:%' AND v.keep=1").fetchone()[0]
    out["kept_duplicates"] = {("", ""): (kept_duplicates, 0)}
    return out


def status_counts(con: sqlite3.Connection) -> dict[str, Any]:
    """Counts by state and reason for every table, plus rates from the progress log."""
    counts = trigger_counters(con) or row_counters(con)
    # candidates in flight are counted as pending there; the few there are, by index
    cands = counts.setdefault("candidates", {})
    for reason, n in con.execute(f"SELECT {_REASON_KEY}, count(*) FROM candidates WHERE state = 'in_flight' GROUP BY 1"):
        left = cands.get(("pending", reason), (0, 0))[0] - n
        if left:
            cands[("pending", reason)] = (left, 0)
        else:
            cands.pop(("pending", reason), None)
        cands[("in_flight", reason)] = (n, 0)

    def grouped(table: str) -> dict[str, int]:
        pairs = sorted(counts.get(table, {}).items(), key=lambda kv: -kv[1][0])
        return {f"{state}:{reason}" if reason else state: n for (state, reason), (n, _b) in pairs}

    def by_state(table: str) -> dict[str, int]:
        out: dict[str, int] = {}
        for (state, _r), (n, _b) in counts.get(table, {}).items():
            out[state] = out.get(state, 0) + n
        return out

    reasons: dict[str, int] = {}
    for table in ("candidates", "images"):
        for (state, reason), (n, _b) in counts.get(table, {}).items():
            if reason and state != "done":
                reasons[reason] = reasons.get(reason, 0) + n
    verdicts = counts.get("verdicts", {})
    kept = verdicts.get(("1", ""), (0, 0))[0]
    kept_duplicates = counts.get("kept_duplicates", {}).get(("", ""), (0, 0))[0]
    searches = {(state, reason): (n, 0) for state, reason, n in con.execute(
        f"SELECT state, {_REASON_KEY}, count(*) FROM searches GROUP BY 1, 2")}
    counts["searches"] = searches
    out: dict[str, Any] = {
        "queries": con.execute("SELECT count(*) FROM queries").fetchone()[0],
        "searches": {"by_state": by_state("searches"), "by_reason": grouped("searches")},
        "candidates": {"by_state": by_state("candidates"), "by_reason": grouped("candidates")},
        "images": {"by_state": by_state("images"), "by_reason": grouped("images")},
        "reasons": dict(sorted(reasons.items(), key=lambda kv: -kv[1])),
        # kept = in the dataset: kept by the classifier and not a near-duplicate an export found
        # since, so "kept" and the images done agree (those duplicates are counted apart)
        "kept": kept - kept_duplicates,
        "kept_duplicates": kept_duplicates,
        "rejected_by_classifier": verdicts.get(("0", ""), (0, 0))[0],
        "stored_bytes": sum(b for _n, b in counts.get("images", {}).values()),
    }
    run = con.execute("SELECT id, state, started_at, finished_at FROM runs ORDER BY id DESC LIMIT 1").fetchone()
    if run:
        out["last_run"] = {"id": run[0], "state": run[1], "started_at": run[2], "finished_at": run[3]}
        rows = [r for sql in _FIRST_AND_LAST_PROGRESS for r in con.execute(sql, (run[0],))]
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
