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
