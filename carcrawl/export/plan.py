"""Which images go into an export, under which label, in which split, and why the others don't.

The order of decisions, the same for every format:

1. a reviewer's ``wrong`` mark excludes, whatever the model said;
2. a near-duplicate of a kept image is excluded (``near_duplicate_of:<sha>``);
3. a reviewer's ``right`` mark includes, whatever the model said;
4. with ``refined=True`` the probe's score decides (``carcrawl refine``), else the classifier's verdict;
5. the label comes from the URLs that delivered the image: majority vote, then the best source;
   an image with conflicting labels is still exported, and the conflict is recorded;
6. the merge map renames or drops classes, ``labels`` selects some, ``min_count`` drops small ones.

The plan streams: :func:`build_plan` reads the checkpoint once in pages (decisions 1-5 per image),
in ranges of sha256 read by one forked process per core for a large checkpoint (the pass is
CPU-bound Python: :mod:`carcrawl.export.forked`), and keeps only what the splits need
(:class:`carcrawl.export.splits.Splitter`, ~50 bytes per image) and per-class counts; :meth:`DatasetPlan.iter_entries` reads it again for the writers,
one page at a time, so no writer holds more than a page (or a shard) of images.
"""

from __future__ import annotations

from array import array
from collections import Counter
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

import numpy as np

from carcrawl.errors import ConfigError
from carcrawl.export import forked
from carcrawl.export.dedup import SOURCE_RANK
from carcrawl.export.labels import (
    SCHEMES,
    apply_merge,
    bodytype_vectors,
    label_name,
    label_parts,
    read_merge_map,
)
from carcrawl.export.splits import SPLITS, Splitter, normalise_ratios
from carcrawl.store.dataset import (
    AFTER_EVERY_SHA,
    C_CATEGORY,
    C_ID,
    C_LICENSE,
    C_MAKE,
    C_PAGE_URL,
    C_RANK,
    C_SOURCE,
    R_BEST,
    R_BYTES,
    R_CLUSTER,
    R_KEEP,
    R_MARK,
    R_REASON,
    R_SCORE,
    R_SHA,
    R_STATE,
    R_VREASON,
    CandidateInfo,
    DatasetDB,
    ImageRecord,
    group_candidates,
    records_of,
)

REFINED_THRESHOLD = 0.5
#: images from which the plan's pass runs in one process per core unless told how many
PARALLEL_FROM = 20_000
#: bits of :attr:`DatasetPlan.flags` (what the report's gallery needs, one byte per image)
REJECTED_BY_MODEL = 1
MARKED_WRONG = 2


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


def _reason_kind(reason: str | None) -> str:
    if reason and reason.startswith("near_duplicate_of:"):
        return "near_duplicate"
    return reason or ""


Row = tuple[Any, ...]


class _Decider:
    """Decisions 1-6 of the module docstring on the checkpoint's plain rows (``R_*`` / ``C_*``
    columns), for the plan's pass, the Parquet manifest and the writers' entries alike: per image
    only the inclusion checks and the candidate choice run; the label of a (make, model, colour, body type, category) tuple is worked
    out once and remembered (a crawl has a few thousand such tuples, not one per image)."""

    def __init__(self, scheme: str, merge: dict[str, str | None], refined: bool,
                 vectors: dict[tuple[str, str], dict[str, float]]) -> None:
        self.scheme, self.merge, self.refined, self.vectors = scheme, merge, refined, vectors
        self._labels: dict[tuple[str, ...], tuple[str | None, str | None, dict[str, float]]] = {}

    def label(self, c: Row) -> tuple[str | None, str | None, dict[str, float]]:
        """(label, why there is none, body-type vector) of a candidate row's labels."""
        key = c[C_MAKE:C_CATEGORY + 1]
        hit = self._labels.get(key)
        if hit is None:
            make, model, color, body_type, category = key
            vector = self.vectors.get((make, model), {})
            body_type = body_type or (max(vector, key=lambda k: (vector[k], k)) if vector else "")
            parts = label_parts(self.scheme, make, model, color, body_type, category)
            if not parts:
                hit = (None, f"no_label:{self.scheme}", vector)
            else:
                label = apply_merge(label_name(parts), self.merge)
                hit = (label, None if label is not None else "merge_map:dropped", vector)
            self._labels[key] = hit
        return hit

    def page(self, rows: list[Row], cands: list[list[Row]]) -> PlanPage:
        """Decide one page of :meth:`DatasetDB.iter_record_pages` (candidates grouped per image)."""
        refined = self.refined
        chosen: list[Row | None] = []
        labels: list[str | None] = []
        excluded: list[str | None] = []
        conflicts: list[str | None] = []
        vectors: list[dict[str, float]] = []
        empty: dict[str, float] = {}
        for r, cs in zip(rows, cands, strict=True):
            conflict = None
            if not cs:
                cand = None
            elif len(cs) == 1:  # most images: one URL, nothing to vote on
                cand = cs[0]
            else:
                cand, conflict = _choose_row(cs)
            mark, best = r[R_MARK], r[R_BEST]
            if mark == "wrong":
                why: str | None = "reviewer:wrong"
            elif best and best != r[R_SHA]:
                why = f"near_duplicate_of:{best}"
            elif mark == "right":
                why = None
            elif refined and r[R_SCORE] is not None:
                why = None if r[R_SCORE] >= REFINED_THRESHOLD else "refined:low_score"
            elif r[R_STATE] != "done":
                why = r[R_VREASON] or r[R_REASON] or "rejected"
            else:
                why = None
            label = None
            if cand is None:
                vector = empty
                if why is None:
                    why = "no_label:no_url"
            else:
                name, no_label, vector = self.label(cand)
                if why is None:
                    label, why = name, no_label
            chosen.append(cand)
            labels.append(label)
            excluded.append(why)
            conflicts.append(conflict)
            vectors.append(vector)
        return PlanPage(rows, cands, chosen, labels, excluded, conflicts, vectors)


def _choose_row(cs: list[Row]) -> tuple[Row, str | None]:
    """The candidate whose labels an image with two or more URLs takes (majority vote, then a
    licence, the cleanest source, the best rank, the first found), and the other labels seen."""
    votes: Counter[tuple[str, ...]] = Counter(c[C_MAKE:C_CATEGORY + 1] for c in cs)
    best = min(cs, key=lambda c: (-votes[c[C_MAKE:C_CATEGORY + 1]], 0 if c[C_LICENSE] else 1,
                                  SOURCE_RANK.get(c[C_SOURCE], 9), c[C_RANK] or 0, c[C_ID]))
    chosen = best[C_MAKE:C_CATEGORY + 1]
    others = sorted({"/".join(x for x in labels if x) for labels in votes if labels != chosen})
    return best, ("; ".join(o for o in others if o) or None) if others else None


@dataclass(slots=True)
class PlanPage:
    """One page of the plan's pass: the checkpoint's rows and, per image, what was decided (before
    label selection, ``min_count`` and splits). ``label`` is None exactly when ``excluded`` says why."""

    rows: list[Row]
    cands: list[list[Row]]  # every candidate row of each image, in id order
    chosen: list[Row | None]  # the candidate whose labels the image takes
    labels: list[str | None]
    excluded: list[str | None]
    conflicts: list[str | None]
    vectors: list[dict[str, float]]


class DatasetPlan:
    """What an export writes: counts up front, the images themselves streamed from the checkpoint
    (the plan needs its :class:`DatasetDB` open while a writer reads it)."""

    def __init__(self, db: DatasetDB, scheme: str, seed: int, ratios: tuple[float, float, float],
                 merge: dict[str, str | None], refined: bool, vectors: dict[tuple[str, str], dict[str, float]],
                 label_names: list[str], splitter: Splitter, split: array, dropped: dict[int, str],
                 excluded: Counter[str], conflicts: Counter[int]) -> None:
        self.db = db
        self.scheme = scheme
        self.seed = seed
        self.ratios = ratios
        self.out_dir: Path = db.out_dir  # the crawl's output folder (where images/ lives)
        self._merge, self._refined, self._vectors = merge, refined, vectors
        self._decider = _Decider(scheme, merge, refined, vectors)
        self._names, self._splitter, self._split, self._dropped = label_names, splitter, split, dropped
        per_class: dict[str, dict[str, int]] = {}
        s_arr = np.frombuffer(split, dtype=np.int8)
        exported = s_arr >= 0
        if exported.any():
            lab = splitter.labels()[exported].astype(np.int64)
            counts = np.bincount(lab * 3 + s_arr[exported], minlength=3 * len(label_names)).reshape(-1, 3)
            for label_id in np.flatnonzero(counts.sum(axis=1)).tolist():
                per_class[label_names[label_id]] = dict(zip(SPLITS, counts[label_id].tolist(), strict=True))
        self._per_class = dict(sorted(per_class.items()))
        self._excluded = Counter(dict(excluded.most_common()))
        self.exported_count = sum(sum(c.values()) for c in self._per_class.values())
        self.label_conflicts = sum(n for label_id, n in conflicts.items() if label_id not in dropped)
        self.classes = sorted(self._per_class)
        self.flags = array("b")  # per image: REJECTED_BY_MODEL | MARKED_WRONG, set by build_plan
        self.parts = 1  # ranges of sha256 the plan's pass was split into (one process each)
        self.image_bytes = array("q")  # per image: its file's size (WebDataset cuts its shards up front)

    def class_indices(self) -> dict[str, array]:
        """label -> indices of its exported images (4 bytes each), in sha256 order."""
        out: dict[str, array] = {}
        for i in range(len(self._splitter)):
            if self._split[i] >= 0:
                out.setdefault(self._names[self._splitter.label(i)], array("i")).append(i)
        return out

    def flagged(self, flag: int) -> array:
        """Indices of the excluded images carrying ``flag``, in sha256 order."""
        return array("i", (i for i, f in enumerate(self.flags) if f & flag))

    def __len__(self) -> int:
        """Stored images the plan covers (exported or not)."""
        return len(self._splitter)

    def split_counts(self) -> dict[str, dict[str, int]]:
        return {k: dict(v) for k, v in self._per_class.items()}

    def excluded_counts(self) -> dict[str, int]:
        return dict(self._excluded)

    def split_of(self, i: int) -> int:
        """The split index (0 train, 1 val, 2 test) of the plan's image ``i``, -1 = not exported."""
        return self._split[i]

    def sha(self, i: int) -> str:
        return self._splitter.sha(i)

    def split_array(self) -> np.ndarray:
        """:meth:`split_of` of every image as an int8 array (a view, no copy)."""
        return np.frombuffer(self._split, dtype=np.int8)

    def dropped_reason(self, i: int) -> str:
        """Why image ``i``, labelled in the first pass, is not exported (label selection, min_count)."""
        return self._dropped.get(self._splitter.label(i), "changed_during_export")

    def _entries(self, indices: list[int], rows: list[Row], cands: list[list[Row]]) -> list[Entry]:
        """The plan's decisions about its images ``indices`` (their rows, sha256 order, and their
        candidate rows grouped per image), as entries the writers read."""
        page = self._decider.page(rows, cands)
        out = []
        for k, (i, rec) in enumerate(zip(indices, records_of(rows, cands), strict=True)):
            chosen = page.chosen[k]
            cand = None if chosen is None else rec.candidates[next(j for j, c in enumerate(cands[k]) if c is chosen)]
            e = Entry(rec, cand, page.labels[k], None, page.excluded[k], page.conflicts[k], page.vectors[k])
            s = self._split[i]
            if s >= 0:
                e.label, e.split, e.excluded = self._names[self._splitter.label(i)], SPLITS[s], None
            elif e.excluded is None:
                label_id = self._splitter.label(i)
                # a verdict that arrived between the two reads of a checkpoint a crawl is still writing
                e.excluded = (self._dropped.get(label_id, "changed_during_export") if label_id >= 0
                              else "changed_during_export")
            out.append(e)
        return out

    def _plan_rows(self) -> Iterator[tuple[int, list[Row], list[list[Row]]]]:
        """(index of its first image, rows, grouped candidate rows) of every page of the plan's
        images, read again from the checkpoint in sha256 order."""
        n, i = len(self._splitter), 0
        if n == 0:
            return
        for rows, cand_rows in self.db.iter_record_pages():
            keep: list[Row] = []
            for r in rows:
                if i + len(keep) < n and r[R_SHA] == self._splitter.sha(i + len(keep)):
                    keep.append(r)  # else an image stored after the plan was made: not in this export
            if keep:
                yield i, keep, group_candidates(keep, cand_rows)
                i += len(keep)
            if i == n:
                return

    def iter_entries(self) -> Iterator[tuple[int, Entry]]:
        """(index, entry) for every image of the plan, in sha256 order, read page by page."""
        for start, rows, cands in self._plan_rows():
            yield from enumerate(self._entries(list(range(start, start + len(rows))), rows, cands), start)

    def iter_pages(self) -> Iterator[tuple[int, PlanPage]]:
        """(index of its first image, page) for every image of the plan, in sha256 order, decided
        again from the checkpoint's rows (the Parquet manifest's columns come from these)."""
        for start, rows, cands in self._plan_rows():
            yield start, self._decider.page(rows, cands)

    def iter_exported(self) -> Iterator[Entry]:
        return (e for _i, e in self.iter_entries() if e.excluded is None)

    def indices(self, split: int) -> array:
        """Indices of the plan's images in one split, in sha256 order."""
        return array("i", (i for i in range(len(self._splitter)) if self._split[i] == split))

    def entries_at(self, indices: Iterator[int] | list[int] | array, page: int = 500) -> Iterator[Entry]:
        """Entries of the given plan indices, in that order, fetched ``page`` at a time."""
        batch: list[int] = []
        for i in indices:
            batch.append(i)
            if len(batch) >= page:
                yield from self._fetch(batch)
                batch = []
        if batch:
            yield from self._fetch(batch)

    def _fetch(self, batch: list[int]) -> Iterator[Entry]:
        index_of = {self._splitter.sha(i): i for i in batch}
        rows, cands = self.db.record_rows_by_sha(list(index_of))
        found = {e.record.sha256: e for e in self._entries([index_of[r[R_SHA]] for r in rows], rows,
                                                           group_candidates(rows, cands))}
        for i in batch:
            e = found.get(self._splitter.sha(i))
            if e is not None:
                yield e


class PageSink(Protocol):
    """Sees every page of one part of the plan's pass as it is decided (before label selection,
    ``min_count`` and splits, which need the whole pass), in the process reading that part."""

    def add(self, page: PlanPage) -> None: ...

    def close(self) -> None: ...


@dataclass(slots=True)
class _Part:
    """What the plan's pass found in one range of sha256: label ids are this part's own
    (indices into ``names``), images in sha256 order."""

    names: list[str]
    splitter: Splitter
    flags: array
    image_bytes: array
    sizes: Counter[int]
    conflicts: Counter[int]
    excluded: Counter[str]


def _plan_part(db: DatasetDB, decider: _Decider, plan_key: str, above: str, below: str,
               sink: PageSink | None) -> _Part:
    """Decisions 1-5 of every image whose sha256 sorts between ``above`` and ``below``."""
    names: list[str] = []
    ids: dict[str, int] = {}
    part = _Part(names, Splitter(), array("b"), array("q"), Counter(), Counter(), Counter())
    sizes, conflicts, excluded, flags = part.sizes, part.conflicts, part.excluded, part.flags
    previous = db.iter_previous_splits(plan_key, above, below)
    prev = next(previous, None)
    try:
        for rows, cand_rows in db.iter_record_pages(above=above, below=below):
            page = decider.page(rows, group_candidates(rows, cand_rows))
            if sink is not None:
                sink.add(page)
            part.image_bytes.extend([r[R_BYTES] for r in rows])
            page_shas: list[str] = []
            page_labels: list[int] = []
            page_keys: list[list[str]] = []
            page_prev: list[str | None] = []
            for r, cs, label, why, conflict in zip(rows, page.cands, page.labels, page.excluded, page.conflicts,
                                                   strict=True):
                sha = r[R_SHA]
                page_shas.append(sha)
                while prev is not None and prev[0] < sha:
                    prev = next(previous, None)
                if label is None:
                    excluded[_reason_kind(why)] += 1
                    page_labels.append(-1)
                    page_keys.append([])
                    page_prev.append(None)
                    best = r[R_BEST]
                    flags.append((REJECTED_BY_MODEL if r[R_KEEP] is not None and not r[R_KEEP]
                                  and not (best and best != sha) else 0)
                                 | (MARKED_WRONG if why == "reviewer:wrong" else 0))
                    continue
                flags.append(0)
                label_id = ids.get(label)
                if label_id is None:
                    label_id = ids[label] = len(names)
                    names.append(label)
                sizes[label_id] += 1
                if conflict:
                    conflicts[label_id] += 1
                keys = [f"page:{c[C_PAGE_URL]}" for c in cs if c[C_PAGE_URL]]
                if r[R_CLUSTER]:
                    keys.append(f"cluster:{r[R_CLUSTER]}")
                page_labels.append(label_id)
                page_keys.append(keys)
                page_prev.append(prev[1] if prev is not None and prev[0] == sha else None)
            part.splitter.add_page(page_shas, page_labels, page_keys, page_prev)
    finally:
        previous.close()
        if sink is not None:
            sink.close()
    return part


def _bounds(parts: int) -> list[tuple[str, str]]:
    """``parts`` ranges of sha256 of about equal numbers of images (digests are uniform)."""
    cuts = ["", *(f"{k * 256 // parts:02x}" for k in range(1, parts)), AFTER_EVERY_SHA]
    return list(zip(cuts[:-1], cuts[1:], strict=True))


def plan_workers(db: DatasetDB, workers: int | None) -> int:
    """Processes for the plan's pass: ``workers`` as asked, else one per core (at most
    :data:`forked.MAX_WORKERS`) for a checkpoint of :data:`PARALLEL_FROM` images or more."""
    if workers is not None and workers < 1:
        raise ConfigError(f"--workers: expected 1 or more, got {workers}")
    if not forked.available():
        return 1
    if workers is not None:
        return min(workers, 256)  # ranges are cut at the first two hex digits
    n = min(forked.cores(), forked.MAX_WORKERS)
    return n if n > 1 and db.images_about() >= PARALLEL_FROM else 1


def _plan_parts(db: DatasetDB, decider: _Decider, plan_key: str, workers: int,
                page_sink: Callable[[int], PageSink] | None) -> list[_Part]:
    """The plan's pass over the checkpoint in ``workers`` ranges of sha256: the first in this
    process, the others in forked children (:func:`forked.run_parts`; forked from the same
    interpreter, so ``hash()`` of a split key is the same in all of them)."""
    bounds = _bounds(workers)

    def part(k: int) -> Callable[[DatasetDB], _Part]:
        return lambda own: _plan_part(own, decider, plan_key, *bounds[k],
                                      page_sink(k) if page_sink is not None else None)

    return forked.run_parts(db, [part(k) for k in range(workers)])


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
    workers: int | None = 1,
    page_sink: Callable[[int], PageSink] | None = None,
) -> DatasetPlan:
    """Plan the dataset in one pass over the checkpoint, split into ``workers`` ranges of sha256
    read by as many processes (None: :func:`plan_workers` decides). ``page_sink(k)`` makes the
    :class:`PageSink` of range ``k`` (0 first), in the process reading it: the Parquet writer
    builds its columns there instead of reading the checkpoint twice."""
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
    plan_key = f"{scheme}|seed={seed}|ratios={','.join(f'{r:.4f}' for r in shares)}"
    decider = _Decider(scheme, merge, refined, vectors)
    parts = _plan_parts(db, decider, plan_key, plan_workers(db, workers), page_sink)

    # the parts in sha256 order, their label ids renumbered in order of first appearance (as one pass would)
    names: list[str] = []
    ids: dict[str, int] = {}
    sizes: Counter[int] = Counter()
    conflicts: Counter[int] = Counter()
    excluded: Counter[str] = Counter()
    splitter = Splitter()
    flags = array("b")
    image_bytes = array("q")
    for part in parts:
        to_global: list[int] = []
        for name in part.names:
            label_id = ids.get(name)
            if label_id is None:
                label_id = ids[name] = len(names)
                names.append(name)
            to_global.append(label_id)
        splitter.extend(part.splitter, to_global)
        flags.extend(part.flags)
        image_bytes.extend(part.image_bytes)
        for label_id, n in part.sizes.items():
            sizes[to_global[label_id]] += n
        for label_id, n in part.conflicts.items():
            conflicts[to_global[label_id]] += n
        excluded.update(part.excluded)

    dropped: dict[int, str] = {}
    if labels:
        wanted = {x.strip() for x in labels if x.strip()}
        present = set(names)
        unknown = sorted(wanted - present)
        if unknown:
            sample = ", ".join(sorted(present)[:12]) or "none"
            raise ConfigError(f"--labels: no exported images have the label(s) {', '.join(unknown)}; "
                              f"labels under scheme {scheme}: {sample}{' ...' if len(present) > 12 else ''}")
        dropped.update({ids[name]: "label_not_selected" for name in names if name not in wanted})
    for label_id, n in sizes.items():
        if label_id not in dropped and n < min_count:
            dropped[label_id] = "below_min_count"
    for label_id, why in dropped.items():
        excluded[why] += sizes[label_id]

    split = splitter.assign(shares, seed, names, dropped)
    if remember_splits:
        # only what differs from the splits remembered before (INSERT OR REPLACE of the same row is a no-op)
        db.save_splits(plan_key, ((splitter.sha(i), SPLITS[split[i]]) for i in splitter.changed(split).tolist()))
    plan = DatasetPlan(db, scheme, seed, shares, merge, refined, vectors, names, splitter, split, dropped,
                       excluded, conflicts)
    plan.flags, plan.image_bytes, plan.parts = flags, image_bytes, len(parts)
    return plan
