"""Grouped, stratified train/val/test splits.

Everything from one source page (a listing), one near-duplicate cluster or one image (several URLs
can deliver the same bytes) forms a group, and a group lands in one split, so near-identical
pictures never sit on both sides of the train/test line. Within each label, groups are dealt
largest first, in an order fixed by the seed, to the split furthest below its share. A split
that an earlier export of the same plan gave an image is kept, so a test image stays a test image
when the crawl grows.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterable
from dataclasses import dataclass

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
