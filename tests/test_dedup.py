"""Near-duplicates at scale and decoded once: the classifier's decoders hash the full picture they
decoded, the verdict carries the hashes into the checkpoint, and export never decodes a classified
image again."""

from __future__ import annotations

import asyncio
import hashlib
import shutil
from pathlib import Path

import numpy as np
import pytest
from helpers import assert_status_counters_match_rows
from PIL import Image
from test_export_helpers import Shot, build_crawl, copies, vehicle_photos

from carcrawl.classify import ClassifySettings, load_classifier
from carcrawl.classify.dali import dali_import_error
from carcrawl.export.dedup import find_near_duplicates
from carcrawl.models import Labels
from carcrawl.phash import image_hashes, picture_hashes
from carcrawl.store import Store
from carcrawl.store.dataset import DatasetDB

pytestmark = pytest.mark.usefixtures("shared")

MUSTANG = Labels("ford", "mustang", "red")


def sha(body: bytes) -> str:
    return hashlib.sha256(body).hexdigest()


def bits(a: bytes | np.ndarray, b: bytes | np.ndarray) -> np.ndarray:
    """Differing bits per hash (12 values) of two hash blobs/arrays."""
    x = np.frombuffer(a, "<u8") if isinstance(a, bytes) else a
    y = np.frombuffer(b, "<u8") if isinstance(b, bytes) else b
    return np.bitwise_count(x.astype(np.uint64) ^ y.astype(np.uint64))


def test_a_classified_image_is_never_decoded_again_by_export(tmp_path: Path) -> None:
    photos = vehicle_photos(6)
    bodies = [p.read_bytes() for p in photos] + [b for p in photos[:2] for b in copies(p).values()]
    out = tmp_path / "crawl"
    build_crawl(out, [Shot(f"http://h.example/{i}.jpg", MUSTANG, b) for i, b in enumerate(bodies)])
    clf = load_classifier(ClassifySettings(model="efficientnet_lite0", device="cpu", decoder="pillow", batch_size=16))
    try:
        verdicts = clf.classify([(sha(b), b) for b in bodies])
    finally:
        clf.close()
    # the Pillow path hashes the full picture, bit for bit what a re-decode for export gives
    for v, body in zip(verdicts, bodies, strict=True):
        assert v.hashes is not None and not bits(v.hashes, image_hashes(body)[0]).any()

    async def record() -> None:
        store = await Store.open(out / "checkpoint.sqlite")
        store.record_verdicts(verdicts)
        await store.flush()
        await store.close()

    asyncio.run(record())
    files = [f for f in (out / "images").rglob("*") if f.is_file()]
    assert len(files) == len(bodies)
    for f in files:  # any decode now fails
        f.write_bytes(b"gone")
    result = find_near_duplicates(out)
    assert result.hashed == 0 and result.unreadable == 0
    kept = {v.sha256 for v in verdicts if v.keep}
    with DatasetDB.open(out) as db:
        found: dict[str, set[str]] = {}
        for member, cluster in db.con.execute("SELECT sha256, cluster FROM near_duplicates"):
            found.setdefault(cluster, set()).add(member)
    want = [{sha(b) for b in [photos[n].read_bytes(), *copies(photos[n]).values()]} & kept for n in (0, 1)]
    assert sorted(map(sorted, found.values())) == sorted(sorted(w) for w in want if len(w) > 1)
    assert found, "the classifier rejected every copy: nothing left to check"


@pytest.mark.skipif(dali_import_error() is not None, reason="nvidia.dali does not import here")
def test_dali_hashes_the_full_picture_not_the_crop(shared: Path) -> None:
    """DALI's grey side output gives hashes within a few bits of the Pillow path's (measured on all
    shared photos: median 1, 99th percentile 6 of 128 bits), far from the 224-pixel crop's."""
    from carcrawl.classify.dali import DaliDecoder
    from carcrawl.classify.decode import Geometry, PillowDecoder

    bodies = [p.read_bytes() for p in vehicle_photos(24)]
    geometry = Geometry()
    pillow = PillowDecoder(geometry, 10**9, None)
    batch = DaliDecoder(geometry, 10**9, len(bodies), 1, None, pillow).decode(bodies)
    assert batch.pixels is not None and len(batch.hashes) == len(bodies)
    full, crop = [], []
    for i, body in enumerate(bodies):
        h = batch.hashes[i]
        assert h is not None
        pillow_hash = image_hashes(body)[0]
        full.append(int(bits(h, pillow_hash)[[0, 6]].sum()))
        j = batch.rows.index(i)
        crop_hash = picture_hashes(Image.fromarray(batch.pixels[j].numpy()).convert("L"))
        crop.append(int(bits(crop_hash, pillow_hash)[[0, 6]].sum()))
    assert np.median(full) <= 2 and max(full) <= 16, full
    assert np.median(crop) > 2 * max(np.median(full), 4), (full, crop)


def test_export_hashes_what_was_never_classified(tmp_path: Path) -> None:
    """Images stored without a verdict are decoded by the near-duplicate pass, once."""
    photos = vehicle_photos(3)
    bodies = [p.read_bytes() for p in photos] + list(copies(photos[0]).values())
    out = tmp_path / "crawl"
    build_crawl(out, [Shot(f"http://h.example/{i}.jpg", MUSTANG, b) for i, b in enumerate(bodies)])
    first = find_near_duplicates(out)
    assert first.hashed == len(bodies) and first.duplicates == 4
    shutil.rmtree(out / "images")
    again = find_near_duplicates(out)
    assert again.hashed == 0 and again.duplicates == 4


# -- the band index against all pairs ------------------------------------------------------------

def _all_pairs_clusters(db: DatasetDB) -> set[frozenset[str]]:
    """Today's all-pairs algorithm, written out here as the reference: every pair's distance,
    the embedding veto/extension, union-find over the members."""
    from carcrawl.export.dedup import COS_CONFIRM, COS_VETO, HASH_NEAR, pair_distances

    members = sorted(db.dedup_member_shas())
    rows = db.hashes(members)
    usable = [s for s in members if rows.get(s) and rows[s].hashes]
    mat = np.stack([np.frombuffer(rows[s].hashes or b"", "<u8") for s in usable]).astype(np.uint64)
    emb = {s: np.frombuffer(e, "<f2").astype(np.float32) for s, e, _m in db.embeddings(usable)}
    parent = list(range(len(usable)))

    def find(x: int) -> int:
        while parent[x] != x:
            x = parent[x]
        return x

    for i, j, d in pair_distances(mat):
        a, b = emb.get(usable[i]), emb.get(usable[j])
        cos = float(a @ b / (np.linalg.norm(a) * np.linalg.norm(b))) if a is not None and b is not None else None
        if (d <= HASH_NEAR and (cos is None or cos >= COS_VETO)) or (cos is not None and cos >= COS_CONFIRM):
            parent[max(find(i), find(j))] = min(find(i), find(j))
    groups: dict[int, set[str]] = {}
    for i, s in enumerate(usable):
        groups.setdefault(find(i), set()).add(s)
    return {frozenset(g) for g in groups.values() if len(g) > 1}


def _stored_clusters(db: DatasetDB) -> set[frozenset[str]]:
    groups: dict[str, set[str]] = {}
    for member, cluster in db.con.execute("SELECT sha256, cluster FROM near_duplicates"):
        groups.setdefault(cluster, set()).add(member)
    return {frozenset(g) for g in groups.values()}


def _shared_shots(shared: Path, every: int) -> list[Shot]:
    """Every ``every``-th photo of both shared sets, each with its four engine-style copies; every
    other photo's family gets stand-in embeddings (so the veto and the extension take part)."""
    from test_export_helpers import pixel_embedding

    photos = sorted(p for d in ("images", "images2") for p in (shared / d).rglob("*")
                    if p.suffix.lower() in (".jpg", ".jpeg", ".png", ".webp"))[::every]
    shots = []
    for n, p in enumerate(photos):
        for k, body in enumerate([p.read_bytes(), *copies(p).values()]):
            shots.append(Shot(f"http://h{n % 7}.example/{n}-{k}.jpg", MUSTANG, body,
                              embedding=pixel_embedding(body) if n % 2 else None))
    return shots


def test_index_clusters_equal_all_pairs_clusters_on_the_shared_photos(tmp_path: Path, shared: Path) -> None:
    out = tmp_path / "crawl"
    shots = _shared_shots(shared, 3)
    build_crawl(out, shots)
    result = find_near_duplicates(out)
    assert result.indexed == len({sha(s.body or b"") for s in shots}) and result.clusters > 50
    with DatasetDB.open(out) as db:
        want = _all_pairs_clusters(db)
        assert _stored_clusters(db) == want
    assert sum(len(c) for c in want) - len(want) == result.duplicates


def _synthetic(n: int, rng: np.random.Generator) -> tuple[np.ndarray, list[tuple[int, int]]]:
    """Random hashes, then planted copies: rows whose bits differ from an earlier row's in chosen
    places, among them the pigeonhole's worst cases (16 bits dealt 3, 3, 3, 3, 3, 1 over the six
    bands, so only the last band is within its radius), and copies that match a crop only."""
    from carcrawl.export.nearindex import N_BANDS

    h = rng.integers(0, 2**63, size=(n, 12), dtype=np.int64).astype(np.uint64)
    h ^= rng.integers(0, 2, size=(n, 12)).astype(np.uint64) << np.uint64(63)
    planted = []
    band_bits = [[p for p in range(128) if p % N_BANDS == b] for b in range(N_BANDS)]

    def flip(code: np.ndarray, view: int, positions: list[int]) -> None:
        for p in positions:
            word = view if p < 64 else 6 + view
            code[word] ^= np.uint64(1) << np.uint64(p % 64)

    for t in range(n // 10):
        src, dst = int(rng.integers(0, n // 2)), n // 2 + t
        h[dst] = h[src]
        kind = t % 4
        for view in range(6):
            if kind == 0:  # worst case for the pigeonhole, exactly 16 bits
                spread = [3, 3, 3, 3, 3, 1]
                rng.shuffle(spread)
                pos = [q for b in range(N_BANDS) for q in rng.choice(band_bits[b], spread[b], replace=False)]
            elif kind == 1:  # just over: 17 bits, 3 in every band but one with 2
                pos = [q for b in range(N_BANDS) for q in rng.choice(band_bits[b], 3 if b else 2, replace=False)]
            else:  # anywhere, 0..26 bits
                pos = list(rng.choice(128, int(rng.integers(0, 27)), replace=False))
            flip(h[dst], view, [int(q) for q in pos])
        if kind == 3:  # the copy's whole matches only the original's corner crop
            h[dst, 0], h[dst, 6] = h[src, 3], h[src, 9]
            h[dst, 1:6] = rng.integers(0, 2**63, size=5, dtype=np.int64).astype(np.uint64)
        planted.append((src, dst))
    return h, planted


def test_band_index_finds_exactly_the_all_pairs_pairs_at_20k() -> None:
    from carcrawl.export.dedup import HASH_LOOSE, HASH_NEAR, pair_distances
    from carcrawl.export.nearindex import near_pairs

    rng = np.random.default_rng(7)
    h, planted = _synthetic(20_000, rng)
    reference = {(i, j): d for i, j, d in pair_distances(h)}
    exact = {k: d for k, d in reference.items() if d <= HASH_NEAR}
    assert len(exact) > 1000 and sum(1 for d in exact.values() if d == HASH_NEAR) > 100
    found = near_pairs(h, HASH_NEAR, accept=HASH_LOOSE)
    got = {(a, b): d for a, b, d in zip(found.a.tolist(), found.b.tolist(), found.distance.tolist(), strict=True)}
    assert {k: d for k, d in got.items() if d <= HASH_NEAR} == exact
    assert all(reference.get(k) == d for k, d in got.items())  # the loose ones it meets are right too
    # incremental: the pairs of the last 2 000 rows, added to a pass over the first 18 000
    first = near_pairs(h[:18_000], HASH_NEAR)
    later = near_pairs(h, HASH_NEAR, new_from=18_000)
    both = set(zip(first.a.tolist(), first.b.tolist(), first.distance.tolist(), strict=True))
    both |= set(zip(later.a.tolist(), later.b.tolist(), later.distance.tolist(), strict=True))
    assert both == {(i, j, d) for (i, j), d in exact.items()}
    assert all(a >= 18_000 or b >= 18_000 for a, b in zip(later.a.tolist(), later.b.tolist(), strict=True))


def test_a_later_pass_searches_only_new_images_and_matches_a_full_pass(tmp_path: Path, shared: Path) -> None:
    shots = _shared_shots(shared, 9)
    old = shots[: len(shots) * 2 // 3]
    later = Labels("ford", "mustang", "blue")  # new queries: the second crawl finds new URLs
    new = [Shot(s.url + "?later", later, s.body, embedding=s.embedding) for s in shots[len(shots) * 2 // 3 :]]
    out = tmp_path / "crawl"
    build_crawl(out, old)
    first = find_near_duplicates(out)
    assert first.indexed == len({sha(s.body or b"") for s in old})
    stored_before = {f for f in (out / "images").rglob("*") if f.is_file()}
    build_crawl(out, new)  # the crawl goes on: more images in the same checkpoint
    for f in stored_before:  # decoding an old image now fails
        f.write_bytes(b"gone")
    second = find_near_duplicates(out)
    n_new = len({sha(s.body or b"") for s in new} - {sha(s.body or b"") for s in old})
    assert (second.hashed, second.indexed, second.unreadable) == (n_new, n_new, 0)
    with DatasetDB.open(out) as db:
        incremental = _stored_clusters(db)
        assert any(len(c) > 1 for c in incremental)
        # the same checkpoint, every image searched again from nothing
        db.con.execute("DELETE FROM near_pairs")
        db.con.execute("UPDATE image_hashes SET indexed = NULL")
    full = find_near_duplicates(out)
    assert full.indexed == first.indexed + n_new and full.hashed == 0
    assert_status_counters_match_rows(out / "checkpoint.sqlite")  # copies marked, unmarked, marked again
    with DatasetDB.open(out) as db:
        assert _stored_clusters(db) == incremental == _all_pairs_clusters(db)
