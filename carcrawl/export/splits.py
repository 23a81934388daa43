"""Grouped, stratified train/val/test splits.

Everything from one source page (a listing), one near-duplicate cluster or one image (several URLs
can deliver the same bytes) forms a group, and a group lands in one split, so near-identical
pictures never sit on both sides of the train/test line. Within each label, groups are dealt
largest first, in an order fixed by the seed, to the split furthest below its share. A split
that an earlier export of the same plan gave an image is kept, so a test image stays a test image
when the crawl grows.

:class:`Splitter` holds the compact state this needs for a whole crawl, whatever its size: per
image 32 bytes of sha256, a 4-byte label id and a 1-byte earlier split; per group key (page URL,
cluster id) an 8-byte hash and a 4-byte owner. About 50 bytes per image (~45 MB at 850k images)
plus, while assigning, ~30 bytes per image of sort and union-find arrays; nothing else of an image
is kept. Keys are compared by their 64-bit ``hash()`` (SipHash, salted per process: the groups
depend only on which keys are equal, never on the hash values), so two different page URLs share
one with probability ~n²/2⁶⁵ (about 10⁻⁸ at a million keys).
"""

from __future__ import annotations

import hashlib
from array import array
from collections.abc import Iterable
from dataclasses import dataclass

import numpy as np

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


_SPLIT_INDEX = {name: i for i, name in enumerate(SPLITS)}




class Splitter:
    """Collects images in ascending sha256 order (:meth:`add`), then deals their groups to splits
    (:meth:`assign`). The order matters only for the tie-break "smallest sha256 of a group"."""

    def __init__(self) -> None:
        self._sha = bytearray()
        self._label = array("i")
        self._prev = array("b")
        self._key_hash = array("q")  # hash() of each key: groups depend only on which keys are equal
        self._key_owner = array("i")

    def __len__(self) -> int:
        return len(self._label)

    def add(self, sha256: str, label: int, keys: Iterable[str] = (), previous: str | None = None) -> int:
        """Add one image (``label`` a label id, -1 = not in the dataset); returns its index."""
        i = len(self._label)
        self.add_page([sha256], [label], [list(keys)], [previous])
        return i

    def add_page(self, shas: list[str], labels: list[int], keys: list[list[str]], previous: list[str | None]) -> None:
        """Add a page of images: their sha256, label ids (-1 = not in the dataset), group keys
        (only a labelled image's count) and the splits an earlier export gave them."""
        first = len(self._label)
        self._sha += bytes.fromhex("".join(shas))
        self._label.extend(labels)
        index = _SPLIT_INDEX.get
        self._prev.extend([index(p, -1) for p in previous])
        key_hash, owner = self._key_hash.append, self._key_owner.append
        for k, (label, ks) in enumerate(zip(labels, keys, strict=True)):
            if label >= 0 and ks:
                for key in ks:
                    key_hash(hash(key))
                    owner(first + k)

    def extend(self, other: Splitter, label_ids: list[int]) -> None:
        """Append ``other``'s images (all sorting after this one's), its label ``i`` renamed
        ``label_ids[i]``."""
        first = len(self._label)
        self._sha += other._sha
        lab = np.frombuffer(other._label, dtype=np.int32)
        to = np.asarray([*label_ids, -1], dtype=np.int32)  # label -1 (not in the dataset) stays -1
        self._label.frombytes(to[lab].tobytes())
        self._prev.extend(other._prev)
        self._key_hash.extend(other._key_hash)
        self._key_owner.frombytes((np.frombuffer(other._key_owner, dtype=np.int32) + first).astype(np.int32).tobytes())

    def changed(self, split: array) -> np.ndarray:
        """Indices of the images ``split`` (from :meth:`assign`) puts in a split other than the one
        an earlier export gave them (or that had none): the only rows worth remembering again."""
        now = np.frombuffer(split, dtype=np.int8)
        return np.flatnonzero((now >= 0) & (now != np.frombuffer(self._prev, dtype=np.int8)))

    def sha(self, i: int) -> str:
        return self._sha[32 * i:32 * i + 32].hex()

    def label(self, i: int) -> int:
        return self._label[i]

    def labels(self) -> np.ndarray:
        """Every image's label id as an int32 array (a view, no copy)."""
        return np.frombuffer(self._label, dtype=np.int32)

    def assign(self, ratios: Iterable[float], seed: int, label_names: list[str],
               dropped: Iterable[int] = ()) -> array:
        """Split index (0 train, 1 val, 2 test; -1 = not in the dataset) per image. Images whose
        label id is in ``dropped`` are left out (and do not join groups)."""
        shares = normalise_ratios(ratios)
        n = len(self._label)
        out = array("b", bytes(n))
        if n == 0:
            return out
        lab = np.frombuffer(self._label, dtype=np.int32)
        active = lab >= 0
        drop = np.fromiter(dropped, dtype=np.int32)
        if drop.size:
            active &= ~np.isin(lab, drop)
        for i in np.flatnonzero(~active).tolist():
            out[i] = -1

        # groups: union-find over images that share a key (keys sorted by hash: equal ones are neighbours)
        parent = array("i", range(n))

        def find(x: int) -> int:
            while parent[x] != x:
                parent[x] = parent[parent[x]]
                x = parent[x]
            return x

        kh = np.frombuffer(self._key_hash, dtype=np.int64)
        ko = np.frombuffer(self._key_owner, dtype=np.int32)
        keep = active[ko] if ko.size else np.zeros(0, dtype=bool)
        kh, ko = kh[keep], ko[keep]
        order = np.lexsort((ko, kh))
        kh, ko = kh[order], ko[order]
        for j in np.flatnonzero(kh[1:] == kh[:-1]).tolist():
            a, b = find(int(ko[j])), find(int(ko[j + 1]))
            if a != b:
                parent[max(a, b)] = min(a, b)
        del kh, ko, order

        members = np.flatnonzero(active).astype(np.int32)
        roots = np.fromiter((find(i) for i in members.tolist()), dtype=np.int32, count=members.size)
        by_group = np.lexsort((members, roots))
        members, roots = members[by_group], roots[by_group]
        starts = np.flatnonzero(np.r_[True, roots[1:] != roots[:-1]]).astype(np.int64)
        ends = np.r_[starts[1:], members.size]
        sizes = ends - starts
        prev = np.frombuffer(self._prev, dtype=np.int8)
        gprev = np.maximum.reduceat(prev[members], starts) if members.size else np.zeros(0, dtype=np.int8)

        totals: dict[int, int] = {}
        for label, count in zip(*np.unique(lab[active], return_counts=True), strict=True):
            totals[int(label)] = int(count)
        counts: dict[int, list[int]] = {label: [0, 0, 0] for label in totals}
        mem = array("i", members.tobytes())
        labels = self._label

        # a group that grew across earlier splits keeps the most held-out one: no test image moves to train
        for g in np.flatnonzero(gprev >= 0).tolist():
            split_i = int(gprev[g])
            for k in range(int(starts[g]), int(ends[g])):
                i = mem[k]
                out[i] = split_i
                counts[labels[i]][split_i] += 1

        fresh = np.flatnonzero(gprev < 0)
        hi = np.empty(fresh.size, dtype=np.uint64)
        lo = np.empty(fresh.size, dtype=np.uint64)
        for k, g in enumerate(fresh.tolist()):
            d = hashlib.sha256(f"{seed}:{self.sha(mem[int(starts[g])])}".encode()).digest()
            hi[k] = int.from_bytes(d[:8], "big")
            lo[k] = int.from_bytes(d[8:16], "big")
        fresh = fresh[np.lexsort((lo, hi, -sizes[fresh]))]
        del hi, lo

        ties: dict[int, bytes] = {}
        for g in fresh.tolist():
            s, e = int(starts[g]), int(ends[g])
            if e - s == 1:
                label = labels[mem[s]]
            else:
                seen: dict[int, int] = {}
                for k in range(s, e):
                    seen[labels[mem[k]]] = seen.get(labels[mem[k]], 0) + 1
                label = min(seen, key=lambda x: (-seen[x], label_names[x]))
            c, total = counts[label], totals[label]
            tie = ties.get(label)
            if tie is None:
                # ties (small classes: val and test both short by the same amount) go a seeded way per label
                tie = ties[label] = hashlib.sha256(f"{seed}:{label_names[label]}".encode()).digest()
            split_i = max(range(3), key=lambda x: (round(shares[x] * total - c[x], 9) if shares[x] > 0
                                                   else float("-inf"), tie[x]))
            for k in range(s, e):
                i = mem[k]
                out[i] = split_i
                counts[labels[i]][split_i] += 1
        return out


def assign_splits(
    items: list[SplitItem], ratios: Iterable[float], seed: int, previous: dict[str, str] | None = None
) -> dict[str, str]:
    """sha256 -> ``train`` / ``val`` / ``test``. Deterministic for the same items, ratios and seed
    (the in-memory form of :class:`Splitter`, for callers holding a list)."""
    previous = previous or {}
    names = sorted({it.label for it in items})
    ids = {name: i for i, name in enumerate(names)}
    ordered = sorted(items, key=lambda it: it.sha256)
    sp = Splitter()
    for it in ordered:
        sp.add(it.sha256, ids[it.label], it.group_keys, previous.get(it.sha256))
    got = sp.assign(ratios, seed, names)
    return {it.sha256: SPLITS[got[i]] for i, it in enumerate(ordered)}
