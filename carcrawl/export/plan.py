"""Which images go into an export, under which label, in which split, and why the others don't.

The order of decisions, the same for every format:

1. a reviewer's ``wrong`` mark excludes, whatever the model said;
2. a near-duplicate of a kept image is excluded (``near_duplicate_of:<sha>``);
3. a reviewer's ``right`` mark includes, whatever the model said;
4. with ``refined=True`` the probe's score decides (``carcrawl refine``), else the classifier's verdict;
5. the label comes from the URLs that delivered the image: majority vote, then the best source;
   an image with conflicting labels is still exported, and the conflict is recorded;
6. the merge map renames or drops classes, ``labels`` selects some, ``min_count`` drops small ones.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

from carcrawl.errors import ConfigError
from carcrawl.export.dedup import SOURCE_RANK
from carcrawl.export.labels import (
    SCHEMES,
    apply_merge,
    bodytype_vectors,
    label_name,
    label_parts,
    read_merge_map,
)
from carcrawl.export.splits import SplitItem, assign_splits, normalise_ratios
from carcrawl.store.dataset import CandidateInfo, DatasetDB, ImageRecord

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
    for rec in db.records():
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
