"""The dataset side per image at the mission's size, on a synthetic checkpoint (no crawl needed).

A checkpoint of ``--size`` stored images is built through :class:`carcrawl.store.Store` (the shape
of tests/test_export_streamed.py's synthetic crawl: 1 000 queries, listings of three, every tenth
image delivered by two URLs, verdicts with top-5 and a few reviewer marks), with a ~9 KB file per
image (the mission's pictures are ~9 KB) unless ``--no-files``. Then each dataset command runs as
its own measured process (wall, CPU and peak RSS of the process tree): the splits
(``export.plan_dataset``), ``carcrawl export --no-dedup`` in every format, ``carcrawl report``.

    python benchmarks/dataset_rate.py --size 100000            # holds /tmp/carcrawl-bench.lock
    python benchmarks/dataset_rate.py --size 100000 --keep DIR  # build once, rerun with --reuse DIR

Results: ``benchmarks/results/dataset_rate.json`` (one entry per size and ``--tag``).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import fcntl
import hashlib
import json
import os
import shutil
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "benchmarks"))

from _common import disk_write_speed, fmt_table, machine, run_measured  # noqa: E402

RESULTS = ROOT / "benchmarks" / "results" / "dataset_rate.json"
LOCK = Path("/tmp/carcrawl-bench.lock")
FORMATS = ("imagefolder", "hf", "webdataset", "parquet")
MISSION = 850_000


async def _build(out: Path, n: int, file_bytes: int = 9000) -> None:
    from carcrawl.models import Candidate, Labels, Prediction, Query, Verdict
    from carcrawl.store import Store, StoredImage

    store = await Store.open(out / "checkpoint.sqlite", commit_rows=5000)
    queries = [Query(f"q{k}", Labels(f"make{k % 50}", f"model{k}", ("red", "blue")[k % 2])) for k in range(1000)]
    await store.add_queries(queries, ["bing"], 1000)
    tasks = await store.next_searches("bing", 0, 10_000)
    per = -(-n // len(tasks))
    for t_i, task in enumerate(tasks):
        cands = []
        for r in range(per):
            k = t_i * per + r
            if k >= n:
                break
            url = f"http://h{k % 64}.example/{k}.jpg"
            cands.append((r, Candidate(url=url, source="bing", page_url=f"http://site.example/{k // 3}",
                                       title=f"photo {k} of a {task.labels.model}",
                                       license="CC BY 4.0" if k % 4 == 0 else None), url))
            if k % 10 == 0:
                cands.append((r, Candidate(url=url + "?m", source="openverse"), url + "?m"))
        store.record_search_page(task, page=0, candidates=cands, next_cursor=None, found=len(cands),
                                 total_hits=None, done=True)
    await store.flush()
    after = 0
    while True:
        batch = await store.next_candidates(after, 5000)
        if not batch:
            break
        after = batch[-1].candidate_id
        verdicts = []
        for t in batch:
            k = int(t.url.rsplit("/", 1)[1].split(".")[0])
            sha = hashlib.sha256(str(k).encode()).hexdigest()
            store.record_fetched(t.candidate_id, sha256=sha, final_url=t.url, attempts=1,
                                 image=StoredImage(sha, f"images/{sha[:2]}/{sha[2:4]}/{sha}.jpg", "jpeg"), size=file_bytes)
            if not t.url.endswith("?m"):
                verdicts.append(Verdict(sha256=sha, keep=k % 9 != 0, reason="vehicle:car" if k % 9 else "not_vehicle:dog",
                                        top5=tuple(Prediction(f"label{j}", 0.5 / (j + 1), j) for j in range(5)),
                                        width=224, height=168, model="test-model"))
        await store.flush()
        store.record_verdicts(verdicts)
        await store.flush()
    await store.close()


def build(out: Path, n: int, files: bool, file_bytes: int = 9000) -> None:
    out.mkdir(parents=True, exist_ok=True)
    asyncio.run(_build(out, n, file_bytes))
    from carcrawl.review import import_marks

    marks = {hashlib.sha256(str(k).encode()).hexdigest(): ("wrong" if k % 2 else "right") for k in range(0, n, 997)}
    (out.parent / "marks.json").write_text(json.dumps(marks))
    import_marks(out, out.parent / "marks.json")
    if files:
        body = b"\xff\xd8\xff\xe0" + os.urandom(file_bytes - 6) + b"\xff\xd9"
        for k in range(n):
            sha = hashlib.sha256(str(k).encode()).hexdigest()
            d = out / "images" / sha[:2] / sha[2:4]
            d.mkdir(parents=True, exist_ok=True)
            (d / f"{sha}.jpg").write_bytes(body[:-8] + k.to_bytes(6, "big") + body[-2:])


def _env() -> dict[str, str]:
    return {"PYTHONPATH": str(ROOT) + os.pathsep + os.environ.get("PYTHONPATH", "")}


def measure(out: Path, work: Path, n: int, formats: tuple[str, ...], report: bool) -> dict[str, dict[str, Any]]:
    rows: dict[str, dict[str, Any]] = {}

    def run(name: str, cmd: list[str]) -> None:
        m = run_measured(cmd, env=_env(), timeout=1800, log_dir=work / "logs")
        if m.rc != 0:
            raise SystemExit(f"{name}: exit {m.rc}\n{m.stderr[-3000:]}")
        rows[name] = {"wall_s": round(m.wall_s, 3), "cpu_s": round(m.cpu_s, 3), "peak_rss_mb": round(m.peak_rss_mb, 1),
                      "us_per_image_cpu": round(m.cpu_s / n * 1e6, 1), "stdout": m.stdout[-400:]}
        print(f"  {name:<20} {m.wall_s:8.2f} s wall {m.cpu_s:8.2f} s CPU {m.peak_rss_mb:7.1f} MB", flush=True)

    py = sys.executable
    run("splits", [py, "-c", "import sys; from carcrawl.export import plan_dataset; plan_dataset(sys.argv[1])", str(out)])
    for fmt in formats:
        dest = work / f"export-{fmt}"
        shutil.rmtree(dest, ignore_errors=True)
        os.sync()  # each write measured from the same start: no earlier stage's dirty pages in flight
        run(f"export {fmt}", [py, "-m", "carcrawl.cli", "export", str(out), "--format", fmt, "--to", str(dest),
                              "--no-dedup"])
        if fmt == "webdataset":
            rows[name := f"export {fmt}"]["mb"] = round(sum(p.stat().st_size for p in dest.glob("*.tar")) / 2**20, 1)
            rows[name]["mb_per_s"] = round(rows[name]["mb"] / rows[name]["wall_s"], 1)
            # the same bytes written plainly to the same folder, right after (what "the disk's speed" means)
            os.sync()
            rows[name]["disk_write_mb_per_s"] = round(disk_write_speed(work, max(int(rows[name]["mb"]) << 20, 64 << 20)), 1)
        shutil.rmtree(dest, ignore_errors=True)
    if "export parquet" in rows:
        rows["export parquet"]["rows_per_s"] = round(n / rows["export parquet"]["wall_s"], 1)
        rows["export parquet"]["rows_per_cpu_s"] = round(n / rows["export parquet"]["cpu_s"], 1)
    if report:
        run("report", [py, "-m", "carcrawl.cli", "report", str(out), "--to", str(work / "report" / "report.html")])
    return rows


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--size", type=int, default=100_000)
    ap.add_argument("--formats", default=",".join(FORMATS))
    ap.add_argument("--no-report", action="store_true")
    ap.add_argument("--no-files", action="store_true", help="rows only (Parquet, splits and report need no files)")
    ap.add_argument("--file-kb", type=int, default=9, help="bytes of each image file in KB (the mission's are ~9 KB; "
                    "the reference job's photos ~460 KB)")
    ap.add_argument("--keep", type=Path, help="build the checkpoint in this folder and keep it")
    ap.add_argument("--reuse", type=Path, help="measure an existing folder made by --keep")
    ap.add_argument("--build-only", action="store_true")
    ap.add_argument("--tag", default="")
    ap.add_argument("--no-lock", action="store_true")
    args = ap.parse_args()
    formats = tuple(f for f in args.formats.split(",") if f)
    base = args.reuse or args.keep or Path(tempfile.mkdtemp(prefix="carcrawl-dataset-bench-"))
    out = base / "out"
    try:
        if not args.reuse:
            t = time.perf_counter()
            build(out, args.size, not args.no_files, args.file_kb * 1000)
            print(f"built {args.size} images in {time.perf_counter() - t:.1f} s: {out}", flush=True)
        if args.build_only:
            return
        with contextlib.ExitStack() as stack:
            if not args.no_lock:
                lock = stack.enter_context(LOCK.open("a"))
                fcntl.flock(lock, fcntl.LOCK_EX)
            rows = measure(out, base / "work", args.size, formats, not args.no_report)
    finally:
        if not (args.keep or args.reuse):
            shutil.rmtree(base, ignore_errors=True)
    table = [[k, f"{r['wall_s']:.2f}", f"{r['cpu_s']:.2f}", f"{r['peak_rss_mb']:.0f}", f"{r['us_per_image_cpu']:.1f}",
              f"{r['cpu_s'] / args.size * MISSION:.0f}"] for k, r in rows.items()]
    print(fmt_table(["stage", "wall s", "CPU s", "peak RSS MB", "CPU us/image", "850k CPU s (linear)"], table))
    if "export parquet" in rows:
        p = rows["export parquet"]
        print(f"parquet: {p['rows_per_s']:,.0f} rows/s wall, {p['rows_per_cpu_s']:,.0f} rows/s of CPU")
    if "export webdataset" in rows:
        w = rows["export webdataset"]
        print(f"webdataset: {w['mb_per_s']} MB/s wall ({w['mb']} MB); a plain buffered write of as many bytes"
              f" to the same folder: {w['disk_write_mb_per_s']} MB/s")
    data = json.loads(RESULTS.read_text()) if RESULTS.exists() else {}
    data[f"{args.size}{':' + args.tag if args.tag else ''}"] = {"machine": machine(), "size": args.size, "stages": rows}
    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    RESULTS.write_text(json.dumps(data, indent=1) + "\n")


if __name__ == "__main__":
    main()
