"""Read-only questions about one URL (``carcrawl why URL DIR``): what happened to it and where it
came from, straight from the checkpoint."""

from __future__ import annotations

import json
import sqlite3
import time
from typing import Any


def _when(ts: float | None) -> str | None:
    return time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(ts)) if ts else None


def url_story(con: sqlite3.Connection, url_key: str) -> dict[str, Any] | None:
    """The candidate with this ``url_key`` (see ``carcrawl.sources.normalize_url``): its state,
    reason and attempts; the search (query, source, page, rank) that found it; the stored image
    and the classifier's verdict when it got that far. None when the checkpoint has no such URL."""
    row = con.execute(
        "SELECT id, url, source, query_id, page, rank, state, reason, attempts, sha256, final_url, updated_at,"
        " make, model, color, body_type, category FROM candidates WHERE url_key=?",
        (url_key,),
    ).fetchone()
    if row is None:
        return None
    (cid, url, source, query_id, page, rank, state, reason, attempts, sha, final_url, updated,
     make, model, color, body_type, category) = tuple(row)
    story: dict[str, Any] = {
        "url": url, "state": state, "reason": reason, "attempts": attempts, "updated_at": _when(updated),
        "source": source, "labels": {k: v for k, v in (("make", make), ("model", model), ("color", color),
                                                       ("body_type", body_type), ("category", category)) if v},
    }
    if final_url and final_url != url:
        story["final_url"] = final_url
    if query_id is not None:
        q = con.execute("SELECT text FROM queries WHERE id=?", (query_id,)).fetchone()
        s = con.execute(
            "SELECT state, reason, pages, found FROM searches WHERE query_id=? AND source=?", (query_id, source)
        ).fetchone()
        story["found_by"] = {"query": q[0] if q else None, "source": source, "page": page, "rank": rank}
        if s is not None:
            story["found_by"]["search"] = {"state": s[0], "reason": s[1], "pages": s[2], "found": s[3]}
    if sha:
        img = con.execute("SELECT state, reason, path, bytes FROM images WHERE sha256=?", (sha,)).fetchone()
        if img is not None:
            story["image"] = {"sha256": sha, "state": img[0], "reason": img[1], "path": img[2], "bytes": img[3]}
        v = con.execute("SELECT keep, reason, top5, model FROM verdicts WHERE sha256=?", (sha,)).fetchone()
        if v is not None:
            story["verdict"] = {"keep": bool(v[0]), "reason": v[1], "top5": json.loads(v[2]), "model": v[3]}
    story["candidate_id"] = cid
    return story
