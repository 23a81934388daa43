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
import os
from dataclasses import dataclass

import numpy as np

from carcrawl.phash import N_VARIANTS

N_BANDS = 6
CODE_BITS = 128
MAX_BAND_BITS = 22  # a table of 2**22 int32 starts is 16 MiB


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
    b, b+6, b+12, ... (its first ``width`` of them, as many as there are; bit p < 64 is dHash
    bit p, the rest pHash's)."""
    from carcrawl.export.kernels import band_keys_of as keys_of

    keys = np.empty((N_BANDS, len(dh)), dtype=np.uint32)
    keys_of(np.ascontiguousarray(dh, dtype=np.uint64), np.ascontiguousarray(ph, dtype=np.uint64), width, keys)
    return keys


def _search(keys: np.ndarray, width: int, e_dh: np.ndarray, e_ph: np.ndarray, e_row: np.ndarray,
            q_keys: np.ndarray, qdh: np.ndarray, qph: np.ndarray, q_row: np.ndarray, radii: list[int],
            accept: int, threads: int) -> tuple[list[tuple[np.ndarray, np.ndarray, np.ndarray]], int]:
    """(query row, entry row, distance) of every look-up hit within ``accept`` bits, one band at a
    time (only one band's table is in memory); and the peak bytes of the tables."""
    from concurrent.futures import ThreadPoolExecutor

    from carcrawl.export.kernels import band_search as kernel
    from carcrawl.export.kernels import band_table as table

    found: list[tuple[np.ndarray, np.ndarray, np.ndarray]] = []
    peak = 0
    nq = q_keys.shape[1]
    step = max(1, -(-nq // max(1, threads * 8)))  # small slices: the threads finish together
    bounds = [(lo, min(nq, lo + step)) for lo in range(0, nq, step)]
    for b in range(N_BANDS):
        masks = _masks(width, radii[b])
        starts = np.zeros((1 << width) + 1, dtype=np.int32)  # 16 MiB at 22 bits: half the cache misses of int64
        np.cumsum(np.bincount(keys[b], minlength=1 << width), out=starts[1:])
        # an entry's dHash and pHash side by side: one cache line per candidate, not two
        s_code, s_row = np.empty((len(e_dh), 2), dtype=np.uint64), np.empty_like(e_row)
        table(keys[b], starts, e_dh, e_ph, e_row, s_code, s_row)
        q_idx = np.argsort(q_keys[b], kind="stable")
        qk = q_keys[b][q_idx]
        peak = max(peak, starts.nbytes + s_code.nbytes + s_row.nbytes + q_idx.nbytes + qk.nbytes)

        def run(lo: int, hi: int, qk=qk, q_idx=q_idx, masks=masks, starts=starts, s_code=s_code,
                s_row=s_row) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
            cap = 1024 + (hi - lo) // 4
            while True:
                out_q = np.empty(cap, np.int64)
                out_e = np.empty(cap, np.int64)
                out_d = np.empty(cap, np.int16)
                got = kernel(qk, q_idx, masks, starts, s_code, s_row, qdh, qph, q_row,  # type: ignore[operator]
                             accept, lo, hi, out_q, out_e, out_d)
                if got <= cap:
                    return out_q[:got], out_e[:got], out_d[:got]
                cap = got

        if threads <= 1 or len(bounds) <= 1:
            found += [run(lo, hi) for lo, hi in bounds]
        else:
            with ThreadPoolExecutor(threads) as pool:
                found += list(pool.map(lambda r: run(*r), bounds))
    return found, peak


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


def near_pairs(hashes: np.ndarray, radius: int, *, accept: int | None = None, new_from: int = 0,
               threads: int | None = None) -> Pairs:
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
    threads = threads or max(1, min(8, os.cpu_count() or 1))
    new = np.arange(new_from, n, dtype=np.int64)
    parts: list[tuple[np.ndarray, np.ndarray, np.ndarray]] = []

    # A: the wholes of the new rows against every view of every row
    vdh, vph = dh.ravel(), ph.ravel()  # entry e = row * 6 + view
    width = _band_width(len(vdh))
    view_keys = band_keys(vdh, vph, width)
    rows = np.repeat(np.arange(n, dtype=np.int64), N_VARIANTS)
    found, peak = _search(view_keys, width, vdh, vph, rows, view_keys[:, new * N_VARIANTS],
                          dh[new, 0].copy(), ph[new, 0].copy(), new, radii, accept, threads)
    parts += found
    del view_keys, rows

    # B: the crops of the new rows against the wholes of the old rows
    if new_from > 0:
        wdh, wph = dh[:new_from, 0].copy(), ph[:new_from, 0].copy()
        width = _band_width(new_from)
        cdh, cph = dh[new, 1:].ravel(), ph[new, 1:].ravel()  # query c = new_index * 5 + crop
        found, peak_b = _search(band_keys(wdh, wph, width), width, wdh, wph, np.arange(new_from, dtype=np.int64),
                                band_keys(cdh, cph, width), cdh, cph, np.repeat(new, N_VARIANTS - 1), radii,
                                accept, threads)
        parts += found
        peak = max(peak, peak_b)
    global LAST_TABLE_BYTES
    LAST_TABLE_BYTES = peak
    return _combine(parts, n)


#: peak bytes of the band tables in the last ``near_pairs`` call (for the benchmark)
LAST_TABLE_BYTES = 0
