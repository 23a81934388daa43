"""The dataset side's compiled loops (numba), one module so each is compiled once and then loaded
from numba's on-disk cache. They must be module-level functions: a kernel defined inside a function
closes over per-process objects, so numba's cache never matched and every process compiled it
again (~0.4-1.8 s per kernel per export). Imported only where a loop needs them (numba's own import
is ~0.4 s).

- the near-duplicate band index (:mod:`carcrawl.export.nearindex`): the look-up loop, per query,
  per neighbour key, per entry under that key, the full distance; no temporary arrays, and it
  releases the GIL so two threads share the queries. Queries come sorted by their band key and
  the entries' codes are stored in key order, so neighbouring queries read neighbouring memory
  (a random read per candidate made the first version memory-bound: 139 CPU-s at 850k images).
- the splitter (:mod:`carcrawl.export.splits`): union-find over shared group keys, and the dealing
  of groups to splits, which hands back to Python the rare group it cannot order exactly.
"""

from __future__ import annotations

import numba
import numpy as np


@numba.njit(nogil=True, cache=True)
def popcount(x: np.uint64) -> np.int64:  # SWAR; LLVM turns it into one popcnt
    x = x - ((x >> np.uint64(1)) & np.uint64(0x5555555555555555))
    x = (x & np.uint64(0x3333333333333333)) + ((x >> np.uint64(2)) & np.uint64(0x3333333333333333))
    x = (x + (x >> np.uint64(4))) & np.uint64(0x0F0F0F0F0F0F0F0F)
    return np.int64((x * np.uint64(0x0101010101010101)) >> np.uint64(56))


@numba.njit(nogil=True, cache=True)
def band_search(q_keys, q_idx, masks, starts, e_code, e_row, qdh, qph, q_row, accept,
                lo, hi, out_q, out_e, out_d):  # pragma: no cover - compiled
    n_out = 0
    cap = len(out_q)
    for j in range(lo, hi):
        i = q_idx[j]
        key = q_keys[j]
        row = q_row[i]
        a_dh = qdh[i]
        a_ph = qph[i]
        for m in range(len(masks)):
            k = key ^ masks[m]
            for pos in range(starts[k], starts[k + 1]):
                d = popcount(a_dh ^ e_code[pos, 0]) + popcount(a_ph ^ e_code[pos, 1])
                if d <= accept and e_row[pos] != row:
                    if n_out < cap:
                        out_q[n_out] = row
                        out_e[n_out] = e_row[pos]
                        out_d[n_out] = d
                    n_out += 1
    return n_out


@numba.njit(nogil=True, cache=True)
def band_table(keys, starts, e_dh, e_ph, e_row, s_code, s_row):  # pragma: no cover - compiled
    """Stable counting sort of the entries into key order, codes and rows moved in the same
    pass (argsort, then three gathers, was ~1 s a band at 5M entries)."""
    pos = starts[:-1].copy()
    for i in range(len(keys)):
        k = keys[i]
        p = pos[k]
        s_code[p, 0] = e_dh[i]
        s_code[p, 1] = e_ph[i]
        s_row[p] = e_row[i]
        pos[k] = p + 1


@numba.njit(nogil=True, cache=True)
def band_keys_of(dh, ph, width, out):  # pragma: no cover - compiled
    """Band keys bit by bit (numpy's unpackbits/packbits was ~2.5 us a code)."""
    one = np.uint64(1)
    for i in range(len(dh)):
        a = dh[i]
        c = ph[i]
        for b in range(6):
            k = np.uint64(0)
            for j in range(width):
                p = b + 6 * j
                if p >= 128:  # bands 2..5 have only 21 bits
                    break
                bit = (a >> np.uint64(p)) & one if p < 64 else (c >> np.uint64(p - 64)) & one
                k |= bit << np.uint64(j)
            out[b, i] = np.uint32(k)


@numba.njit(nogil=True, cache=True)
def _find(parent, x):  # pragma: no cover - compiled
    while parent[x] != x:
        parent[x] = parent[parent[x]]
        x = parent[x]
    return x


@numba.njit(nogil=True, cache=True)
def split_roots(kh, ko, n, members):  # pragma: no cover - compiled
    """Union-find over images sharing a key hash; a set's root is its smallest index."""
    parent = np.arange(n, dtype=np.int32)
    for j in range(len(kh) - 1):
        if kh[j + 1] == kh[j]:
            a, b = _find(parent, ko[j]), _find(parent, ko[j + 1])
            if a < b:
                parent[b] = a
            elif b < a:
                parent[a] = b
    out = np.empty(len(members), dtype=np.int32)
    for k in range(len(members)):
        out[k] = _find(parent, members[k])
    return out


@numba.njit(nogil=True, cache=True)
def split_deal(q, order, starts, ends, members, lab, rank, share, totals, counts, ties, split_of, tally):  # pragma: no cover - compiled
    """Deal groups ``order[q:]`` (largest first, seeded) to the split furthest below its
    share of the group's majority label; the seeded tie bytes break exact ties. Returns
    where it stopped: the end, or a group whose best two deficits differ but by so little
    that rounding them to 9 places (the rule) could make them equal."""
    for p in range(q, len(order)):
        g = order[p]
        s, e = starts[g], ends[g]
        if e - s == 1:
            label = lab[members[s]]
        else:
            label, best = -1, 0
            for k in range(s, e):
                tally[lab[members[k]]] += 1
            for k in range(s, e):
                x = lab[members[k]]
                if tally[x] > best or (tally[x] == best and rank[x] < rank[label]):
                    label, best = x, tally[x]
            for k in range(s, e):
                tally[lab[members[k]]] = 0
        total = totals[label]
        v = np.empty(3)
        for x in range(3):
            v[x] = share[x] * total - counts[label, x] if share[x] > 0 else -np.inf
        pick = 0
        for x in range(1, 3):
            if v[x] > v[pick] or (v[x] == v[pick] and ties[label, x] > ties[label, pick]):
                pick = x
        for x in range(3):
            if (x != pick and v[x] != v[pick] and v[x] > -np.inf
                    and v[pick] - v[x] <= 1e-8 + 1e-14 * abs(v[pick])):
                return p
        for k in range(s, e):
            i = members[k]
            split_of[i] = pick
            counts[lab[i], pick] += 1
    return len(order)
