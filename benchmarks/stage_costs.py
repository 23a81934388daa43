"""What each cheap stage of the download path costs, in this process, on real bytes.

- search-page parse rate: from ``results/parse_rate.json`` (``benchmarks/parse_rate.py``);
- magic-number check per image: ``sniff_image`` on the first bytes of the real photos in
  ../shared/images, and ``describe_non_image`` on an HTML body;
- content check per image (header pixel count, truncated JPEG/PNG) and sha256 per image, on the
  benchmark size mix (~20 KB .. 2 MB);
- SQLite checkpoint write rate with batched commits (the real ``Store``, a real file): candidate
  inserts, then the per-image ``record_fetched`` (two statements per image), ``commit_rows`` a batch;
- file writes: the real ``ImageFiles`` (batched thread hops, temp name + rename), size mix.

    python benchmarks/stage_costs.py        # ~30 s
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import statistics
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

from _common import RESULTS, ROOT, WORK, fmt_table, remove, write_result  # noqa: E402

from carcrawl.download import content_problem  # noqa: E402
from carcrawl.filestore import ImageFiles  # noqa: E402
from carcrawl.magic import SNIFF_BYTES, describe_non_image, sniff_image  # noqa: E402
from carcrawl.models import Labels  # noqa: E402
from carcrawl.store import Store, StoredImage  # noqa: E402

IMAGES = ROOT.parent / "shared" / "images"


def per_call(fn: Callable[[], Any], seconds: float = 0.5) -> float:
    """Seconds per call: best of three rounds of about ``seconds / 3`` each."""
    fn()
    best = float("inf")
    for _ in range(3):
        n, start = 0, time.perf_counter()
        while True:
            fn()
            n += 1
            elapsed = time.perf_counter() - start
            if elapsed >= seconds / 3:
                break
        best = min(best, elapsed / n)
    return best


def size_mix_bodies() -> list[bytes]:
    from carcrawl.sandbox.photos import SIZE_CLASSES, PhotoSet

    ps = PhotoSet()
    return [ps.variant(i, f"s{c}") for i in ps.size_mix_photos()[:6] for c in range(len(SIZE_CLASSES))]


async def sqlite_rates(n: int, commit_rows: int) -> dict[str, float]:
    path = WORK / "stage_costs" / "checkpoint.sqlite"
    store = await Store.open(path, fresh=True, commit_rows=commit_rows, commit_interval=1.0)
    try:
        labels = Labels()
        start = time.perf_counter()
        for i in range(n):
            url = f"http://127.0.0.2/img/{i}.jpg"
            store.add_url_candidate(url, url, labels, rank=i)
            if i % commit_rows == commit_rows - 1:
                await store.flush()
        await store.flush()
        insert_s = time.perf_counter() - start
        tasks = []
        after = 0
        while batch := await store.next_candidates(after, 512):
            tasks += batch
            after = batch[-1].candidate_id
        await store.flush()
        start = time.perf_counter()
        for k, t in enumerate(tasks):
            sha = hashlib.sha256(t.url.encode()).hexdigest()
            store.record_fetched(t.candidate_id, sha256=sha, final_url=t.url, attempts=1,
                                 image=StoredImage(sha, f"images/{sha[:2]}/{sha[2:4]}/{sha}.jpg", "jpeg"), size=1000)
            if k % (commit_rows // 2) == commit_rows // 2 - 1:  # two rows per image
                await store.flush()
        await store.flush()
        done_s = time.perf_counter() - start
    finally:
        await store.close()
    return {"candidate_inserts_per_s": n / insert_s, "images_recorded_per_s": len(tasks) / done_s,
            "rows_per_s_recording": 2 * len(tasks) / done_s, "checkpoint_mb": path.stat().st_size / 1e6}


async def file_rate(bodies: list[bytes], count: int) -> dict[str, float]:
    out = WORK / "stage_costs" / "files"
    remove(out)
    files = ImageFiles(out)
    files.prepare()
    shas = [hashlib.sha256(str(i).encode()).hexdigest() for i in range(count)]
    start = time.perf_counter()
    await asyncio.gather(*(files.write(shas[i], "jpeg", bodies[i % len(bodies)]) for i in range(count)))
    await files.drain()
    elapsed = time.perf_counter() - start
    await files.close()
    nbytes = sum(len(bodies[i % len(bodies)]) for i in range(count))
    remove(out)
    return {"files_per_s": count / elapsed, "mb_per_s": nbytes / 1e6 / elapsed}


def main() -> None:
    rows: list[list[Any]] = []
    out: dict[str, Any] = {}
    parse = RESULTS / "parse_rate.json"
    if parse.exists():
        data = json.loads(parse.read_text())
        bing = [r for r in data["rows"] if r["source"] == "bing"]
        out["parse_bing_pages_per_s"] = statistics.median(r["pages_per_s"] for r in bing)
        out["parse_bing_candidates_per_s"] = statistics.median(r["candidates_per_s"] for r in bing)
        rows.append(["parse a Bing results page (median of 3 captures)",
                     f"{1000 / out['parse_bing_pages_per_s']:.2f} ms/page",
                     f"{out['parse_bing_pages_per_s']:.0f} pages/s"])
    heads = [p.read_bytes()[:SNIFF_BYTES] for p in sorted(IMAGES.rglob("*")) if p.is_file()
             and p.suffix.lower() in (".jpg", ".jpeg", ".png", ".webp", ".gif")]
    html = b"<!DOCTYPE html><html><head><title>Not found</title></head><body>nope</body></html>"[:SNIFF_BYTES]

    def sniff_all() -> None:
        for h in heads:
            sniff_image(h)

    t = per_call(sniff_all) / len(heads)
    out["magic_check_us"] = t * 1e6
    rows.append([f"magic-number check (sniff_image, {len(heads)} real photos)", f"{t * 1e6:.2f} us/image",
                 f"{1 / t:,.0f} /s"])
    t = per_call(lambda: describe_non_image(html))
    out["describe_html_us"] = t * 1e6
    rows.append(["name a non-image body (describe_non_image, HTML)", f"{t * 1e6:.2f} us", f"{1 / t:,.0f} /s"])
    bodies = size_mix_bodies()
    mean_kb = statistics.mean(len(b) for b in bodies) / 1000

    def check_all() -> None:
        for b in bodies:
            content_problem(b, "jpeg", 50_000_000)

    t = per_call(check_all) / len(bodies)
    out["content_check_us"] = t * 1e6
    rows.append([f"content check (pixel count, truncation; size mix, mean {mean_kb:.0f} KB)",
                 f"{t * 1e6:.2f} us/image", f"{1 / t:,.0f} /s"])

    def hash_all() -> None:
        for b in bodies:
            hashlib.sha256(b).hexdigest()

    t = per_call(hash_all) / len(bodies)
    out["sha256_us"] = t * 1e6
    rows.append([f"sha256 (size mix, mean {mean_kb:.0f} KB)", f"{t * 1e6:.0f} us/image", f"{1 / t:,.0f} /s"])
    sq = asyncio.run(sqlite_rates(50_000, 500))
    out["sqlite"] = sq
    rows.append(["SQLite: insert candidate rows, commit every 500", "", f"{sq['candidate_inserts_per_s']:,.0f} rows/s"])
    rows.append(["SQLite: record a fetched image (2 statements), commit every 500 rows", "",
                 f"{sq['images_recorded_per_s']:,.0f} images/s"])
    fr = asyncio.run(file_rate(bodies, 1500))
    out["files"] = fr
    rows.append([f"file writes (ImageFiles: batched, temp + rename; size mix, mean {mean_kb:.0f} KB)", "",
                 f"{fr['files_per_s']:,.0f} files/s, {fr['mb_per_s']:,.0f} MB/s"])
    print(fmt_table(["stage", "cost", "rate"], rows))
    write_result("stage_costs", {"command": "python benchmarks/stage_costs.py", "table": rows, **out})


if __name__ == "__main__":
    main()
