"""Near-duplicate detection: the resized, recompressed, cropped and watermarked copies of one photo
that search engines return many times over.

Each image gets twelve 64-bit perceptual hashes (a dHash and a DCT pHash of the whole picture and
of five 90 % crops: centre and four corners), computed once and kept in the checkpoint. The
distance of two images is the smallest number of differing bits (dHash + pHash, 128 bits) between
the whole of one and the whole or a crop of the other, so a 10 % crop still matches its original.
On the 164 shared photos, transformed copies stay at <= 15 bits and different photos at >= 18
(two consecutive dash-cam frames), most of them >= 27; the threshold is 16.

Where both images have a classifier embedding, cosine similarity refines the call: a pair under
the hash threshold is vetoed below ``COS_VETO`` (two dark, nearly uniform pictures), and a pair up
to ``HASH_LOOSE`` bits apart is accepted above ``COS_CONFIRM``.

Pairs are joined into clusters (union-find); the best member (most pixels, then a licensed source,
then the cleanest source, then the most bytes, then the smallest sha256) stays and the others are
recorded as ``rejected:near_duplicate_of:<best sha256>``.
"""

from __future__ import annotations

import logging
import os
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from carcrawl.phash import N_VARIANTS, image_hashes, to_blob
from carcrawl.store.dataset import DatasetDB, DedupMember

log = logging.getLogger(__name__)

HASH_NEAR = 16  # bits of 128 (dHash + pHash): at or under = near-duplicate
HASH_LOOSE = 26  # bits: near-duplicate only if the embeddings agree (>= COS_CONFIRM)
COS_CONFIRM = 0.93
COS_VETO = 0.80
BLOCK = 256  # rows per block of the all-pairs distance computation

#: lower = cleaner: sources that carry licence data and original files first
SOURCE_RANK = {"wikimedia": 0, "openverse": 1, "flickr": 2, "urls": 3, "bing": 4, "google": 5, "duckduckgo": 6}


@dataclass(frozen=True, slots=True)
class DedupResult:
    """What one near-duplicate pass found."""

    images: int
    hashed: int
    unreadable: int
    clusters: int
    duplicates: int

    def __str__(self) -> str:
        return (f"near-duplicates: {self.duplicates} images in {self.clusters} clusters rejected as copies "
                f"({self.images} images checked, {self.hashed} newly hashed, {self.unreadable} unreadable)")


def pair_distances(hashes: np.ndarray) -> list[tuple[int, int, int]]:
    """All pairs (i, j, bits) with i < j and distance <= HASH_LOOSE, for an (n, 12) uint64 array.
    Distance = min over k of d(whole_i, view_k(j)) and d(view_k(i), whole_j), where d counts the
    differing bits of dHash + pHash. Blocked, so memory stays at BLOCK x n."""
    n = len(hashes)
    dh, ph = hashes[:, :N_VARIANTS], hashes[:, N_VARIANTS:]
    out: list[tuple[int, int, int]] = []
    for start in range(0, n, BLOCK):
        stop = min(n, start + BLOCK)
        rest = slice(start, n)  # only j >= start: the lower triangle was done by earlier blocks
        best = np.full((stop - start, n - start), 255, dtype=np.uint8)
        for k in range(N_VARIANTS):
            a = np.bitwise_count(dh[start:stop, 0:1] ^ dh[rest, k][None, :]) + np.bitwise_count(
                ph[start:stop, 0:1] ^ ph[rest, k][None, :])
            np.minimum(best, a.astype(np.uint8), out=best)
            if k:
                b = np.bitwise_count(dh[start:stop, k:k + 1] ^ dh[rest, 0][None, :]) + np.bitwise_count(
                    ph[start:stop, k:k + 1] ^ ph[rest, 0][None, :])
                np.minimum(best, b.astype(np.uint8), out=best)
        ii, jj = np.nonzero(best <= HASH_LOOSE)
        for i, j in zip(ii.tolist(), jj.tolist(), strict=True):
            gi, gj = start + i, start + j
            if gi < gj:
                out.append((gi, gj, int(best[i, j])))
    return out


class _UnionFind:
    def __init__(self, n: int):
        self.parent = list(range(n))

    def find(self, x: int) -> int:
        while self.parent[x] != x:
            self.parent[x] = self.parent[self.parent[x]]
            x = self.parent[x]
        return x

    def union(self, a: int, b: int) -> None:
        ra, rb = self.find(a), self.find(b)
        if ra != rb:
            self.parent[max(ra, rb)] = min(ra, rb)


def _embedding_matrix(db: DatasetDB, shas: list[str]) -> tuple[dict[str, int], np.ndarray | None]:
    """Unit-normalised embeddings (float32) of the images that have one, for the most common model."""
    rows = list(db.embeddings(shas))
    if not rows:
        return {}, None
    models: dict[tuple[str, int], int] = {}
    for _sha, emb, model in rows:
        key = (model, len(emb))
        models[key] = models.get(key, 0) + 1
    model, size = max(models, key=lambda k: (models[k], k))
    rows = [r for r in rows if r[2] == model and len(r[1]) == size and size >= 2]
    if not rows:
        return {}, None
    mat = np.stack([np.frombuffer(r[1], dtype="<f2").astype(np.float32) for r in rows])
    norms = np.linalg.norm(mat, axis=1, keepdims=True)
    mat /= np.where(norms > 0, norms, 1)
    return {r[0]: i for i, r in enumerate(rows)}, mat


def best_member_key(m: DedupMember) -> tuple[int, int, int, int, str]:
    """Sort key: the first member is the one kept."""
    pixels = (m.width or 0) * (m.height or 0)
    source = min((SOURCE_RANK.get(s, 9) for s in m.sources), default=9)
    return (-pixels, 0 if m.licensed else 1, source, -m.bytes, m.sha256)


def _hash_missing(db: DatasetDB, members: list[DedupMember]) -> tuple[int, int]:
    known = db.hashes([m.sha256 for m in members])
    todo = [m for m in members if m.sha256 not in known]
    if not todo:
        return 0, 0
    out_dir = db.out_dir

    def one(m: DedupMember) -> tuple[str, bytes | None, int | None, int | None, str | None]:
        try:
            h, w, ht = image_hashes(out_dir / m.path)
            return (m.sha256, to_blob(h), w, ht, None)
        except Exception as e:  # noqa: BLE001 - a broken image is recorded, never a crash
            return (m.sha256, None, None, None, f"{type(e).__name__}: {e}"[:200])

    rows = []
    with ThreadPoolExecutor(max(1, min(8, os.cpu_count() or 1))) as pool:
        for r in pool.map(one, todo):
            rows.append(r)
            if len(rows) >= 500:
                db.save_hashes(rows)
                rows = []
    if rows:
        db.save_hashes(rows)
    bad = sum(1 for r in db.hashes([m.sha256 for m in todo]).values() if r.hashes is None)
    return len(todo), bad


def clusters(members: list[DedupMember], hashes: np.ndarray, emb_index: dict[str, int],
             emb: np.ndarray | None) -> list[tuple[str, str, str, int]]:
    """(sha256, cluster id, best sha256, distance to best or 0) for members of multi-image clusters."""
    uf = _UnionFind(len(members))
    dist_to: dict[tuple[int, int], int] = {}
    for i, j, d in pair_distances(hashes):
        ei, ej = emb_index.get(members[i].sha256), emb_index.get(members[j].sha256)
        cos = float(emb[ei] @ emb[ej]) if emb is not None and ei is not None and ej is not None else None
        near = (d <= HASH_NEAR and (cos is None or cos >= COS_VETO)) or (cos is not None and cos >= COS_CONFIRM)
        if near:
            uf.union(i, j)
            dist_to[(i, j)] = d
    groups: dict[int, list[int]] = {}
    for i in range(len(members)):
        groups.setdefault(uf.find(i), []).append(i)
    out = []
    for idx in groups.values():
        if len(idx) < 2:
            continue
        ranked = sorted(idx, key=lambda i: best_member_key(members[i]))
        best = members[ranked[0]].sha256
        for i in ranked:
            key = (min(i, ranked[0]), max(i, ranked[0]))
            out.append((members[i].sha256, best, best, dist_to.get(key, 0) if i != ranked[0] else 0))
    return out


def find_near_duplicates(target: str | Path) -> DedupResult:
    """Hash what is new, cluster everything, and record the clusters in the checkpoint (replacing
    the previous pass, so running it again after more crawling is safe)."""
    with DatasetDB.open(target) as db:
        members = db.dedup_members()
        hashed, unreadable = _hash_missing(db, members)
        rows = db.hashes([m.sha256 for m in members])
        usable = [m for m in members if rows.get(m.sha256) and rows[m.sha256].hashes]
        # pixels for ranking: from the verdict when classified, from the hash pass otherwise
        usable = [
            m if m.width else DedupMember(m.sha256, m.path, m.bytes, rows[m.sha256].width, rows[m.sha256].height,
                                          m.sources, m.licensed)
            for m in usable
        ]
        if usable:
            mat = np.stack([np.frombuffer(rows[m.sha256].hashes or b"", dtype="<u8") for m in usable]).astype(np.uint64)
        else:
            mat = np.zeros((0, 2 * N_VARIANTS), dtype=np.uint64)
        emb_index, emb = _embedding_matrix(db, [m.sha256 for m in usable])
        found = clusters(usable, mat, emb_index, emb)
        db.replace_near_duplicates(found)
    n_clusters = len({c for _s, c, _b, _d in found})
    result = DedupResult(len(members), hashed, unreadable, n_clusters, len(found) - n_clusters)
    log.info("%s", result)
    return result

