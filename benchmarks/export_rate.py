"""What the dataset side costs: perceptual hashing, near-duplicate clustering and each export format.

1. hashing: the twelve hashes per image of ``carcrawl.export.dedup`` over the 164 shared photos
   (JPEG draft decoding where it applies), images/s on one thread;
2. clustering: the blocked all-pairs distance of ``pair_distances`` on random hashes for growing
   n (it is O(n^2): this says where it stops being a minute);
3. export: a checkpoint of ~1 000 real images (the shared photos, each stored under six byte-distinct
   copies) written as ImageFolder, HF imagefolder, WebDataset and Parquet, images/s.

    python benchmarks/export_rate.py            # about a minute
    python benchmarks/export_rate.py --quick
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "tests"))

from carcrawl.export import export  # noqa: E402
from carcrawl.export.dedup import find_near_duplicates, image_hashes, pair_distances  # noqa: E402

IMAGES = ROOT.parent / "shared" / "images"
RESULTS = ROOT / "benchmarks" / "results" / "export_rate.json"


def bench_hashing(photos: list[Path]) -> dict[str, float]:
    t = time.perf_counter()
    for p in photos:
        image_hashes(p)
    dt = time.perf_counter() - t
    return {"images": len(photos), "seconds": round(dt, 2), "images_per_s": round(len(photos) / dt, 1)}


def bench_clustering(sizes: list[int]) -> list[dict[str, float]]:
    rng = np.random.default_rng(0)
    out = []
    for n in sizes:
        h = rng.integers(0, 2**63, size=(n, 12), dtype=np.int64).astype(np.uint64)
        t = time.perf_counter()
        pair_distances(h)
        dt = time.perf_counter() - t
        out.append({"n": n, "seconds": round(dt, 2)})
    return out


def bench_export(photos: list[Path], copies: int) -> dict[str, object]:
    from test_export_helpers import Shot, build_crawl

    from carcrawl.models import Labels

    tmp = Path(tempfile.mkdtemp(prefix="carcrawl-export-bench-"))
    try:
        shots = []
        makes = [("ford", "mustang"), ("toyota", "camry"), ("honda", "civic"), ("bmw", "x5")]
        for i, p in enumerate(photos):
            body = p.read_bytes()
            for k in range(copies):  # trailing bytes after the image: distinct sha256, same picture
                mk, md = makes[(i + k) % len(makes)]
                shots.append(Shot(f"http://h{i % 16}.example/{i}-{k}.jpg", Labels(mk, md, "red"), body + bytes([k]) * (k + 1),
                                  page_url=f"http://site.example/{i}-{k}"))
        build_crawl(tmp / "out", shots)
        rows: dict[str, object] = {"images": len(shots)}
        for fmt in ("imagefolder", "hf", "webdataset", "parquet"):  # before dedup: every copy is exported
            t = time.perf_counter()
            s = export(tmp / "out", fmt, tmp / fmt)
            dt = time.perf_counter() - t
            rows[fmt] = {"seconds": round(dt, 2), "images_per_s": round(s.images / dt, 1), "exported": s.images}
        t = time.perf_counter()
        d = find_near_duplicates(tmp / "out")
        rows |= {"dedup_s": round(time.perf_counter() - t, 2), "dedup_clusters": d.clusters,
                 "dedup_rejected": d.duplicates}
        return rows
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--quick", action="store_true")
    args = ap.parse_args()
    photos = sorted(p for p in IMAGES.glob("*/*") if p.suffix.lower() in (".jpg", ".jpeg", ".png", ".webp"))
    hashing = bench_hashing(photos)
    clustering = bench_clustering([2_000, 5_000] if args.quick else [2_000, 5_000, 10_000, 20_000])
    exporting = bench_export(photos, 2 if args.quick else 6)
    print(f"hashing: {hashing['images']} photos in {hashing['seconds']} s = {hashing['images_per_s']} images/s (1 thread)")
    print("clustering (all pairs, random hashes):")
    for c in clustering:
        print(f"  n={c['n']:>6}: {c['seconds']:>6} s")
    print(f"export of {exporting['images']} images (then the first dedup pass: {exporting['dedup_s']} s, "
          f"{exporting['dedup_rejected']} rejected as copies in {exporting['dedup_clusters']} clusters):")
    print(f"  {'format':<12} {'seconds':>8} {'images/s':>9}")
    for fmt in ("imagefolder", "hf", "webdataset", "parquet"):
        r = exporting[fmt]
        assert isinstance(r, dict)
        print(f"  {fmt:<12} {r['seconds']:>8} {r['images_per_s']:>9}")
    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    RESULTS.write_text(json.dumps({
        "machine": f"{platform.machine()} {os.cpu_count()} cores, Python {platform.python_version()}",
        "hashing": hashing, "clustering": clustering, "export": exporting,
    }, indent=1))
    print(f"wrote {RESULTS.relative_to(ROOT)}")


if __name__ == "__main__":
    main()
