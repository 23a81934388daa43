"""The four export formats. Each writes into a fresh folder that replaces the target only when
complete, so an interrupted export never leaves a half dataset under the real name.

- ``imagefolder``: ``OUT/{train,val,test}/<class>/<sha256>.<ext>`` (``torchvision.datasets.ImageFolder``);
- ``hf``: ``OUT/{train,validation,test}/<sha256>.<ext>`` + ``metadata.jsonl`` per split
  (``datasets.load_dataset("imagefolder", data_dir=OUT)``);
- ``webdataset``: ``OUT/<split>-000000.tar`` shards, per sample ``<sha256>.<ext>``, ``.json``, ``.cls``;
- ``parquet``: ``OUT/manifest.parquet``, one row per stored image, every column we know.

Images are hard-linked from ``images/`` when the filesystem allows (no copy, no extra space; the
files are content-addressed and never rewritten), else copied. File names are content hashes;
class folder names go through :func:`carcrawl.export.labels.safe_name`.

Every writer streams the plan (:meth:`DatasetPlan.iter_entries`): ImageFolder and HF write as the
entries come, WebDataset fetches each split's shuffled order a page at a time, Parquet goes through
one ``ParquetWriter`` in batches of :data:`PARQUET_BATCH` rows.
"""

from __future__ import annotations

import contextlib
import errno
import json
import os
import random
import shutil
import time
import uuid
from array import array
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

from carcrawl.errors import CarcrawlError
from carcrawl.export import forked
from carcrawl.export.labels import folder_names, inside
from carcrawl.export.plan import DatasetPlan, Entry, PlanPage, build_plan
from carcrawl.export.splits import SPLITS, normalise_ratios
from carcrawl.filestore import EXTENSIONS, relative_path, relative_paths
from carcrawl.store.dataset import (
    C_ATTRIBUTION,
    C_BODY_TYPE,
    C_CATEGORY,
    C_COLOR,
    C_CREATOR,
    C_LICENSE,
    C_LICENSE_URL,
    C_MAKE,
    C_MODEL,
    C_PAGE,
    C_PAGE_URL,
    C_QUERY,
    C_RANK,
    C_SOURCE,
    C_TITLE,
    C_URL,
    R_BEST,
    R_BYTES,
    R_CLUSTER,
    R_FORMAT,
    R_HEIGHT,
    R_KEEP,
    R_MARK,
    R_MODEL,
    R_SCORE,
    R_SHA,
    R_TOP5,
    R_VREASON,
    R_WIDTH,
    DatasetDB,
    parse_top5,
)

MARKER = ".carcrawl-export.json"
HF_SPLIT = {"train": "train", "val": "validation", "test": "test"}
SHARD_SAMPLES = 1000
SHARD_BYTES = 512 * 1024 * 1024
PARQUET_BATCH = 5_000


def source_path(plan: DatasetPlan, e: Entry) -> Path:
    """The stored file of an entry, from its sha256 and format (never from text in the database)."""
    return plan.out_dir / relative_path(e.record.sha256, e.record.format)


def _source(base: str, e: Entry) -> str:
    """:func:`source_path` as a string under ``base`` (``str(plan.out_dir)``): no Path objects per image."""
    return os.path.join(base, relative_path(e.record.sha256, e.record.format))


def file_name(e: Entry) -> str:
    return f"{e.record.sha256}.{EXTENSIONS.get(e.record.format, 'bin')}"


def _place(src: Path | str, dst: Path | str) -> None:
    try:
        os.link(src, dst)
    except OSError:
        shutil.copyfile(src, dst)


def manifest_row(plan: DatasetPlan, e: Entry) -> dict[str, Any]:
    """Every column we know about one image (JSON-able)."""
    return _row(plan.scheme, e)


def _row(scheme: str, e: Entry) -> dict[str, Any]:
    r, c = e.record, e.candidate
    return {
        "sha256": r.sha256, "label": e.label, "split": e.split, "in_dataset": e.excluded is None,
        "excluded_reason": e.excluded, "scheme": scheme,
        "make": c.make if c else None, "model": c.model if c else None, "color": c.color if c else None,
        "body_type": c.body_type if c else None, "category": c.category if c else None,
        "url": c.url if c else None, "urls": [x.url for x in r.candidates], "source": c.source if c else None,
        "query": c.query if c else None, "search_page": c.page if c else None, "search_rank": c.rank if c else None,
        "page_url": c.page_url if c else None, "title": c.title if c else None,
        "license": c.license if c else None, "license_url": c.license_url if c else None,
        "creator": c.creator if c else None, "attribution": c.attribution if c else None,
        "format": r.format, "bytes": r.bytes, "width": r.width, "height": r.height,
        "keep": r.keep, "verdict_reason": r.verdict_reason, "classifier": r.model,
        "top_labels": [p[0] for p in r.top5], "top_scores": [float(p[1]) for p in r.top5],
        "review_mark": r.mark, "refined_score": r.refined_score,
        "cluster": r.cluster, "near_duplicate_of": r.near_duplicate_of,
        "label_conflict": e.label_conflict, "body_type_vector": e.body_type_vector,
    }


class _Output:
    """Write into ``<to>.tmp-<id>`` and swap it into place at the end. Refuses to replace a
    non-empty folder that is not an earlier carcrawl export."""

    def __init__(self, to: Path):
        self.to = Path(to)
        if self.to.exists() and (not self.to.is_dir() or (any(self.to.iterdir()) and not (self.to / MARKER).exists())):
            raise CarcrawlError(f"{self.to}: exists and is not an earlier carcrawl export; choose another --to")
        self.tmp = self.to.parent / f".{self.to.name}.tmp-{uuid.uuid4().hex[:8]}"

    def __enter__(self) -> Path:
        self.tmp.mkdir(parents=True)
        return self.tmp

    def __exit__(self, exc_type: object, *_: object) -> None:
        if exc_type is not None:
            shutil.rmtree(self.tmp, ignore_errors=True)
            return
        old = None
        if self.to.exists():
            old = self.to.parent / f".{self.to.name}.old-{uuid.uuid4().hex[:8]}"
            os.replace(self.to, old)
        os.replace(self.tmp, self.to)
        if old is not None:
            shutil.rmtree(old, ignore_errors=True)


def _marker(root: Path, plan: DatasetPlan, fmt: str, extra: dict[str, Any]) -> None:
    info = {"format": fmt, "scheme": plan.scheme, "seed": plan.seed, "ratios": plan.ratios,
            "images": plan.exported_count, "classes": plan.classes, "written_at": time.time(), **extra}
    (root / MARKER).write_text(json.dumps(info, indent=1))


def _classes_file(root: Path, plan: DatasetPlan, folders: dict[str, str] | None = None) -> None:
    """``classes.json``: class index -> label (and folder), the same index in every split."""
    classes = plan.classes
    if folders:  # ImageFolder indexes classes by sorted folder name
        classes = sorted(classes, key=lambda c: folders[c])
    rows = [{"index": i, "label": c, **({"folder": folders[c]} if folders else {})} for i, c in enumerate(classes)]
    (root / "classes.json").write_text(json.dumps(rows, indent=1, ensure_ascii=False))


def write_imagefolder(plan: DatasetPlan, to: Path) -> dict[str, Any]:
    folders = folder_names(plan.classes)
    with _Output(to) as root:
        made: dict[tuple[str, str], str] = {}
        base = str(plan.out_dir)
        for split in ("train", "val", "test"):
            (root / split).mkdir()
        for e in plan.iter_exported():
            assert e.label is not None and e.split is not None
            d = made.get((e.split, e.label))
            if d is None:  # checked and made once per class folder, not once per image
                folder = inside(root, e.split, folders[e.label])
                folder.mkdir(parents=True, exist_ok=True)
                d = made[(e.split, e.label)] = str(folder)
            _place(_source(base, e), os.path.join(d, file_name(e)))
        _classes_file(root, plan, folders)
        _marker(root, plan, "imagefolder", {})
    return {"path": str(to)}


HF_KEEP = ("sha256", "label", "make", "model", "color", "body_type", "category", "url", "source", "query",
           "page_url", "title", "license", "license_url", "creator", "attribution", "width", "height",
           "verdict_reason", "top_labels", "top_scores", "review_mark", "refined_score", "cluster",
           "label_conflict")


def write_hf(plan: DatasetPlan, to: Path) -> dict[str, Any]:
    with _Output(to) as root, contextlib.ExitStack() as files:
        meta: dict[str, Any] = {}
        dirs: dict[str, str] = {}
        base = str(plan.out_dir)
        for e in plan.iter_exported():
            assert e.split is not None
            out = meta.get(e.split)
            if out is None:
                d = root / HF_SPLIT[e.split]
                d.mkdir()
                dirs[e.split] = str(d)
                out = meta[e.split] = files.enter_context(open(d / "metadata.jsonl", "w", encoding="utf-8"))
            _place(_source(base, e), os.path.join(dirs[e.split], file_name(e)))
            row = manifest_row(plan, e)
            out.write(json.dumps({"file_name": file_name(e), **{k: _hf_value(k, row[k]) for k in HF_KEEP}},
                                 ensure_ascii=False))
            out.write("\n")
        files.close()
        _classes_file(root, plan)
        _marker(root, plan, "hf", {})
    return {"path": str(to), "splits": sorted(HF_SPLIT[s] for s in meta)}


def _hf_value(key: str, value: Any) -> Any:
    """No nulls: the ``datasets`` loader infers each split's column types from its values, and a
    column that is all-null in one split but text in another fails to load. Missing text is
    ``""``, a missing number ``-1``."""
    if value is not None:
        return value
    if key == "refined_score":
        return -1.0
    return -1 if key in ("width", "height") else ""


def _tar_template() -> bytes:
    """A ustar header with every field our members share (mode 644, owner carcrawl, mtime 0, a
    regular file), the name and size left zero, the checksum field as spaces."""
    head = bytearray(512)
    head[100:108] = b"0000644\x00"
    head[108:116] = head[116:124] = b"0000000\x00"
    head[136:148] = b"00000000000\x00"
    head[148:156] = b" " * 8
    head[156:157] = b"0"
    head[257:265] = b"ustar\x0000"
    head[265:273] = head[297:305] = b"carcrawl"
    return bytes(head)


_TAR_TEMPLATE = _tar_template()
_TAR_TEMPLATE_SUM = sum(_TAR_TEMPLATE)


def _changed(path: str, got: int, size: int) -> CarcrawlError:
    return CarcrawlError(f"{path}: the image changed while the export read it ({got} of {size} bytes);"
                         " nothing was exported, run the export again")


class _Tar:
    """A tar file of plain members (ustar headers, mtime 0, mode 644, owner carcrawl): the bytes
    ``tarfile`` writes for such members, without its per-member cost (a copy of the TarInfo, a
    pax check and a checksum in pure Python per member, two thirds of the WebDataset export).
    Headers and small members gather in one buffer; an image file's bytes go from its file to
    the tar by ``os.copy_file_range`` (in the kernel: never read into Python), where the
    filesystems allow it, else read and written."""

    BLOCK = 512
    RECORD = 20 * 512
    FLUSH = 1 << 20

    def __init__(self, path: Path) -> None:
        self.fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
        self.buf = bytearray()
        self.written = 0
        self.in_kernel = hasattr(os, "copy_file_range")

    def _header(self, name: str, size: int) -> None:
        raw = name.encode("utf-8")
        if len(raw) > 100 or not name.isascii():
            raise ValueError(f"tar member name too long or not ASCII: {name!r}")
        head = bytearray(_TAR_TEMPLATE)
        head[0:len(raw)] = raw
        head[124:136] = length = b"%011o\x00" % size
        # the checksum is the sum of the header's bytes with its own field as spaces
        head[148:156] = b"%06o\x00 " % (_TAR_TEMPLATE_SUM + sum(raw) + sum(length))
        self.buf += head

    def _pad(self, size: int) -> None:
        self.buf += bytes(-size % self.BLOCK)
        self.written += self.BLOCK + size + (-size % self.BLOCK)
        if len(self.buf) >= self.FLUSH:
            self._flush()

    def _flush(self) -> None:
        done = 0
        with memoryview(self.buf) as view:
            while done < len(view):
                done += os.write(self.fd, view[done:])
        self.buf.clear()

    def add(self, name: str, data: bytes) -> None:
        self._header(name, len(data))
        self.buf += data
        self._pad(len(data))

    def add_file(self, name: str, path: str) -> None:
        """A member with the bytes of the file at ``path``."""
        with open(path, "rb") as f:
            size = os.fstat(f.fileno()).st_size
            self._header(name, size)
            if self.in_kernel:
                self._flush()
                try:
                    copied = 0
                    while copied < size:
                        n = os.copy_file_range(f.fileno(), self.fd, size - copied)
                        if n == 0:
                            raise _changed(path, copied, size)
                        copied += n
                    self._pad(size)
                    return
                except OSError as e:  # e.g. filesystems that do not copy between them (EXDEV)
                    if copied or e.errno not in (errno.EXDEV, errno.ENOSYS, errno.EOPNOTSUPP, errno.EINVAL):
                        raise
                    self.in_kernel = False
            data = f.read()
            if len(data) != size:
                raise _changed(path, len(data), size)
            self.buf += data
            self._pad(size)

    def close(self) -> None:
        try:
            end = self.written + 2 * self.BLOCK
            self.buf += bytes(2 * self.BLOCK + (-end % self.RECORD))
            self._flush()
        finally:
            os.close(self.fd)

    def __enter__(self) -> _Tar:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def write_webdataset(plan: DatasetPlan, to: Path, shard_samples: int = SHARD_SAMPLES) -> dict[str, Any]:
    """Each split in its seeded shuffle (training reads shards in order), cut into shards up front
    from the plan's file sizes, the shards dealt round-robin to as many processes as planned."""
    jobs: list[tuple[str, array]] = []
    for split_i, split in enumerate(SPLITS):
        order = plan.indices(split_i)  # sha256 order, 4 bytes per image
        random.Random(f"{plan.seed}:{split}").shuffle(order)
        jobs += [(f"{split}-{i:06d}.tar", members)
                 for i, members in enumerate(_shard_cuts(order, plan.image_bytes, shard_samples))]
    with _Output(to) as root:
        workers = max(1, min(plan.parts, len(jobs)) if forked.available() else 1)
        forked.run_parts(plan.db, [_shard_writer(plan, root, jobs[k::workers]) for k in range(workers)])
        _classes_file(root, plan)
        shards = [name for name, _members in jobs]
        _marker(root, plan, "webdataset", {"shards": shards})
    return {"path": str(to), "shards": shards}


def _shard_cuts(order: array, image_bytes: array, max_samples: int) -> Iterator[array]:
    """``order`` cut into shards of at most ``max_samples`` samples and about ``SHARD_BYTES``
    bytes (a shard closes once it holds either)."""
    start, size = 0, 0
    for k, i in enumerate(order):
        if k > start and (k - start >= max_samples or size >= SHARD_BYTES):
            yield order[start:k]
            start, size = k, 0
        size += image_bytes[i]
    if len(order) > start:
        yield order[start:]


def _shard_writer(plan: DatasetPlan, root: Path, jobs: list[tuple[str, array]]) -> Callable[[DatasetDB], None]:
    def write(db: DatasetDB) -> None:
        plan.db = db  # in a forked child: its own connection (the parent's own part gets the parent's)
        _write_shards(plan, root, jobs)
    return write


def _write_shards(plan: DatasetPlan, root: Path, jobs: list[tuple[str, array]]) -> None:
    index = {c: i for i, c in enumerate(plan.classes)}
    base = str(plan.out_dir)
    for name, members in jobs:
        with _Tar(root / name) as tar:
            for e in plan.entries_at(members):
                key, ext = e.record.sha256, EXTENSIONS.get(e.record.format, "bin")
                meta = json.dumps(manifest_row(plan, e), ensure_ascii=False).encode()
                tar.add_file(f"{key}.{ext}", _source(base, e))
                tar.add(f"{key}.json", meta)
                tar.add(f"{key}.cls", str(index[e.label or ""]).encode())


def _manifest_schema(plan: DatasetPlan) -> Any:
    return _schema(plan.scheme, plan.seed, plan.ratios)


def _schema(scheme: str, seed: int, ratios: tuple[float, ...]) -> Any:
    import pyarrow as pa

    return pa.schema([
        ("sha256", pa.string()), ("path", pa.string()), ("label", pa.string()), ("split", pa.string()),
        ("in_dataset", pa.bool_()), ("excluded_reason", pa.string()), ("scheme", pa.string()),
        ("make", pa.string()), ("model", pa.string()), ("color", pa.string()), ("body_type", pa.string()),
        ("category", pa.string()), ("url", pa.string()), ("urls", pa.list_(pa.string())), ("source", pa.string()),
        ("query", pa.string()), ("search_page", pa.int32()), ("search_rank", pa.int32()), ("page_url", pa.string()),
        ("title", pa.string()), ("license", pa.string()), ("license_url", pa.string()), ("creator", pa.string()),
        ("attribution", pa.string()), ("format", pa.string()), ("bytes", pa.int64()), ("width", pa.int32()),
        ("height", pa.int32()), ("keep", pa.bool_()), ("verdict_reason", pa.string()), ("classifier", pa.string()),
        ("top_labels", pa.list_(pa.string())), ("top_scores", pa.list_(pa.float32())),
        ("review_mark", pa.string()), ("refined_score", pa.float32()), ("cluster", pa.string()),
        ("near_duplicate_of", pa.string()), ("label_conflict", pa.string()),
        ("body_type_vector", pa.map_(pa.string(), pa.float32())),
    ], metadata={"carcrawl.scheme": scheme, "carcrawl.seed": str(seed),
                 "carcrawl.ratios": ",".join(str(r) for r in ratios),
                 "carcrawl.path": "image path relative to the folder holding this file"})


_NO_CANDIDATE = (None,) * 18


def _top5_columns(texts: tuple[str | None, ...]) -> tuple[Any, Any]:
    """top_labels and top_scores of a page's verdict JSON: one ``json.loads`` for the page (the
    texts joined into one array), each text parsed alone only when the page has unreadable ones
    (they mean no prediction, as in :func:`carcrawl.store.dataset.parse_top5`)."""
    import pyarrow as pa

    try:
        parsed = json.loads("[" + ",".join(t or "[]" for t in texts) + "]")
        if len(parsed) != len(texts):
            raise ValueError("a text held more than one value")
        return (pa.array([[p[0] for p in t] for t in parsed], pa.list_(pa.string())),
                pa.array([[p[1] for p in t] for t in parsed], pa.list_(pa.float32())))
    except (ValueError, TypeError, IndexError, KeyError, pa.ArrowException):
        top5 = [parse_top5(t) for t in texts]
        return (pa.array([[p[0] for p in t] for t in top5], pa.list_(pa.string())),
                pa.array([[p[1] for p in t] for t in top5], pa.list_(pa.float32())))


def _page_table(page: PlanPage, schema: Any, scheme: str, prefix: str) -> Any:
    """One page of the manifest as an Arrow table, built column by column from the checkpoint's
    rows (the split columns as the plan's pass left them: :func:`_fill_splits` sets them)."""
    import pyarrow as pa

    rows = page.rows
    n = len(rows)
    r = list(zip(*rows, strict=True))
    c = list(zip(*(x if x is not None else _NO_CANDIDATE for x in page.chosen), strict=True))
    labels, scores = _top5_columns(r[R_TOP5])
    shas, best = r[R_SHA], r[R_BEST]
    vector_items: dict[int, list[tuple[str, float]]] = {}
    vectors = []
    for v in page.vectors:  # a few distinct dicts per crawl (one per make and model)
        items = vector_items.get(id(v))
        if items is None:
            items = vector_items[id(v)] = list(v.items())
        vectors.append(items)
    cols = {
        "sha256": shas,
        "path": relative_paths(shas, r[R_FORMAT], prefix),
        "label": page.labels, "split": [None] * n, "in_dataset": [x is None for x in page.excluded],
        "excluded_reason": page.excluded, "scheme": [scheme] * n,
        "make": c[C_MAKE], "model": c[C_MODEL], "color": c[C_COLOR], "body_type": c[C_BODY_TYPE],
        "category": c[C_CATEGORY], "url": c[C_URL], "urls": [[x[C_URL] for x in cs] for cs in page.cands],
        "source": c[C_SOURCE], "query": c[C_QUERY], "search_page": c[C_PAGE], "search_rank": c[C_RANK],
        "page_url": c[C_PAGE_URL], "title": c[C_TITLE], "license": c[C_LICENSE], "license_url": c[C_LICENSE_URL],
        "creator": c[C_CREATOR], "attribution": c[C_ATTRIBUTION], "format": r[R_FORMAT], "bytes": r[R_BYTES],
        "width": r[R_WIDTH], "height": r[R_HEIGHT],
        "keep": pa.array(r[R_KEEP], pa.int64()).cast(pa.bool_()), "verdict_reason": r[R_VREASON],
        "classifier": r[R_MODEL], "top_labels": labels, "top_scores": scores, "review_mark": r[R_MARK],
        "refined_score": r[R_SCORE], "cluster": r[R_CLUSTER],
        "near_duplicate_of": [b if b and b != sha else None for sha, b in zip(shas, best, strict=True)],
        "label_conflict": page.conflicts, "body_type_vector": vectors,
    }
    return pa.Table.from_arrays([pa.array(cols[f.name], f.type) if not isinstance(cols[f.name], pa.Array)
                                 else cols[f.name] for f in schema], schema=schema)


def _fill_splits(plan: DatasetPlan, table: Any, start: int) -> Any:
    """``table`` (rows ``start``... of the plan, from :func:`_page_table`) with the split,
    in_dataset and excluded_reason columns the whole plan decided (numpy and Arrow, no row loop
    except for the few images label selection or ``min_count`` dropped)."""
    import numpy as np
    import pyarrow as pa
    import pyarrow.compute as pc

    n = table.num_rows
    split = plan.split_array()[start:start + n]
    names = pa.array(["train", "val", "test", None], pa.string())
    reason = table.column("excluded_reason").combine_chunks()
    dropped = np.flatnonzero((split < 0) & np.asarray(reason.is_null()))
    if dropped.size:
        fixed = reason.to_pylist()
        for k in dropped.tolist():
            fixed[k] = plan.dropped_reason(start + k)
        reason = pa.array(fixed, pa.string())
    schema = table.schema
    table = table.set_column(schema.get_field_index("split"), schema.field("split"),
                             pc.take(names, pa.array(np.where(split < 0, 3, split).astype(np.int8))))
    table = table.set_column(schema.get_field_index("in_dataset"), schema.field("in_dataset"),
                             pa.array(split >= 0, pa.bool_()))
    return table.set_column(schema.get_field_index("excluded_reason"), schema.field("excluded_reason"), reason)


class _Batches:
    """Arrow tables gathered into row groups of about ``PARQUET_BATCH`` rows."""

    def __init__(self, writer: Any) -> None:
        self.writer, self.tables, self.rows = writer, [], 0

    def add(self, table: Any) -> None:
        self.tables.append(table)
        self.rows += table.num_rows
        if self.rows >= PARQUET_BATCH:
            self.flush()

    def flush(self) -> None:
        import pyarrow as pa

        if self.tables:
            self.writer.write_table(pa.concat_tables(self.tables))
        self.tables, self.rows = [], 0


def _write_manifest(plan: DatasetPlan, path: Path, relative_to: Path) -> None:
    """Every stored image as a row, written column-wise ``PARQUET_BATCH`` rows at a time (one row
    group each), so the manifest's memory is one batch whatever the crawl's size."""
    import pyarrow.parquet as pq

    schema = _manifest_schema(plan)
    # images/ab/cd/<sha>.<ext> relative to the manifest: one relpath for the crawl, not one per image
    prefix = os.path.relpath(plan.out_dir.resolve(), relative_to.resolve())
    with pq.ParquetWriter(path, schema, compression="zstd") as writer:
        batches = _Batches(writer)
        for start, page in plan.iter_pages():
            batches.add(_fill_splits(plan, _page_table(page, schema, plan.scheme, prefix), start))
        batches.flush()


def write_parquet(plan: DatasetPlan, to: Path) -> dict[str, Any]:
    single = to.suffix == ".parquet"
    if single:
        to.parent.mkdir(parents=True, exist_ok=True)
        tmp = to.parent / f".{to.name}.tmp-{uuid.uuid4().hex[:8]}"
        try:
            _write_manifest(plan, tmp, to.parent)
        except BaseException:
            tmp.unlink(missing_ok=True)
            raise
        os.replace(tmp, to)
        return {"path": str(to)}
    to.parent.mkdir(parents=True, exist_ok=True)
    with _Output(to) as root:
        # paths are relative to the final folder, which sits beside the temporary one
        _write_manifest(plan, root / "manifest.parquet", to)
        _marker(root, plan, "parquet", {})
    return {"path": str(to / "manifest.parquet")}


class _PassOneFile:
    """A :class:`carcrawl.export.plan.PageSink` writing one part of the plan's pass to its own
    temporary Arrow IPC file (split and label-selection columns still open), in the process that
    reads that part. IPC, LZ4-framed: read back once, it costs a fraction of a Parquet encoding."""

    def __init__(self, path: Path, scheme: str, seed: int, ratios: tuple[float, ...], prefix: str) -> None:
        self.path, self.scheme, self.seed, self.ratios, self.prefix = path, scheme, seed, ratios, prefix
        self.writer: Any = None
        self.schema: Any = None

    def add(self, page: PlanPage) -> None:
        import pyarrow as pa

        if self.writer is None:  # build_plan has checked the options by now
            self.schema = _schema(self.scheme, self.seed, normalise_ratios(self.ratios))
            self.writer = pa.ipc.new_file(self.path, self.schema,
                                          options=pa.ipc.IpcWriteOptions(compression="lz4"))
        self.writer.write_table(_page_table(page, self.schema, self.scheme, self.prefix))

    def close(self) -> None:
        if self.writer is not None:
            self.writer.close()


def export_parquet(db: DatasetDB, to: Path, **plan_options: Any) -> tuple[DatasetPlan, dict[str, Any]]:
    """Plan and write the manifest reading the checkpoint once: each part of the plan's pass
    writes its rows to a temporary file (:class:`_PassOneFile`), which are then copied
    in order, batch by batch, with the split columns filled in from the plan (Arrow work, no
    records). Same file as :func:`write_parquet` after :func:`build_plan`."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    scheme = plan_options.get("scheme", "make_model")
    seed, ratios = plan_options.get("seed", 0), plan_options.get("ratios", (0.7, 0.15, 0.15))
    single = to.suffix == ".parquet"
    final_dir = to.parent if single else to
    to.parent.mkdir(parents=True, exist_ok=True)
    stem = to.parent / f".{to.name}.pass1-{uuid.uuid4().hex[:8]}"
    prefix = os.path.relpath(db.out_dir.resolve(), final_dir.resolve())

    def part_file(k: int) -> Path:
        return stem.with_name(f"{stem.name}-{k}.arrow")

    try:
        plan = build_plan(db, page_sink=lambda k: _PassOneFile(part_file(k), scheme, seed, ratios, prefix),
                          **plan_options)
        schema = _schema(scheme, plan.seed, plan.ratios)

        def fill(path: Path) -> None:
            i = 0
            with pq.ParquetWriter(path, schema, compression="zstd") as out:
                batches = _Batches(out)
                for k in range(plan.parts):
                    if part_file(k).exists():  # a part without images wrote nothing
                        with pa.ipc.open_file(pa.memory_map(str(part_file(k)))) as part:
                            for b in range(part.num_record_batches):
                                batch = part.get_batch(b)
                                batches.add(_fill_splits(plan, pa.Table.from_batches([batch], schema=schema), i))
                                i += batch.num_rows
                batches.flush()

        if single:
            tmp = to.parent / f".{to.name}.tmp-{uuid.uuid4().hex[:8]}"
            try:
                fill(tmp)
            except BaseException:
                tmp.unlink(missing_ok=True)
                raise
            os.replace(tmp, to)
            return plan, {"path": str(to)}
        with _Output(to) as root:
            fill(root / "manifest.parquet")
            _marker(root, plan, "parquet", {})
        return plan, {"path": str(to / "manifest.parquet")}
    finally:
        for part in stem.parent.glob(f"{stem.name}-*.arrow"):
            part.unlink(missing_ok=True)


WRITERS: dict[str, Callable[[DatasetPlan, Path], dict[str, Any]]] = {
    "imagefolder": write_imagefolder,
    "hf": write_hf,
    "webdataset": write_webdataset,
    "parquet": write_parquet,
}
