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

Candidate pairs come from an index over hash bands (``nearindex.py``), not from all pairs: every
pair within ``HASH_NEAR`` bits is found, exactly as all pairs would find it (``pair_distances``
stays as the O(n^2) reference the tests compare against); pairs between ``HASH_NEAR`` and
``HASH_LOOSE`` bits are found when one of the six bands is close (on the shared photos and their
copies: 180 of 181 such pairs). The pairs are kept in the checkpoint (``near_pairs``) and every
image is marked once searched, so a later pass searches only the pairs of new images. The
embedding check runs only on the pairs found.

Pairs are joined into clusters (union-find); the best member (most pixels, then a licensed source,
then the cleanest source, then the most bytes, then the smallest sha256) stays and the others are
recorded as ``rejected:near_duplicate_of:<best sha256>``.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from carcrawl.export.nearindex import near_pairs
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
    indexed: int = 0  # images whose pairs this pass searched (the new ones)
    pairs: int = 0  # candidate pairs those searches found

    def __str__(self) -> str:
        return (f"near-duplicates: {self.duplicates} images in {self.clusters} clusters rejected as copies "
                f"({self.images} images checked, {self.hashed} newly hashed, {self.indexed} newly indexed, "
                f"{self.unreadable} unreadable)")


def pair_distances(hashes: np.ndarray) -> list[tuple[int, int, int]]:
    """All pairs (i, j, bits) with i < j and distance <= HASH_LOOSE, for an (n, 12) uint64 array:
    the O(n^2) reference the band index is checked against (tests, benchmarks), never used by a pass.
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


def _cosines(db: DatasetDB, pairs: list[tuple[str, str, int]]) -> list[float | None]:
    """Cosine similarity of each pair's embeddings (None unless both have one of the most common
    kind), loading only the embeddings of images in pairs, a block at a time."""
    kind = db.embedding_model()
    out: list[float | None] = [None] * len(pairs)
    if kind is None or kind[1] < 4:
        return out
    model, size = kind
    step = 20_000
    for start in range(0, len(pairs), step):
        block = pairs[start:start + step]
        vectors: dict[str, np.ndarray] = {}
        for sha, emb, m in db.embeddings(sorted({s for a, b, _d in block for s in (a, b)})):
            if m == model and len(emb) == size:
                v = np.frombuffer(emb, dtype="<f2").astype(np.float32)
                norm = float(np.linalg.norm(v))
                vectors[sha] = v / norm if norm > 0 else v
        for k, (a, b, _d) in enumerate(block):
            va, vb = vectors.get(a), vectors.get(b)
            if va is not None and vb is not None:
                out[start + k] = float(va @ vb)
    return out


def is_near(distance: int, cos: float | None) -> bool:
    """The rule: close hashes unless the embeddings disagree, or looser hashes they confirm."""
    return (distance <= HASH_NEAR and (cos is None or cos >= COS_VETO)) or (
        cos is not None and cos >= COS_CONFIRM and distance <= HASH_LOOSE)


def best_member_key(m: DedupMember) -> tuple[int, int, int, int, str]:
    """Sort key: the first member is the one kept."""
    pixels = (m.width or 0) * (m.height or 0)
    source = min((SOURCE_RANK.get(s, 9) for s in m.sources), default=9)
    return (-pixels, 0 if m.licensed else 1, source, -m.bytes, m.sha256)


def _hash_missing(db: DatasetDB) -> tuple[int, int]:
    """Decode and hash the members that have no hashes yet (never classified): (hashed, unreadable).
    A page of images at a time: the decoding threads get one page and its hashes are saved before
    the next is read, so memory holds a page whatever the crawl's size."""
    out_dir = str(db.out_dir)

    def one(item: tuple[str, str]) -> tuple[str, bytes | None, int | None, int | None, str | None]:
        sha, path = item
        try:  # a str path: pathlib would intern every file name (a dict that grows with the crawl)
            h, w, ht = image_hashes(os.path.join(out_dir, path))
            return (sha, to_blob(h), w, ht, None)
        except Exception as e:  # noqa: BLE001 - a broken image is recorded, never a crash
            return (sha, None, None, None, f"{type(e).__name__}: {e}"[:200])

    hashed = bad = 0
    with ThreadPoolExecutor(max(1, min(8, os.cpu_count() or 1))) as pool:
        for page in db.iter_unhashed_members():
            rows = list(pool.map(one, page))
            db.save_hashes(rows)
            hashed += len(rows)
            bad += sum(r[1] is None for r in rows)
    return hashed, bad


def index_new_images(db: DatasetDB) -> tuple[int, int]:
    """Search the pairs of every image not yet indexed (against all images with hashes) and record
    them: (images searched, pairs found)."""
    shas, blob, n_old = db.hash_matrix()
    if n_old == len(shas):
        return 0, 0
    hashes = np.frombuffer(blob, dtype="<u8").reshape(len(shas), 2 * N_VARIANTS).astype(np.uint64)
    found = near_pairs(hashes, HASH_NEAR, accept=HASH_LOOSE, new_from=n_old)
    rows = [(shas[a], shas[b], d) if shas[a] < shas[b] else (shas[b], shas[a], d)
            for a, b, d in zip(found.a.tolist(), found.b.tolist(), found.distance.tolist(), strict=True)]
    db.add_near_pairs(rows, shas[n_old:])
    return len(shas) - n_old, len(rows)


def clusters(members: dict[str, DedupMember], pairs: list[tuple[str, str, int]],
             cosines: list[float | None],
             with_sources: Callable[[list[str]], list[DedupMember]] | None = None) -> list[tuple[str, str, str, int]]:
    """(sha256, cluster id, best sha256, distance to best or 0) for members of multi-image clusters,
    from the candidate pairs (a, b, bits) and their embeddings' cosines. ``members`` may lack their
    sources; then ``with_sources`` gives them for the members that tie for the most pixels in a
    cluster (only those can be the best, and only between them do licence and source decide)."""
    ids: dict[str, int] = {}
    near: list[tuple[int, int, int]] = []
    for (a, b, d), cos in zip(pairs, cosines, strict=True):
        if is_near(d, cos):
            near.append((ids.setdefault(a, len(ids)), ids.setdefault(b, len(ids)), d))
    shas = list(ids)
    uf = _UnionFind(len(shas))
    dist_to: dict[tuple[int, int], int] = {}
    for i, j, d in near:
        uf.union(i, j)
        dist_to[(min(i, j), max(i, j))] = d
    groups: dict[int, list[int]] = {}
    for i in range(len(shas)):
        groups.setdefault(uf.find(i), []).append(i)
    if with_sources is not None:
        tied: list[str] = []
        for idx in groups.values():
            pixels = [best_member_key(members[shas[i]])[0] for i in idx]  # minus the pixels
            most = min(pixels)
            top = [shas[i] for i, p in zip(idx, pixels, strict=True) if p == most]
            if len(top) > 1:
                tied += top
        members = {**members, **{m.sha256: m for m in with_sources(tied)}} if tied else members
    out = []
    for idx in groups.values():
        ranked = sorted(idx, key=lambda i: best_member_key(members[shas[i]]))
        best = shas[ranked[0]]
        for i in ranked:
            key = (min(i, ranked[0]), max(i, ranked[0]))
            out.append((shas[i], best, best, dist_to.get(key, 0) if i != ranked[0] else 0))
    return out


def find_near_duplicates(target: str | Path) -> DedupResult:
    """Hash what was never hashed, search the pairs of what was never searched, cluster every
    member, and record the clusters in the checkpoint (replacing the previous pass, so running it
    again after more crawling is safe and costs only the new images)."""
    with DatasetDB.open(target) as db:
        hashed, unreadable = _hash_missing(db)
        indexed, new_pairs = index_new_images(db)
        pairs = list(db.near_pairs())
        cosines = _cosines(db, pairs)
        near = [(p, c) for p, c in zip(pairs, cosines, strict=True) if is_near(p[2], c)]
        # only the images of near pairs are looked up (a random read each): the members among them
        members = {m.sha256: m for m in db.dedup_members({s for (a, b, _d), _c in near for s in (a, b)}, sources=False)}
        near = [(p, c) for p, c in near if p[0] in members and p[1] in members]
        found = clusters(members, [p for p, _c in near], [c for _p, c in near], db.dedup_members)
        db.replace_near_duplicates(found)
        checked = db.count_dedup_members()
    n_clusters = len({c for _s, c, _b, _d in found})
    result = DedupResult(checked, hashed, unreadable, n_clusters, len(found) - n_clusters, indexed, new_pairs)
    log.info("%s", result)
    return result


def hash_never_classified(target: str | Path) -> tuple[int, int]:
    """Only the hashing step of a pass (hashed, unreadable): the cost a crawl without the classifier
    leaves to export, measured on its own by the mission-scale rehearsal."""
    with DatasetDB.open(target) as db:
        return _hash_missing(db)
