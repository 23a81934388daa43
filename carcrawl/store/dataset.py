"""The dataset side of the checkpoint: every SQL statement export, report, review and refine need.

The crawl's tables (candidates, images, verdicts, ...) are only read here. The dataset side adds
its own tables beside them, created with ``CREATE TABLE IF NOT EXISTS`` whenever a dataset
command opens the checkpoint, so an old checkpoint gains them on first use:

- ``image_hashes``: perceptual hashes per image (written with the verdict by the crawl, or by the
  first export for images never classified); ``indexed`` is set once a near-duplicate pass has
  searched the image's pairs, so a later pass searches only the new ones;
- ``near_pairs``: every pair of images whose hashes are within the loose radius (found by the
  band index), kept so an incremental pass only adds the pairs of new images;
- ``near_duplicates``: members of near-duplicate clusters (``best`` is the member kept);
- ``reviews``: the reviewer's marks from the report page (they win over the model);
- ``refined``: the probe's score for every image with an embedding (``carcrawl refine``);
- ``splits``: the split each image got per split plan, so a later export keeps test images in test.

Writes go through one short transaction each (with a busy timeout), so a crawl writing to the same
WAL checkpoint is delayed by milliseconds, not blocked.
"""

from __future__ import annotations

import contextlib
import json
import sqlite3
import time
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from carcrawl.errors import CheckpointError
from carcrawl.store import APPLICATION_ID, status_counts

DATASET_SCHEMA = """
CREATE TABLE IF NOT EXISTS image_hashes(
  sha256 TEXT PRIMARY KEY, hashes BLOB, width INTEGER, height INTEGER, error TEXT, indexed INTEGER);
CREATE TABLE IF NOT EXISTS near_pairs(
  a TEXT NOT NULL, b TEXT NOT NULL, distance INTEGER NOT NULL, PRIMARY KEY(a, b)) WITHOUT ROWID;
CREATE INDEX IF NOT EXISTS near_pairs_b ON near_pairs(b);
CREATE TABLE IF NOT EXISTS near_duplicates(
  sha256 TEXT PRIMARY KEY, cluster TEXT NOT NULL, best TEXT NOT NULL, distance INTEGER);
CREATE TABLE IF NOT EXISTS reviews(
  sha256 TEXT PRIMARY KEY, mark TEXT NOT NULL CHECK (mark IN ('right', 'wrong')), reviewed_at REAL, source TEXT);
CREATE TABLE IF NOT EXISTS refined(
  sha256 TEXT PRIMARY KEY, score REAL NOT NULL, probe TEXT NOT NULL, created_at REAL);
CREATE TABLE IF NOT EXISTS splits(
  plan TEXT NOT NULL, sha256 TEXT NOT NULL, split TEXT NOT NULL, PRIMARY KEY(plan, sha256));
"""

NEAR_DUP_PREFIX = "near_duplicate_of:"


@dataclass(frozen=True, slots=True)
class CandidateInfo:
    """One URL that delivered an image (several URLs can deliver the same bytes)."""

    id: int
    url: str
    source: str
    query: str | None
    page: int | None
    rank: int | None
    title: str | None
    page_url: str | None
    license: str | None
    license_url: str | None
    creator: str | None
    attribution: str | None
    make: str
    model: str
    color: str
    body_type: str
    category: str


@dataclass(slots=True)
class ImageRecord:
    """Everything the checkpoint knows about one stored image (no embedding: those stay on disk)."""

    sha256: str
    path: str
    format: str
    bytes: int
    width: int | None
    height: int | None
    state: str
    reason: str | None
    keep: bool | None
    verdict_reason: str | None
    top5: list[tuple[str, float]]
    model: str | None
    mark: str | None
    refined_score: float | None
    cluster: str | None
    best: str | None
    candidates: list[CandidateInfo] = field(default_factory=list)

    @property
    def near_duplicate_of(self) -> str | None:
        return self.best if self.best and self.best != self.sha256 else None


@dataclass(frozen=True, slots=True)
class HashRow:
    sha256: str
    hashes: bytes | None
    width: int | None
    height: int | None


@dataclass(frozen=True, slots=True)
class DedupMember:
    """An image taking part in near-duplicate detection, with what ranks the best member."""

    sha256: str
    path: str
    bytes: int
    width: int | None
    height: int | None
    sources: tuple[str, ...]
    licensed: bool


RECORD_PAGE = 2000
#: sorts after every sha256 hex digest (the open upper end of a range of images)
AFTER_EVERY_SHA = "g"

_RECORDS = (
    "SELECT i.sha256, i.path, i.format, i.bytes, coalesce(i.width, h.width), coalesce(i.height, h.height),"
    " i.state, i.reason, v.keep, v.reason, v.top5, v.model, rv.mark, f.score, n.cluster, n.best"
    " FROM images i LEFT JOIN verdicts v ON v.sha256 = i.sha256"
    " LEFT JOIN image_hashes h ON h.sha256 = i.sha256 LEFT JOIN reviews rv ON rv.sha256 = i.sha256"
    " LEFT JOIN refined f ON f.sha256 = i.sha256 LEFT JOIN near_duplicates n ON n.sha256 = i.sha256"
)
_CANDIDATES = (
    "SELECT c.sha256, c.id, c.url, c.source, q.text, c.page, c.rank, c.title, c.page_url, c.license,"
    " c.license_url, c.creator, c.attribution, c.make, c.model, c.color, c.body_type, c.category"
    " FROM candidates c LEFT JOIN queries q ON q.id = c.query_id"
    " WHERE +c.state = 'done' AND c.sha256 IS NOT NULL"
)


#: positions in the rows of :meth:`DatasetDB.iter_record_pages` (image rows, then candidate rows)
R_SHA, R_PATH, R_FORMAT, R_BYTES, R_WIDTH, R_HEIGHT, R_STATE, R_REASON, R_KEEP, R_VREASON, R_TOP5, R_MODEL, \
    R_MARK, R_SCORE, R_CLUSTER, R_BEST = range(16)
C_SHA, C_ID, C_URL, C_SOURCE, C_QUERY, C_PAGE, C_RANK, C_TITLE, C_PAGE_URL, C_LICENSE, C_LICENSE_URL, \
    C_CREATOR, C_ATTRIBUTION, C_MAKE, C_MODEL, C_COLOR, C_BODY_TYPE, C_CATEGORY = range(18)


def parse_top5(text: str | None) -> list[tuple[str, float]]:
    """The verdict's top-5 JSON as (label, score) pairs; unreadable text is no prediction."""
    if not text:
        return []
    try:
        return [(str(p[0]), float(p[1])) for p in json.loads(text)]
    except (ValueError, TypeError, IndexError):
        return []


def _record(r: tuple[Any, ...]) -> ImageRecord:
    return ImageRecord(
        sha256=r[0], path=r[1], format=r[2], bytes=r[3], width=r[4], height=r[5], state=r[6], reason=r[7],
        keep=None if r[8] is None else bool(r[8]), verdict_reason=r[9], top5=parse_top5(r[10]), model=r[11],
        mark=r[12], refined_score=r[13], cluster=r[14], best=r[15], candidates=[],
    )


def group_candidates(rows: list[tuple[Any, ...]], cands: list[tuple[Any, ...]]) -> list[list[tuple[Any, ...]]]:
    """Per image row (sha256 order), its candidate rows (``cands`` in sha256, id order; rows of
    images not in ``rows`` are skipped): one merge walk, no dict."""
    out: list[list[tuple[Any, ...]]] = []
    j, n = 0, len(cands)
    for r in rows:
        sha = r[0]
        while j < n and cands[j][0] < sha:
            j += 1
        k = j
        while k < n and cands[k][0] == sha:
            k += 1
        out.append(cands[j:k])
        j = k
    return out


def records_of(rows: list[tuple[Any, ...]], cands: list[list[tuple[Any, ...]]]) -> list[ImageRecord]:
    """:class:`ImageRecord` objects of image rows and their candidate rows (grouped per image:
    :func:`group_candidates`)."""
    recs = []
    for r, cs in zip(rows, cands, strict=True):
        rec = _record(r)
        rec.candidates = [CandidateInfo(*c[1:]) for c in cs]
        recs.append(rec)
    return recs


def checkpoint_of(target: str | Path) -> Path:
    """The checkpoint file of an output folder (or the file itself when given one)."""
    p = Path(target)
    return p / "checkpoint.sqlite" if p.is_dir() or not p.suffix else p


class DatasetDB:
    """A read-write connection to a checkpoint for the dataset commands. Use as a context manager."""

    def __init__(self, con: sqlite3.Connection, path: Path):
        self.con = con
        self.path = path

    @classmethod
    def open(cls, target: str | Path) -> DatasetDB:
        path = checkpoint_of(target)
        if not path.is_file():
            raise CheckpointError(f"{path}: no checkpoint here (run `carcrawl crawl --out DIR` or `carcrawl demo` first)")
        try:
            con = sqlite3.connect(path, timeout=30, isolation_level=None)
            app_id = con.execute("PRAGMA application_id").fetchone()[0]
        except sqlite3.DatabaseError as e:
            raise CheckpointError(f"{path}: not an SQLite database ({e})") from None
        if app_id != APPLICATION_ID:
            con.close()
            raise CheckpointError(f"{path}: not a carcrawl checkpoint")
        con.execute("PRAGMA busy_timeout=30000")
        # the dataset side reads the whole checkpoint in key order: through a mapping of its first
        # 256 MB (100k images' worth) instead of one read() per 4 KB page, 20 % less time per read
        # pass and a third of the system time; the mapped pages count in RSS, so it is capped
        con.execute("PRAGMA mmap_size=268435456")
        try:
            con.executescript(DATASET_SCHEMA)
            columns = {r[1] for r in con.execute("PRAGMA table_info(image_hashes)")}
            if "indexed" not in columns:  # a checkpoint from before the band index
                con.execute("ALTER TABLE image_hashes ADD COLUMN indexed INTEGER")
        except sqlite3.OperationalError as e:
            con.close()
            raise CheckpointError(f"{path}: cannot add the dataset tables ({e})") from None
        return cls(con, path)

    def close(self) -> None:
        self.con.close()

    @contextlib.contextmanager
    def released(self) -> Iterator[None]:
        """The connection closed for the block and opened again after it: a process about to
        fork() holds none (SQLite: a connection must not cross a fork; each child opens its own)."""
        self.con.close()
        try:
            yield
        finally:
            self.con = DatasetDB.open(self.path).con

    def images_about(self) -> int:
        """About how many images the checkpoint holds (the highest rowid: one B-tree descent,
        where a count reads them all)."""
        return self.con.execute("SELECT coalesce(max(rowid), 0) FROM images").fetchone()[0]

    def checkpoint_wal(self) -> None:
        """Move what this connection committed from the WAL into the checkpoint now. An export
        calls it after the plan, before its files: the checkpoint SQLite otherwise runs on close
        fsyncs the database after the export's files, and on ext4 (data=ordered) that fsync
        waited for gigabytes of them to reach the disk (1.3 s of a 3 s WebDataset export of
        2 GB). PASSIVE: it never waits for a crawl writing the same checkpoint (whose connection
        then does the checkpointing instead)."""
        self.con.execute("PRAGMA wal_checkpoint(PASSIVE)").fetchall()

    def __enter__(self) -> DatasetDB:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    @property
    def out_dir(self) -> Path:
        return self.path.parent

    def _tx(self, statements: Iterable[tuple[str, list[tuple[Any, ...]]]]) -> None:
        self.con.execute("BEGIN IMMEDIATE")
        try:
            for sql, rows in statements:
                self.con.executemany(sql, rows)
            self.con.execute("COMMIT")
        except BaseException:
            self.con.execute("ROLLBACK")
            raise

    # -- perceptual hashes and near-duplicates ------------------------------------------------

    # a member: kept (or unclassified), currently marked a near duplicate, or marked right by the
    # reviewer, and not marked wrong (written out in each query: SQL here is never formatted)

    def dedup_member_shas(self) -> set[str]:
        """Images that can be in the dataset (see above)."""
        return {r[0] for r in self.con.execute(
            "SELECT i.sha256 FROM images i LEFT JOIN reviews r ON r.sha256 = i.sha256"
            " WHERE (i.state = 'done' OR i.reason LIKE 'near_duplicate_of:%' OR r.mark = 'right')"
            " AND coalesce(r.mark, '') != 'wrong'")}

    def iter_unhashed_members(self, page: int = 1000) -> Iterator[list[tuple[str, str]]]:
        """(sha256, path) of members without a hash row, ``page`` at a time in sha256 order (keyset
        on the primary key): the only images a pass decodes."""
        after = ""
        while True:
            rows = self.con.execute(
                "SELECT i.sha256, i.path FROM images i LEFT JOIN reviews r ON r.sha256 = i.sha256"
                " WHERE (i.state = 'done' OR i.reason LIKE 'near_duplicate_of:%' OR r.mark = 'right')"
                " AND coalesce(r.mark, '') != 'wrong' AND i.sha256 > ?"
                " AND NOT EXISTS (SELECT 1 FROM image_hashes h WHERE h.sha256 = i.sha256) ORDER BY i.sha256 LIMIT ?",
                (after, page)).fetchall()
            if not rows:
                return
            yield rows
            after = rows[-1][0]

    def count_dedup_members(self) -> int:
        return self.con.execute(
            "SELECT count(*) FROM images i LEFT JOIN reviews r ON r.sha256 = i.sha256"
            " WHERE (i.state = 'done' OR i.reason LIKE 'near_duplicate_of:%' OR r.mark = 'right')"
            " AND coalesce(r.mark, '') != 'wrong'").fetchone()[0]

    #: a cluster member's row, up to the list of sha256s it is among; with its sources and licence
    #: ("+c.state": look candidates up by sha256, never scan them by state, O(n) per chunk)
    _MEMBERS_WITH_SOURCES = (
        "SELECT i.sha256, i.path, i.bytes, coalesce(i.width, h.width), coalesce(i.height, h.height),"
        " group_concat(DISTINCT c.source), max(c.license IS NOT NULL AND c.license != '')"
        " FROM images i LEFT JOIN image_hashes h ON h.sha256 = i.sha256"
        " LEFT JOIN candidates c ON c.sha256 = i.sha256 AND +c.state = 'done'"
        " LEFT JOIN reviews r ON r.sha256 = i.sha256"
        " WHERE (i.state = 'done' OR i.reason LIKE 'near_duplicate_of:%' OR r.mark = 'right')"
        " AND coalesce(r.mark, '') != 'wrong' AND i.sha256 IN (")
    _MEMBERS = (
        "SELECT i.sha256, i.path, i.bytes, coalesce(i.width, h.width), coalesce(i.height, h.height), NULL, 0"
        " FROM images i LEFT JOIN image_hashes h ON h.sha256 = i.sha256"
        " LEFT JOIN reviews r ON r.sha256 = i.sha256"
        " WHERE (i.state = 'done' OR i.reason LIKE 'near_duplicate_of:%' OR r.mark = 'right')"
        " AND coalesce(r.mark, '') != 'wrong' AND i.sha256 IN (")

    def dedup_members(self, shas: Iterable[str], *, sources: bool = True) -> list[DedupMember]:
        """What ranks the best member of a cluster, for the members among ``shas``. Without
        ``sources`` the candidates are not read (``sources=()``, ``licensed=False``): those
        look-ups are most of the cost, and only clusters whose largest members tie need them."""
        wanted = sorted(set(shas))
        rows = []
        query = self._MEMBERS_WITH_SOURCES if sources else self._MEMBERS
        for i in range(0, len(wanted), 500):
            chunk = wanted[i:i + 500]
            marks = ",".join("?" * len(chunk))
            rows += self.con.execute(query + marks + ") GROUP BY i.sha256", chunk).fetchall()
        return [
            DedupMember(r[0], r[1], r[2], r[3], r[4], tuple(sorted((r[5] or "").split(","))) if r[5] else (), bool(r[6]))
            for r in rows
        ]

    def hash_matrix(self) -> tuple[list[str], bytes, int]:
        """(sha256s, their hashes joined (96 bytes each), how many of them come first because a pass
        already searched their pairs): every image with hashes, the indexed ones first (read in
        table order and put in order here: an ORDER BY sorted 1M rows in SQLite)."""
        shas: list[str] = []
        blobs: list[bytes] = []
        fresh: list[int] = []
        for k, (sha, blob, done) in enumerate(self.con.execute(
                "SELECT sha256, hashes, indexed FROM image_hashes WHERE hashes IS NOT NULL")):
            shas.append(sha)
            blobs.append(blob)
            if not done:
                fresh.append(k)
        if not fresh:
            return shas, b"".join(blobs), len(shas)
        is_fresh = set(fresh)
        order = [k for k in range(len(shas)) if k not in is_fresh] + fresh
        return [shas[k] for k in order], b"".join([blobs[k] for k in order]), len(shas) - len(fresh)

    def add_near_pairs(self, pairs: Iterable[tuple[str, str, int]], searched: list[str]) -> None:
        """Record the pairs a pass found for the images ``searched`` (their old pairs are replaced:
        their hashes may have changed) and mark those images indexed, one transaction."""
        self._tx([
            ("DELETE FROM near_pairs WHERE a = ?", [(s,) for s in searched]),
            ("DELETE FROM near_pairs WHERE b = ?", [(s,) for s in searched]),
            ("INSERT OR REPLACE INTO near_pairs(a, b, distance) VALUES (?,?,?)", list(pairs)),
            ("UPDATE image_hashes SET indexed = 1 WHERE sha256 = ?", [(s,) for s in searched]),
        ])

    def near_pairs(self) -> Iterator[tuple[str, str, int]]:
        """Every recorded pair (a < b) and its distance in bits."""
        yield from self.con.execute("SELECT a, b, distance FROM near_pairs")

    def embedding_model(self) -> tuple[str, int] | None:
        """(model, bytes) of the most common kind of embedding: only those are compared."""
        row = self.con.execute(
            "SELECT model, length(embedding) AS size, count(*) AS n FROM verdicts WHERE embedding IS NOT NULL"
            " GROUP BY 1, 2 ORDER BY n DESC, model DESC, size DESC LIMIT 1"
        ).fetchone()
        return (row[0], row[1]) if row else None

    def hashes(self, shas: list[str]) -> dict[str, HashRow]:
        out: dict[str, HashRow] = {}
        for i in range(0, len(shas), 500):
            chunk = shas[i:i + 500]
            marks = ",".join("?" * len(chunk))
            for r in self.con.execute(
                f"SELECT sha256, hashes, width, height FROM image_hashes WHERE sha256 IN ({marks})", chunk
            ):
                out[r[0]] = HashRow(r[0], r[1], r[2], r[3])
        return out

    def save_hashes(self, rows: list[tuple[str, bytes | None, int | None, int | None, str | None]]) -> None:
        """(sha256, hashes, width, height, error) rows, one transaction (not yet indexed)."""
        self._tx([("INSERT OR REPLACE INTO image_hashes(sha256, hashes, width, height, error) VALUES (?,?,?,?,?)", rows)])

    def embeddings(self, shas: Iterable[str] | None = None) -> Iterator[tuple[str, bytes, str]]:
        """(sha256, float16 embedding bytes, model) for images that have one."""
        if shas is None:
            yield from self.con.execute(
                "SELECT sha256, embedding, model FROM verdicts WHERE embedding IS NOT NULL ORDER BY sha256"
            )
            return
        wanted = list(shas)
        for i in range(0, len(wanted), 500):
            chunk = wanted[i:i + 500]
            marks = ",".join("?" * len(chunk))
            yield from self.con.execute(
                f"SELECT sha256, embedding, model FROM verdicts WHERE embedding IS NOT NULL AND sha256 IN ({marks})", chunk
            )

    def clusters_of(self, shas: Iterable[str]) -> dict[str, str]:
        """Near-duplicate cluster of each of ``shas`` that is in one (refine keeps a cluster in one CV fold)."""
        wanted = list(shas)
        out: dict[str, str] = {}
        for i in range(0, len(wanted), 500):
            chunk = wanted[i:i + 500]
            marks = ",".join("?" * len(chunk))
            out.update(self.con.execute(f"SELECT sha256, cluster FROM near_duplicates WHERE sha256 IN ({marks})", chunk))
        return out

    def replace_near_duplicates(self, members: list[tuple[str, str, str, int]]) -> None:
        """Replace all clusters at once: (sha256, cluster, best, distance) for every member of a
        cluster of two or more. Non-best members become ``rejected:near_duplicate_of:<best>``;
        images that were near duplicates before but are not now get their classifier state back.
        Only the rows that change are written (a later pass changes a few clusters of many)."""
        new = {sha: (cluster, best, distance) for sha, cluster, best, distance in members}
        wanted = {sha: NEAR_DUP_PREFIX + best for sha, (_c, best, _d) in new.items() if sha != best}
        restore = (
            "UPDATE images SET"
            " state = coalesce((SELECT CASE WHEN v.keep THEN 'done' ELSE 'rejected' END FROM verdicts v"
            "   WHERE v.sha256 = images.sha256), 'done'),"
            " reason = coalesce((SELECT v.reason FROM verdicts v WHERE v.sha256 = images.sha256), 'classify_disabled')"
            " WHERE sha256 = ?"
        )
        self.con.execute("BEGIN IMMEDIATE")
        try:
            old = {r[0]: tuple(r[1:]) for r in self.con.execute("SELECT sha256, cluster, best, distance FROM near_duplicates")}
            marked = dict(self.con.execute(
                "SELECT sha256, reason FROM images WHERE state = 'rejected'"
                " AND reason >= 'near_duplicate_of:' AND reason < 'near_duplicate_of;'"))
            self.con.executemany(restore, [(sha,) for sha in marked if sha not in wanted])
            self.con.executemany("DELETE FROM near_duplicates WHERE sha256 = ?", [(sha,) for sha in old if sha not in new])
            self.con.executemany("INSERT OR REPLACE INTO near_duplicates(sha256, cluster, best, distance) VALUES (?,?,?,?)",
                                 [(sha, *row) for sha, row in new.items() if old.get(sha) != row])
            self.con.executemany("UPDATE images SET state='rejected', reason=? WHERE sha256=?",
                                 [(reason, sha) for sha, reason in wanted.items() if marked.get(sha) != reason])
            self.con.execute("COMMIT")
        except BaseException:
            self.con.execute("ROLLBACK")
            raise

    # -- the dataset --------------------------------------------------------------------------

    def iter_record_pages(self, page: int = RECORD_PAGE, above: str = "", below: str = AFTER_EVERY_SHA,
                          ) -> Iterator[tuple[list[tuple[Any, ...]], list[tuple[Any, ...]]]]:
        """(image rows, their candidate rows) of every stored image whose sha256 sorts between
        ``above`` and ``below`` (default: all), ``page`` images at a time in sha256 order (keyset
        on the primary key): plain tuples (columns ``R_*`` and ``C_*``), so the plan's pass and
        the Parquet manifest make no object per image."""
        after = above
        while True:
            rows = self.con.execute(_RECORDS + " WHERE +i.state IN ('done', 'rejected') AND i.sha256 > ?"
                                    " AND i.sha256 < ? ORDER BY i.sha256 LIMIT ?", (after, below, page)).fetchall()
            if not rows:
                return
            cands = self.con.execute(_CANDIDATES + " AND c.sha256 BETWEEN ? AND ? ORDER BY c.sha256, c.id",
                                     (rows[0][0], rows[-1][0])).fetchall()
            yield rows, cands
            after = rows[-1][0]

    def iter_records(self, page: int = RECORD_PAGE) -> Iterator[ImageRecord]:
        """Every stored image with its verdict, marks, scores, cluster and the URLs that gave it, in
        sha256 order, read ``page`` images at a time (memory does not grow with the checkpoint)."""
        for rows, cands in self.iter_record_pages(page):
            yield from records_of(rows, group_candidates(rows, cands))

    def records(self) -> list[ImageRecord]:
        """:meth:`iter_records` as a list (small checkpoints and tests only)."""
        return list(self.iter_records())

    def record_rows_by_sha(self, shas: list[str]) -> tuple[list[tuple[Any, ...]], list[tuple[Any, ...]]]:
        """(image rows, candidate rows) of ``shas`` (stored, done or rejected), both in sha256 order
        (candidates then by id) like a page of :meth:`iter_record_pages`; for the few images a
        report shows and the shuffled order of WebDataset shards."""
        rows: list[tuple[Any, ...]] = []
        cands: list[tuple[Any, ...]] = []
        for i in range(0, len(shas), 500):
            chunk = shas[i:i + 500]
            marks = ",".join("?" * len(chunk))
            rows += self.con.execute(_RECORDS + f" WHERE +i.state IN ('done', 'rejected') AND i.sha256 IN ({marks})",
                                     chunk).fetchall()
            cands += self.con.execute(_CANDIDATES + f" AND c.sha256 IN ({marks})", chunk).fetchall()
        rows.sort(key=lambda r: r[0])
        cands.sort(key=lambda c: (c[0], c[1]))
        return rows, cands

    def records_by_sha(self, shas: list[str]) -> list[ImageRecord]:
        """The records of ``shas`` (stored, done or rejected), in the order given."""
        rows, cands = self.record_rows_by_sha(shas)
        found = {r.sha256: r for r in records_of(rows, group_candidates(rows, cands))}
        return [found[s] for s in shas if s in found]

    def label_presence(self) -> dict[str, int]:
        """How many images that can be in a dataset (kept, or marked right) have a URL labelled
        under each scheme's fields: lets the report pick its label scheme without planning thrice."""
        row = self.con.execute(
            "SELECT count(DISTINCT CASE WHEN c.make != '' AND c.model != '' THEN c.sha256 END),"
            " count(DISTINCT CASE WHEN c.category != '' THEN c.sha256 END),"
            " count(DISTINCT CASE WHEN c.body_type != '' THEN c.sha256 END)"
            " FROM candidates c JOIN images i ON i.sha256 = c.sha256 LEFT JOIN reviews r ON r.sha256 = i.sha256"
            " WHERE c.state = 'done' AND (i.state = 'done' OR r.mark = 'right') AND coalesce(r.mark, '') != 'wrong'"
        ).fetchone()
        return {"make_model": row[0], "category": row[1], "body_type": row[2]}

    def bodytype_hits(self) -> list[tuple[str, str, str, str, int]]:
        """(make, model, body_type, source, total_hits) of every counted body-type search."""
        return self.con.execute(
            "SELECT q.make, q.model, q.body_type, s.source, s.total_hits FROM searches s"
            " JOIN queries q ON q.id = s.query_id WHERE q.kind = 'bodytype' AND s.total_hits IS NOT NULL"
        ).fetchall()

    # -- splits -------------------------------------------------------------------------------

    def previous_splits(self, plan: str) -> dict[str, str]:
        return dict(self.con.execute("SELECT sha256, split FROM splits WHERE plan = ?", (plan,)).fetchall())

    def iter_previous_splits(self, plan: str, above: str = "", below: str = AFTER_EVERY_SHA) -> Iterator[tuple[str, str]]:
        """(sha256, split) an earlier export of ``plan`` gave, in sha256 order (streamed), of the
        images between ``above`` and ``below`` (default: all)."""
        yield from self.con.execute("SELECT sha256, split FROM splits WHERE plan = ? AND sha256 > ? AND sha256 < ?"
                                    " ORDER BY sha256", (plan, above, below))

    def save_splits(self, plan: str, assignments: dict[str, str] | Iterable[tuple[str, str]]) -> None:
        """Remember (sha256, split) pairs of a plan, one transaction, inserted in batches."""
        pairs = assignments.items() if isinstance(assignments, dict) else assignments
        self.con.execute("BEGIN IMMEDIATE")
        try:
            batch: list[tuple[str, str, str]] = []
            for sha, split in pairs:
                batch.append((plan, sha, split))
                if len(batch) >= 5000:
                    self.con.executemany("INSERT OR REPLACE INTO splits(plan, sha256, split) VALUES (?,?,?)", batch)
                    batch.clear()
            self.con.executemany("INSERT OR REPLACE INTO splits(plan, sha256, split) VALUES (?,?,?)", batch)
            self.con.execute("COMMIT")
        except BaseException:
            self.con.execute("ROLLBACK")
            raise

    # -- reviews and the probe ----------------------------------------------------------------

    def known_shas(self, shas: Iterable[str]) -> set[str]:
        wanted = list(shas)
        out: set[str] = set()
        for i in range(0, len(wanted), 500):
            chunk = wanted[i:i + 500]
            marks = ",".join("?" * len(chunk))
            out.update(r[0] for r in self.con.execute(f"SELECT sha256 FROM images WHERE sha256 IN ({marks})", chunk))
        return out

    def save_reviews(self, marks: dict[str, str], source: str) -> None:
        """Apply marks (``right``/``wrong``; ``none`` clears a mark). A later import wins."""
        now = time.time()
        self._tx([
            ("INSERT OR REPLACE INTO reviews(sha256, mark, reviewed_at, source) VALUES (?,?,?,?)",
             [(s, m, now, source) for s, m in marks.items() if m in ("right", "wrong")]),
            ("DELETE FROM reviews WHERE sha256 = ?", [(s,) for s, m in marks.items() if m == "none"]),
        ])

    def reviews(self) -> dict[str, str]:
        return dict(self.con.execute("SELECT sha256, mark FROM reviews").fetchall())

    def save_refined(self, scores: list[tuple[str, float]], probe: str) -> None:
        now = time.time()
        self._tx([
            ("DELETE FROM refined", [()]),
            ("INSERT INTO refined(sha256, score, probe, created_at) VALUES (?,?,?,?)",
             [(s, float(v), probe, now) for s, v in scores]),
        ])

    def set_meta(self, key: str, value: str) -> None:
        self._tx([("INSERT OR REPLACE INTO meta(key, value) VALUES (?,?)", [(key, value)])])

    def get_meta(self, key: str) -> str | None:
        row = self.con.execute("SELECT value FROM meta WHERE key = ?", (key,)).fetchone()
        return row[0] if row else None

    # -- report -------------------------------------------------------------------------------

    def status(self) -> dict[str, Any]:
        return status_counts(self.con)

    def sources(self) -> list[tuple[str, str, int]]:
        """(source, candidate state, count)."""
        return self.con.execute("SELECT source, state, count(*) FROM candidates GROUP BY 1, 2 ORDER BY 1, 2").fetchall()

    def licences(self) -> list[tuple[str, int]]:
        """Licences of the images downloaded (by URL), most common first."""
        return self.con.execute(
            "SELECT coalesce(nullif(license, ''), 'unknown'), count(*) FROM candidates WHERE state = 'done'"
            " GROUP BY 1 ORDER BY 2 DESC"
        ).fetchall()

    def progress(self) -> list[tuple[float, int, int, int, int, int]]:
        """(ts, run_id, fetched, failed, classified, bytes) samples of every run, oldest first."""
        return self.con.execute(
            "SELECT ts, run_id, coalesce(fetched, 0), coalesce(failed, 0), coalesce(classified, 0), coalesce(bytes, 0)"
            " FROM progress ORDER BY ts"
        ).fetchall()

    def run_span(self) -> tuple[float, float] | None:
        """(first run's start, last run's end) of the crawl, for the report's time axis; a run
        still going (or killed) ends at its last progress sample."""
        row = self.con.execute(
            "SELECT min(started_at), max(coalesce(finished_at, (SELECT max(ts) FROM progress p WHERE p.run_id = r.id),"
            " started_at)) FROM runs r WHERE started_at IS NOT NULL"
        ).fetchone()
        return (float(row[0]), float(row[1])) if row and row[0] is not None and row[1] is not None else None
