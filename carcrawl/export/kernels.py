"""The near-duplicate band index's compiled loops (numba), loaded from numba's on-disk cache after
their first compilation. They are module-level functions on purpose: defined inside a function
they closed over per-process objects, numba's cache never matched, and every process compiled the
band search again (~0.7 s on this project's 2-core machine).

The look-up loop (:mod:`carcrawl.export.nearindex`) goes per query, per neighbour key, per entry
under that key, the full distance; no temporary arrays, and it releases the GIL so two threads
share the queries. Queries come sorted by their band key and the entries' codes are stored in key
order, so neighbouring queries read neighbouring memory (a random read per candidate made the
first version memory-bound: 139 CPU-s at 850k images).
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
