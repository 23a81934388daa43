"""The dataset side as it was before streaming (commit 62c58e2), kept only as the oracle of
tests/test_export_streamed.py: a streamed export must write the same dataset as this code."""

from __future__ import annotations

import hashlib
import io
import json
import os
import random
import shutil
import tarfile
import time
import uuid
from collections import Counter
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from carcrawl.errors import CarcrawlError, ConfigError
from carcrawl.export.dedup import SOURCE_RANK
from carcrawl.export.labels import (
    SCHEMES,
    apply_merge,
    bodytype_vectors,
    folder_names,
    inside,
    label_name,
    label_parts,
    read_merge_map,
)
from carcrawl.filestore import EXTENSIONS, relative_path
from carcrawl.store.dataset import CandidateInfo, DatasetDB, ImageRecord

SPLITS = ("train", "val", "test")


@dataclass(frozen=True, slots=True)
class SplitItem:
    sha256: str
    label: str
    group_keys: tuple[str, ...]  # page URLs, cluster id ... (the sha256 itself is always one)


def normalise_ratios(ratios: Iterable[float]) -> tuple[float, float, float]:
    r = tuple(float(x) for x in ratios)
    if len(r) != 3 or any(x < 0 or x != x for x in r) or sum(r) <= 0:
        raise ValueError(f"ratios must be three non-negative numbers with a positive sum, got {r}")
    total = sum(r)
    return (r[0] / total, r[1] / total, r[2] / total)


def groups_of(items: list[SplitItem]) -> list[list[int]]:
    """Connected components of items that share any group key (union-find over keys)."""
    parent = list(range(len(items)))

    def find(x: int) -> int:
        while parent[x] != x:
            parent[x] = parent[parent[x]]
            x = parent[x]
        return x

    owner: dict[str, int] = {}
    for i, it in enumerate(items):
        for key in (f"sha:{it.sha256}", *it.group_keys):
            j = owner.setdefault(key, i)
            if j != i:
                a, b = find(i), find(j)
                if a != b:
                    parent[max(a, b)] = min(a, b)
    comps: dict[int, list[int]] = {}
    for i in range(len(items)):
        comps.setdefault(find(i), []).append(i)
    return list(comps.values())


def assign_splits(
    items: list[SplitItem], ratios: Iterable[float], seed: int, previous: dict[str, str] | None = None
) -> dict[str, str]:
    """sha256 -> ``train`` / ``val`` / ``test``. Deterministic for the same items, ratios and seed."""
    shares = normalise_ratios(ratios)
    previous = previous or {}
    groups = groups_of(items)
    totals: dict[str, int] = {}
    for it in items:
        totals[it.label] = totals.get(it.label, 0) + 1
    counts: dict[str, list[int]] = {label: [0, 0, 0] for label in totals}

    def majority_label(g: list[int]) -> str:
        seen: dict[str, int] = {}
        for i in g:
            seen[items[i].label] = seen.get(items[i].label, 0) + 1
        return min(seen, key=lambda k: (-seen[k], k))

    def order_key(g: list[int]) -> tuple[int, str]:
        first = min(items[i].sha256 for i in g)
        return (-len(g), hashlib.sha256(f"{seed}:{first}".encode()).hexdigest())

    out: dict[str, str] = {}
    fresh: list[list[int]] = []
    for g in groups:
        before = [previous[items[i].sha256] for i in g if previous.get(items[i].sha256) in SPLITS]
        if not before:
            fresh.append(g)
            continue
        # a group that grew across earlier splits keeps the most held-out one: no test image moves to train
        split = max(before, key=SPLITS.index)
        for i in g:
            out[items[i].sha256] = split
            counts[items[i].label][SPLITS.index(split)] += 1
    for g in sorted(fresh, key=order_key):
        label = majority_label(g)
        c, n = counts[label], totals[label]
        deficits = [shares[s] * n - c[s] for s in range(3)]
        # ties (small classes: val and test both short by the same amount) go a seeded way per label
        tie = hashlib.sha256(f"{seed}:{label}".encode()).digest()
        split_i = max(range(3), key=lambda s: (round(deficits[s], 9) if shares[s] > 0 else float("-inf"), tie[s]))
        for i in g:
            out[items[i].sha256] = SPLITS[split_i]
            counts[items[i].label][split_i] += 1
    return out








REFINED_THRESHOLD = 0.5


@dataclass(slots=True)
class Entry:
    """One stored image and what the plan decided about it."""

    record: ImageRecord
    candidate: CandidateInfo | None
    label: str | None = None
    split: str | None = None
    excluded: str | None = None  # why it is not in the export (None = exported)
    label_conflict: str | None = None
    body_type_vector: dict[str, float] = field(default_factory=dict)


@dataclass(slots=True)
class DatasetPlan:
    scheme: str
    seed: int
    ratios: tuple[float, float, float]
    entries: list[Entry]
    out_dir: Path  # the crawl's output folder (where images/ lives)

    @property
    def exported(self) -> list[Entry]:
        return [e for e in self.entries if e.excluded is None]

    @property
    def classes(self) -> list[str]:
        return sorted({e.label for e in self.exported if e.label})

    def split_counts(self) -> dict[str, dict[str, int]]:
        out: dict[str, dict[str, int]] = {}
        for e in self.exported:
            assert e.label is not None and e.split is not None
            out.setdefault(e.label, {"train": 0, "val": 0, "test": 0})[e.split] += 1
        return dict(sorted(out.items()))

    def excluded_counts(self) -> dict[str, int]:
        c = Counter(_reason_kind(e.excluded) for e in self.entries if e.excluded)
        return dict(c.most_common())


def _reason_kind(reason: str | None) -> str:
    if reason and reason.startswith("near_duplicate_of:"):
        return "near_duplicate"
    return reason or ""


def _candidate_key(c: CandidateInfo, votes: Counter[tuple[str, ...]]) -> tuple[int, int, int, int, int]:
    labels = (c.make, c.model, c.color, c.body_type, c.category)
    return (-votes[labels], 0 if c.license else 1, SOURCE_RANK.get(c.source, 9), c.rank or 0, c.id)


def choose_candidate(rec: ImageRecord) -> tuple[CandidateInfo | None, str | None]:
    """The candidate whose labels the image takes, and the other labels seen (a conflict) if any."""
    if not rec.candidates:
        return None, None
    votes: Counter[tuple[str, ...]] = Counter((c.make, c.model, c.color, c.body_type, c.category) for c in rec.candidates)
    best = min(rec.candidates, key=lambda c: _candidate_key(c, votes))
    chosen = (best.make, best.model, best.color, best.body_type, best.category)
    others = sorted({"/".join(x for x in labels if x) for labels in votes if labels != chosen})
    return best, ("; ".join(o for o in others if o) or None) if others else None


def decide_inclusion(rec: ImageRecord, refined: bool) -> str | None:
    """None when the image belongs in the dataset, else the reason it does not."""
    if rec.mark == "wrong":
        return "reviewer:wrong"
    if rec.near_duplicate_of:
        return f"near_duplicate_of:{rec.near_duplicate_of}"
    if rec.mark == "right":
        return None
    if refined and rec.refined_score is not None:
        return None if rec.refined_score >= REFINED_THRESHOLD else "refined:low_score"
    if rec.state != "done":
        return rec.verdict_reason or rec.reason or "rejected"
    return None


def build_plan(
    db: DatasetDB,
    *,
    scheme: str = "make_model",
    labels: list[str] | None = None,
    ratios: tuple[float, ...] = (0.7, 0.15, 0.15),
    seed: int = 0,
    min_count: int = 1,
    merge_map: Path | dict[str, str | None] | None = None,
    refined: bool = False,
    remember_splits: bool = True,
) -> DatasetPlan:
    if scheme not in SCHEMES:
        raise ConfigError(f"--scheme: expected one of {', '.join(SCHEMES)}, got {scheme!r}")
    try:
        shares = normalise_ratios(ratios)
    except ValueError as e:
        raise ConfigError(f"--ratios: {e}") from None
    if min_count < 1:
        raise ConfigError(f"--min-count: expected 1 or more, got {min_count}")
    merge = read_merge_map(merge_map) if isinstance(merge_map, Path) else dict(merge_map or {})
    vectors = bodytype_vectors(db.bodytype_hits())

    entries: list[Entry] = []
    for rec in old_records(db):
        cand, conflict = choose_candidate(rec)
        e = Entry(rec, cand, label_conflict=conflict)
        entries.append(e)
        if cand is not None:
            e.body_type_vector = vectors.get((cand.make, cand.model), {})
        e.excluded = decide_inclusion(rec, refined)
        if e.excluded:
            continue
        if cand is None:
            e.excluded = "no_label:no_url"
            continue
        body_type = cand.body_type or (max(e.body_type_vector, key=lambda k: (e.body_type_vector[k], k))
                                       if e.body_type_vector else "")
        parts = label_parts(scheme, cand.make, cand.model, cand.color, body_type, cand.category)
        if not parts:
            e.excluded = f"no_label:{scheme}"
            continue
        e.label = apply_merge(label_name(parts), merge)
        if e.label is None:
            e.excluded = "merge_map:dropped"

    if labels:
        wanted = {x.strip() for x in labels if x.strip()}
        present = {e.label for e in entries if e.excluded is None and e.label}
        unknown = sorted(wanted - present)
        if unknown:
            sample = ", ".join(sorted(present)[:12]) or "none"
            raise ConfigError(f"--labels: no exported images have the label(s) {', '.join(unknown)}; "
                              f"labels under scheme {scheme}: {sample}{' ...' if len(present) > 12 else ''}")
        for e in entries:
            if e.excluded is None and e.label not in wanted:
                e.excluded = "label_not_selected"

    sizes = Counter(e.label for e in entries if e.excluded is None)
    for e in entries:
        if e.excluded is None and sizes[e.label] < min_count:
            e.excluded = "below_min_count"

    chosen = [e for e in entries if e.excluded is None]
    items = []
    for e in chosen:
        assert e.label is not None
        keys = [f"page:{c.page_url}" for c in e.record.candidates if c.page_url]
        if e.record.cluster:
            keys.append(f"cluster:{e.record.cluster}")
        items.append(SplitItem(e.record.sha256, e.label, tuple(keys)))
    plan_key = f"{scheme}|seed={seed}|ratios={','.join(f'{r:.4f}' for r in shares)}"
    previous = db.previous_splits(plan_key)
    assignment = assign_splits(items, shares, seed, previous)
    for e in chosen:
        e.split = assignment[e.record.sha256]
    if remember_splits and assignment:
        db.save_splits(plan_key, assignment)
    return DatasetPlan(scheme, seed, shares, entries, db.out_dir)



def old_records(db: DatasetDB) -> list[ImageRecord]:
    """Every stored image with its verdict, marks, scores, cluster and the URLs that gave it."""
    recs: dict[str, ImageRecord] = {}
    for r in db.con.execute(
        "SELECT i.sha256, i.path, i.format, i.bytes, coalesce(i.width, h.width), coalesce(i.height, h.height),"
        " i.state, i.reason, v.keep, v.reason, v.top5, v.model, rv.mark, f.score, n.cluster, n.best"
        " FROM images i LEFT JOIN verdicts v ON v.sha256 = i.sha256"
        " LEFT JOIN image_hashes h ON h.sha256 = i.sha256 LEFT JOIN reviews rv ON rv.sha256 = i.sha256"
        " LEFT JOIN refined f ON f.sha256 = i.sha256 LEFT JOIN near_duplicates n ON n.sha256 = i.sha256"
        " WHERE i.state IN ('done', 'rejected') ORDER BY i.sha256"
    ):
        top5: list[tuple[str, float]] = []
        if r[10]:
            try:
                top5 = [(str(p[0]), float(p[1])) for p in json.loads(r[10])]
            except (ValueError, TypeError, IndexError):
                top5 = []
        recs[r[0]] = ImageRecord(
            sha256=r[0], path=r[1], format=r[2], bytes=r[3], width=r[4], height=r[5], state=r[6], reason=r[7],
            keep=None if r[8] is None else bool(r[8]), verdict_reason=r[9], top5=top5, model=r[11], mark=r[12],
            refined_score=r[13], cluster=r[14], best=r[15],
        )
    for r in db.con.execute(
        "SELECT c.sha256, c.id, c.url, c.source, q.text, c.page, c.rank, c.title, c.page_url, c.license,"
        " c.license_url, c.creator, c.attribution, c.make, c.model, c.color, c.body_type, c.category"
        " FROM candidates c LEFT JOIN queries q ON q.id = c.query_id"
        " WHERE c.state = 'done' AND c.sha256 IS NOT NULL ORDER BY c.sha256, c.id"
    ):
        rec = recs.get(r[0])
        if rec is not None:
            rec.candidates.append(CandidateInfo(*r[1:]))
    return list(recs.values())







MARKER = ".carcrawl-export.json"
HF_SPLIT = {"train": "train", "val": "validation", "test": "test"}
SHARD_SAMPLES = 1000
SHARD_BYTES = 512 * 1024 * 1024


def source_path(plan: DatasetPlan, e: Entry) -> Path:
    """The stored file of an entry, from its sha256 and format (never from text in the database)."""
    return plan.out_dir / relative_path(e.record.sha256, e.record.format)


def file_name(e: Entry) -> str:
    return f"{e.record.sha256}.{EXTENSIONS.get(e.record.format, 'bin')}"


def _place(src: Path, dst: Path) -> None:
    try:
        os.link(src, dst)
    except OSError:
        shutil.copyfile(src, dst)


def manifest_row(plan: DatasetPlan, e: Entry) -> dict[str, Any]:
    """Every column we know about one image (JSON-able)."""
    r, c = e.record, e.candidate
    return {
        "sha256": r.sha256, "label": e.label, "split": e.split, "in_dataset": e.excluded is None,
        "excluded_reason": e.excluded, "scheme": plan.scheme,
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
            "images": len(plan.exported), "classes": plan.classes, "written_at": time.time(), **extra}
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
        made: set[Path] = set()
        for split in ("train", "val", "test"):
            (root / split).mkdir()
        for e in plan.exported:
            assert e.label is not None and e.split is not None
            d = inside(root, e.split, folders[e.label])
            if d not in made:
                d.mkdir(parents=True, exist_ok=True)
                made.add(d)
            _place(source_path(plan, e), d / file_name(e))
        _classes_file(root, plan, folders)
        _marker(root, plan, "imagefolder", {})
    return {"path": str(to)}


def write_hf(plan: DatasetPlan, to: Path) -> dict[str, Any]:
    keep = ("sha256", "label", "make", "model", "color", "body_type", "category", "url", "source", "query",
            "page_url", "title", "license", "license_url", "creator", "attribution", "width", "height",
            "verdict_reason", "top_labels", "top_scores", "review_mark", "refined_score", "cluster",
            "label_conflict")
    with _Output(to) as root:
        by_split: dict[str, list[Entry]] = {}
        for e in plan.exported:
            assert e.split is not None
            by_split.setdefault(e.split, []).append(e)
        for split, entries in by_split.items():
            d = root / HF_SPLIT[split]
            d.mkdir()
            with open(d / "metadata.jsonl", "w", encoding="utf-8") as meta:
                for e in entries:
                    _place(source_path(plan, e), d / file_name(e))
                    row = manifest_row(plan, e)
                    meta.write(json.dumps({"file_name": file_name(e), **{k: _hf_value(k, row[k]) for k in keep}},
                                          ensure_ascii=False))
                    meta.write("\n")
        _classes_file(root, plan)
        _marker(root, plan, "hf", {})
    return {"path": str(to), "splits": sorted(HF_SPLIT[s] for s in by_split)}


def _hf_value(key: str, value: Any) -> Any:
    """No nulls: the ``datasets`` loader infers each split's column types from its values, and a
    column that is all-null in one split but text in another fails to load. Missing text is
    ``""``, a missing number ``-1``."""
    if value is not None:
        return value
    if key == "refined_score":
        return -1.0
    return -1 if key in ("width", "height") else ""


def _tarinfo(name: str, size: int) -> tarfile.TarInfo:
    info = tarfile.TarInfo(name)
    info.size = size
    info.mtime = 0
    info.mode = 0o644
    info.uname = info.gname = "carcrawl"
    return info


def write_webdataset(plan: DatasetPlan, to: Path, shard_samples: int = SHARD_SAMPLES) -> dict[str, Any]:
    index = {c: i for i, c in enumerate(plan.classes)}
    shards: list[str] = []
    with _Output(to) as root:
        for split in ("train", "val", "test"):
            entries = sorted((e for e in plan.exported if e.split == split), key=lambda e: e.record.sha256)
            random.Random(f"{plan.seed}:{split}").shuffle(entries)  # training reads shards in order
            for i, shard in enumerate(_shards(entries, shard_samples)):
                name = f"{split}-{i:06d}.tar"
                shards.append(name)
                with tarfile.open(root / name, "w") as tar:
                    for e in shard:
                        key, ext = e.record.sha256, EXTENSIONS.get(e.record.format, "bin")
                        meta = json.dumps(manifest_row(plan, e), ensure_ascii=False).encode()
                        cls = str(index[e.label or ""]).encode()
                        body = source_path(plan, e).read_bytes()
                        for member, data in ((f"{key}.{ext}", body), (f"{key}.json", meta), (f"{key}.cls", cls)):
                            tar.addfile(_tarinfo(member, len(data)), io.BytesIO(data))
        _classes_file(root, plan)
        _marker(root, plan, "webdataset", {"shards": shards})
    return {"path": str(to), "shards": shards}


def _shards(entries: list[Entry], max_samples: int) -> list[list[Entry]]:
    """Cut a split into shards of at most ``max_samples`` samples and about ``SHARD_BYTES`` bytes."""
    out: list[list[Entry]] = []
    size = 0
    for e in entries:
        if not out or len(out[-1]) >= max_samples or size >= SHARD_BYTES:
            out.append([])
            size = 0
        out[-1].append(e)
        size += e.record.bytes
    return out


def write_parquet(plan: DatasetPlan, to: Path) -> dict[str, Any]:
    import pyarrow as pa
    import pyarrow.parquet as pq

    single = to.suffix == ".parquet"
    rows = []
    for e in plan.entries:
        row = manifest_row(plan, e)
        row["path"] = os.path.relpath(source_path(plan, e).resolve(), (to.parent if single else to).resolve())
        row["body_type_vector"] = list(row["body_type_vector"].items())
        rows.append(row)
    schema = pa.schema([
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
    ], metadata={"carcrawl.scheme": plan.scheme, "carcrawl.seed": str(plan.seed),
                 "carcrawl.ratios": ",".join(str(r) for r in plan.ratios),
                 "carcrawl.path": "image path relative to the folder holding this file"})
    table = pa.Table.from_pylist(rows, schema=schema)
    if single:
        to.parent.mkdir(parents=True, exist_ok=True)
        tmp = to.parent / f".{to.name}.tmp-{uuid.uuid4().hex[:8]}"
        pq.write_table(table, tmp, compression="zstd")
        os.replace(tmp, to)
        return {"path": str(to)}
    to.parent.mkdir(parents=True, exist_ok=True)
    with _Output(to) as root:
        # paths were made relative to the final folder, which sits beside the temporary one
        pq.write_table(table, root / "manifest.parquet", compression="zstd")
        _marker(root, plan, "parquet", {})
    return {"path": str(to / "manifest.parquet")}


WRITERS: dict[str, Callable[[DatasetPlan, Path], dict[str, Any]]] = {
    "imagefolder": write_imagefolder,
    "hf": write_hf,
    "webdataset": write_webdataset,
    "parquet": write_parquet,
}
