"""Candidate pairs for near-duplicate detection from an index over hash bands, never all pairs.

Every image has six views (whole picture, centre crop, four corner crops), each a 128-bit code:
its dHash and pHash side by side. The distance of two images (``dedup.py``) is the smallest
Hamming distance between the whole of one and any view of the other.

Exact multi-index hashing (Norouzi, Punjani, Fleet, CVPR 2012): the 128 bits are dealt into six
bands (bit ``p`` goes to band ``p % 6``: neighbouring dHash bits are correlated, dealing spreads
them). If two codes differ in at most ``r`` bits and the bands get radii ``t_b`` with
``sum(t_b + 1) > r``, some band differs in at most ``t_b`` bits (pigeonhole). So every view's band
keys go into one counting-sort table per band, each query (a whole) looks up its own key and every
key within ``t_b`` bits of it, and the candidates found are checked with the full distance. Every
pair within ``r`` bits is found, as all-pairs would find it; the work grows with the number of
images times the (small) number of candidates each gets, not with the number of pairs.

Incremental: given the rows ``[new_from, n)`` as new, only pairs with a new member are searched
(new wholes against every view, and new crops against the old wholes).
"""

from __future__ import annotations

import itertools
import math
from dataclasses import dataclass

import numpy as np

from carcrawl.phash import N_VARIANTS

N_BANDS = 6
CODE_BITS = 128
MAX_BAND_BITS = 22  # a table of 2**22 int32 starts is 16 MiB
CANDIDATES_PER_STEP = 4_000_000  # bounds the working arrays of one look-up step


@dataclass(frozen=True, slots=True)
class Pairs:
    """Pairs (a < b, row numbers) within the search radius and their distance in bits."""

    a: np.ndarray  # int64
    b: np.ndarray  # int64
    distance: np.ndarray  # int16

    def __len__(self) -> int:
        return len(self.a)


def band_radii(radius: int, bands: int = N_BANDS) -> list[int]:
    """Radii ``t_b`` with ``sum(t_b + 1) == radius + 1``: the pigeonhole guarantee for ``radius``."""
    base, extra = divmod(radius + 1, bands)
    return [base + (1 if b < extra else 0) - 1 for b in range(bands)]


def _masks(width: int, radius: int) -> np.ndarray:
    """Every ``width``-bit mask with at most ``radius`` bits set (the key's neighbours)."""
    out = [0]
    for k in range(1, max(0, radius) + 1):
        out += [sum(1 << i for i in c) for c in itertools.combinations(range(width), k)]
    return np.array(out, dtype=np.uint32)


def _band_width(entries: int) -> int:
    """Bits per band: about one entry per key (more bits: fewer candidates, bigger tables)."""
    return int(min(MAX_BAND_BITS, max(8, math.ceil(math.log2(max(2, entries))))))


def band_keys(dh: np.ndarray, ph: np.ndarray, width: int) -> np.ndarray:
    """(N_BANDS, len) uint32 keys of 128-bit codes (dHash, pHash words): band b takes code bits
    b, b+6, b+12, ... (its first ``width`` of them)."""
    n = len(dh)
    keys = np.zeros((N_BANDS, n), dtype=np.uint32)
    step = 1 << 18
    for start in range(0, n, step):
        stop = min(n, start + step)
        words = np.stack([dh[start:stop], ph[start:stop]], axis=1).astype("<u8")
        bits = np.unpackbits(words.view(np.uint8).reshape(-1, 16), axis=1, bitorder="little")  # bit p = column p
        for b in range(N_BANDS):
            chosen = bits[:, b::N_BANDS][:, :width]
            packed = np.packbits(chosen, axis=1, bitorder="little")
            padded = np.zeros((stop - start, 4), dtype=np.uint8)
            padded[:, : packed.shape[1]] = packed
            keys[b, start:stop] = padded.view("<u4").ravel()
    return keys


class _BandTables:
    """Per band: the entries sorted by key, and where each key's run starts (counting sort)."""

    def __init__(self, keys: np.ndarray, width: int):
        self.width = width
        self.order: list[np.ndarray] = []
        self.starts: list[np.ndarray] = []
        for b in range(N_BANDS):
            k = keys[b]
            self.order.append(np.argsort(k, kind="stable").astype(np.int32))
            starts = np.zeros((1 << width) + 1, dtype=np.int32)
            np.cumsum(np.bincount(k, minlength=1 << width), out=starts[1:])
            self.starts.append(starts)

    @property
    def nbytes(self) -> int:
        return sum(a.nbytes for a in self.order) + sum(a.nbytes for a in self.starts)


def _search(
    tables: _BandTables,
    q_keys: np.ndarray,
    radii: list[int],
    check: object,
) -> list[tuple[np.ndarray, np.ndarray, np.ndarray]]:
    """Look every query key and its neighbours up in every band; ``check(query_pos, entry)``
    returns the (query, entry, distance) triples that pass the full distance."""
    found = []
    nq = q_keys.shape[1]
    for b in range(N_BANDS):
        masks = _masks(tables.width, radii[b])
        starts, order = tables.starts[b], tables.order[b]
        qk = q_keys[b]
        # several masks per step when the queries are few, one when they are many
        per_step = max(1, CANDIDATES_PER_STEP // max(1, nq))
        for m0 in range(0, len(masks), per_step):
            ms = masks[m0 : m0 + per_step]
            keys = (qk[None, :] ^ ms[:, None]).ravel()
            lo = starts[keys]
            cnt = starts[keys + 1] - lo
            hit = np.flatnonzero(cnt)
            if not len(hit):
                continue
            cnt_h = cnt[hit].astype(np.int64)
            total = int(cnt_h.sum())
            first = np.cumsum(cnt_h) - cnt_h
            pos = np.arange(total, dtype=np.int64) + np.repeat(lo[hit].astype(np.int64) - first, cnt_h)
            entry = order[pos]
            query = np.repeat(hit % nq, cnt_h)
            found.append(check(query, entry))  # type: ignore[operator]
    return found


def _combine(parts: list[tuple[np.ndarray, np.ndarray, np.ndarray]], n: int) -> Pairs:
    """Unordered pairs, self-pairs dropped, smallest distance per pair."""
    if parts:
        qa = np.concatenate([p[0] for p in parts])
        qb = np.concatenate([p[1] for p in parts])
        dist = np.concatenate([p[2] for p in parts])
    else:
        qa = qb = np.zeros(0, dtype=np.int64)
        dist = np.zeros(0, dtype=np.int16)
    keep = qa != qb
    qa, qb, dist = qa[keep], qb[keep], dist[keep]
    a, b = np.minimum(qa, qb), np.maximum(qa, qb)
    key = a * n + b
    order = np.lexsort((dist, key))
    key, dist = key[order], dist[order]
    first = np.ones(len(key), dtype=bool)
    first[1:] = key[1:] != key[:-1]
    key, dist = key[first], dist[first]
    return Pairs(key // n, key % n, dist.astype(np.int16))


def near_pairs(hashes: np.ndarray, radius: int, *, accept: int | None = None, new_from: int = 0) -> Pairs:
    """Every pair of rows of ``hashes`` ((n, 12) uint64: dHash x 6 views, pHash x 6) whose
    distance is at most ``radius``, with at least one row ``>= new_from``. Pairs up to ``accept``
    bits (default ``radius``) that the look-ups meet are returned too (not all of them: only the
    pairs within ``radius`` are guaranteed)."""
    n = len(hashes)
    accept = radius if accept is None else max(accept, radius)
    if n < 2 or new_from >= n:
        return _combine([], max(n, 1))
    dh = np.ascontiguousarray(hashes[:, :N_VARIANTS]).astype(np.uint64)
    ph = np.ascontiguousarray(hashes[:, N_VARIANTS:]).astype(np.uint64)
    radii = band_radii(radius)
    new = np.arange(new_from, n, dtype=np.int64)
    parts: list[tuple[np.ndarray, np.ndarray, np.ndarray]] = []

    # A: the wholes of the new rows against every view of every row
    vdh, vph = dh.ravel(), ph.ravel()  # entry e = row * 6 + view
    width = _band_width(len(vdh))
    view_keys = band_keys(vdh, vph, width)
    tables = _BandTables(view_keys, width)
    q_keys = view_keys[:, new * N_VARIANTS]
    qdh, qph = dh[new, 0], ph[new, 0]

    def check_a(q: np.ndarray, e: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        d = np.bitwise_count(qdh[q] ^ vdh[e]).astype(np.int16) + np.bitwise_count(qph[q] ^ vph[e])
        ok = d <= accept
        return new[q[ok]], (e[ok] // N_VARIANTS).astype(np.int64), d[ok]

    parts += _search(tables, q_keys, radii, check_a)
    del tables, view_keys

    # B: the crops of the new rows against the wholes of the old rows
    if new_from > 0:
        wdh, wph = dh[:new_from, 0], ph[:new_from, 0]
        width = _band_width(new_from)
        tables = _BandTables(band_keys(wdh, wph, width), width)
        cdh, cph = dh[new, 1:].ravel(), ph[new, 1:].ravel()  # query c = new_index * 5 + crop
        crops = N_VARIANTS - 1

        def check_b(q: np.ndarray, e: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
            d = np.bitwise_count(cdh[q] ^ wdh[e]).astype(np.int16) + np.bitwise_count(cph[q] ^ wph[e])
            ok = d <= accept
            return new[q[ok] // crops], e[ok].astype(np.int64), d[ok]

        parts += _search(tables, band_keys(cdh, cph, width), radii, check_b)
    return _combine(parts, n)
