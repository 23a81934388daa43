"""The mission-scale rehearsal: a crawl of the reference job's shape, through the product itself.

The mission web (:mod:`carcrawl.sandbox.mission`, its own process) answers catalogue queries
("<colour> <make> <model>", the shipped 1 046 models x 10 colours) with ~100 distinct small
pictures each, made from the real photos in ../shared/images and ../shared/images2 at run time,
8 % of them engine-style copies of an earlier result (known near-duplicate clusters) and 2 %
faults. Then, each stage its own measured process (wall, CPU, peak RSS of the process tree):

1. ``carcrawl crawl`` of 90 % of the queries (classify off: this box has no GPU);
2. hashing the never-classified images (``export.dedup.hash_never_classified``: with the classifier
   on, as in the reference job, the hashes come with the verdicts, so this is reported on its own),
   then the near-duplicate pass (``export.dedup.find_near_duplicates``, what ``carcrawl export`` runs);
3. the same crawl grown to 100 % of the queries (a resume: time to its first new download);
4. hashing and the near-duplicate pass again (incremental: only the +10 % are new);
5. the splits (``export.plan_dataset``); 6. ``carcrawl export`` in every format (``--no-dedup``);
7. ``carcrawl report``; 8. ``carcrawl status``.

Targets are the issue's, for ~850k images: time targets are judged on the measured time scaled
linearly to 850 000 images (conservative for stages that do not grow with the images), rates and
RSS as measured; "flat" compares each stage's cost per image with the smallest size measured
before. Results go to ``benchmarks/results/mission_scale.json`` (one entry per size) and the plot
to ``benchmarks/results/mission_scale.png``. Hold the bench lock (the script takes it unless
``--no-lock``). The last line is ``mission-scale: K of N targets met at SIZE images``.

    python benchmarks/mission_scale.py --size 10000
    python benchmarks/mission_scale.py --size 100000
"""

from __future__ import annotations

import argparse
import contextlib
import fcntl
import json
import os
import shutil
import subprocess
import sys
import time
import urllib.request
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "benchmarks"))

from _common import disk_write_speed, fmt_table, machine, run_measured  # noqa: E402

SHARED = ROOT.parent / "shared"
PHOTOS = (SHARED / "images", SHARED / "images2")
RESULTS = ROOT / "benchmarks" / "results"
MISSION = 850_000  # images the reference job keeps
PER_QUERY = 100
IMAGES_PER_QUERY = 98  # 2 % of the results are faults
LOCK = Path("/tmp/carcrawl-bench.lock")
FORMATS = ("imagefolder", "hf", "webdataset", "parquet")


def _env() -> dict[str, str]:
    return {"PYTHONPATH": str(ROOT) + os.pathsep + os.environ.get("PYTHONPATH", "")}


def _carcrawl(*args: str) -> list[str]:
    return [sys.executable, "-m", "carcrawl.cli", *args]


def _py(code: str) -> list[str]:
    return [sys.executable, "-c", code]


def _du(path: Path) -> int:
    """Bytes a file or a folder takes on disk."""
    if path.is_file():
        return path.stat().st_blocks * 512
    total = 0
    for dirpath, _dirs, files in os.walk(path):
        for f in files:
            with contextlib.suppress(OSError):
                total += os.lstat(os.path.join(dirpath, f)).st_blocks * 512
    return total


def _gnu_tar_speed(out: Path, work: Path) -> float | None:
    """MB/s of GNU tar archiving the crawl's image folder into ``work`` (C, one file read per image
    as in a WebDataset export, no metadata): the per-file floor a thumbnail export can reach.
    None (and why, on stderr) where ``tar`` is missing or fails: a reference, never the run's end."""
    tar = shutil.which("tar")
    if tar is None:
        print("GNU tar reference skipped: no tar on PATH", file=sys.stderr)
        return None
    dest = work / "gnu-tar-probe.tar"
    try:
        t = time.perf_counter()
        done = subprocess.run([tar, "cf", str(dest), "-C", str(out), "images"], capture_output=True, text=True)
        dt = time.perf_counter() - t
        if done.returncode != 0:
            print(f"GNU tar reference skipped: tar exited {done.returncode}: {done.stderr[-500:]}", file=sys.stderr)
            return None
        return round(dest.stat().st_size / 2**20 / dt, 1)
    finally:
        dest.unlink(missing_ok=True)


def _get(url: str) -> dict[str, Any]:
    with urllib.request.urlopen(url, timeout=10) as r:  # noqa: S310 - our own loopback server
        return json.loads(r.read())


def _config(path: Path, engine: str) -> Path:
    path.write_text(
        '[crawl]\nsources = ["bing"]\nper_query = 100\nallow_networks = ["127.0.0.0/8"]\n'
        "[download]\nconcurrency = 128\nper_host_concurrency = 4\nper_host_interval = 0.02\nmax_retries = 0\n"
        "[store]\ncommit_rows = 2000\n"
        "[classify]\nenabled = false\n"
        f'[engines.bing]\nrate = 400.0\nburst = 40\nconcurrency = 16\nper_page = 35\nmax_pages = 4\nbase_url = "{engine}"\n'
        "block_backoff = 1.0\n"
    )
    return path


class Stages:
    """Runs and records one measured command per stage."""

    def __init__(self, work: Path) -> None:
        self.work = work
        self.rows: dict[str, dict[str, Any]] = {}

    def run(self, name: str, cmd: list[str], images: int, *, disk: Path | None = None, timeout: float = 3600,
            may_time_out: bool = False) -> Any:
        m = run_measured(cmd, env=_env(), timeout=timeout, log_dir=self.work / "logs")
        timed_out = may_time_out and m.wall_s >= timeout
        if m.rc != 0 and not timed_out:
            raise SystemExit(f"{name}: exit {m.rc}\n{m.stderr[-3000:]}")
        self.rows[name] = {"wall_s": round(m.wall_s, 3), "cpu_s": round(m.cpu_s, 3),
                           "peak_rss_mb": round(m.peak_rss_mb, 1), "images": images,
                           "us_per_image": round(m.wall_s / max(1, images) * 1e6, 1),
                           "disk_mb": round(_du(disk) / 2**20, 1) if disk is not None else None}
        if timed_out:
            self.rows[name]["timed_out"] = True
        print(f"  {name:<22} {m.wall_s:8.2f} s wall {m.cpu_s:8.2f} s CPU {m.peak_rss_mb:7.1f} MB"
              + (" (stopped: time limit)" if timed_out else ""), flush=True)
        return m


def _cluster_quality(manifest: Path) -> dict[str, Any]:
    """Pairs of the near-duplicate pass vs the web's known clusters (from the URLs)."""
    import pyarrow.parquet as pq

    from carcrawl.sandbox.mission import truth_of

    rows = pq.read_table(manifest, columns=["sha256", "url", "cluster"]).to_pylist()
    truth: dict[str, list[str]] = {}
    found: dict[str, list[str]] = {}
    kinds: dict[str, int] = {}
    for r in rows:
        t = truth_of(r["url"] or "")
        if t is None:
            continue
        kinds[t.kind] = kinds.get(t.kind, 0) + 1
        truth.setdefault(t.cluster, []).append(r["sha256"])
        if r["cluster"]:
            found.setdefault(r["cluster"], []).append(r["sha256"])

    def pairs(groups: dict[str, list[str]]) -> set[tuple[str, str]]:
        out = set()
        for members in groups.values():
            m = sorted(set(members))
            out.update((a, b) for i, a in enumerate(m) for b in m[i + 1:])
        return out

    t, f = pairs(truth), pairs(found)
    return {"images_by_kind": kinds, "true_pairs": len(t), "found_pairs": len(f), "correct_pairs": len(t & f),
            "precision": round(len(t & f) / len(f), 4) if f else None,
            "recall": round(len(t & f) / len(t), 4) if t else None}


def run(size: int, work: Path, keep: bool, dedup_timeout: float = 3600) -> dict[str, Any]:
    shutil.rmtree(work, ignore_errors=True)
    work.mkdir(parents=True)
    out = work / "out"
    info = work / "web.json"
    queries = max(2, round(size / IMAGES_PER_QUERY))
    first = max(1, round(queries * 0.9))
    web = subprocess.Popen(
        [sys.executable, "-m", "carcrawl.sandbox.mission", *sum((["--photos", str(p)] for p in PHOTOS), []),
         "--hosts", "64", "--info", str(info), "--per-query", str(PER_QUERY)],
        env={**os.environ, **_env()}, stdout=subprocess.DEVNULL, stderr=open(work / "web.err", "wb"))  # noqa: SIM115
    try:
        for _ in range(600):
            if info.exists() or web.poll() is not None:
                break
            time.sleep(0.1)
        if not info.exists():
            raise SystemExit(f"the mission web did not start: {(work / 'web.err').read_text()[-2000:]}")
        wi = json.loads(info.read_text())
        config = _config(work / "config.toml", wi["engine"])
        st = Stages(work)
        crawl = _carcrawl("crawl", "--config", str(config), "--out", str(out), "--no-classify", "--json", "--quiet")
        print(f"mission-scale {size}: {queries} queries x {PER_QUERY} results ({wi['photos']} source photos)", flush=True)

        def stored() -> int:
            counts = json.loads(subprocess.run(_carcrawl("status", str(out), "--json"), env={**os.environ, **_env()},
                                               capture_output=True, text=True, check=True).stdout)
            return int(counts["images"]["by_state"].get("done", 0)) + int(counts["images"]["by_state"].get("rejected", 0))

        st.run("crawl (90 %)", [*crawl, "--max-queries", str(first)], first * IMAGES_PER_QUERY, disk=out)
        n90 = stored()
        st.rows["crawl (90 %)"]["images"] = n90
        dedup = _py("import sys; from carcrawl.export.dedup import find_near_duplicates; print(find_near_duplicates(sys.argv[1]))")
        hashing = _py("import sys; from carcrawl.export.dedup import hash_never_classified as h; print(h(sys.argv[1]))")
        # with the classifier on (the reference job) the hashes come with the verdicts; with it off,
        # export decodes every image once to hash it: measured as its own stage
        st.run("hash unclassified", [*hashing, str(out)], n90)
        st.run("near-duplicates", [*dedup, str(out)], n90, timeout=dedup_timeout, may_time_out=True)
        _get(wi["control"] + "/reset")
        t0 = time.time()
        st.run("resume (+10 %)", [*crawl, "--max-queries", str(queries)], queries * IMAGES_PER_QUERY - n90, disk=out)
        first_new = _get(wi["control"])["first_image_at"]
        n = stored()
        st.rows["resume (+10 %)"]["images"] = n - n90
        st.rows["resume (+10 %)"]["first_new_download_s"] = round(first_new - t0, 3) if first_new else None
        st.rows["crawl (90 %)"]["us_per_image"] = round(st.rows["crawl (90 %)"]["wall_s"] / max(1, n90) * 1e6, 1)
        st.run("hash unclassified +10 %", [*hashing, str(out)], n - n90)
        st.run("near-duplicates +10 %", [*dedup, str(out)], n, timeout=dedup_timeout / 3, may_time_out=True)
        st.run("splits", [*_py("import sys; from carcrawl.export import plan_dataset; plan_dataset(sys.argv[1])"),
                          str(out)], n)
        for fmt in FORMATS:
            dest = work / f"export-{fmt}"
            m = st.run(f"export {fmt}", _carcrawl("export", str(out), "--format", fmt, "--to", str(dest), "--no-dedup"),
                       n, disk=dest)
            exported = int(next((w for w in m.stdout.split("images in")[0].split()[-1:]), "0") or 0)
            st.rows[f"export {fmt}"]["exported"] = exported
        st.rows["export parquet"]["rows_per_s"] = round(n / st.rows["export parquet"]["wall_s"], 1)
        for fmt in ("imagefolder", "hf", "webdataset"):
            r = st.rows[f"export {fmt}"]
            r["images_per_s"] = round(r["exported"] / r["wall_s"], 1)
        wds = st.rows["export webdataset"]
        wds_bytes = sum(p.stat().st_size for p in (work / "export-webdataset").glob("*.tar"))
        wds["mb_per_s"] = round(wds_bytes / 2**20 / wds["wall_s"], 1)
        wds["disk_write_mb_per_s"] = round(disk_write_speed(work, max(wds_bytes, 64 << 20)), 1)
        wds["gnu_tar_mb_per_s"] = _gnu_tar_speed(out, work)
        st.run("report", _carcrawl("report", str(out), "--to", str(work / "report" / "report.html")), n)
        st.run("status", _carcrawl("status", str(out), "--json"), n)
        quality = _cluster_quality(work / "export-parquet" / "manifest.parquet")
        result = {"size": size, "queries": queries, "images": n, "stages": st.rows, "clusters": quality,
                  "disk": {"images_mb": round(_du(out / "images") / 2**20, 1),
                           "checkpoint_mb": round(sum(_du(p) for p in out.glob("checkpoint.sqlite*")) / 2**20, 1)},
                  "machine": machine()}
        return result
    finally:
        web.terminate()
        try:
            web.wait(10)
        except subprocess.TimeoutExpired:
            web.kill()
        if not keep:
            shutil.rmtree(work, ignore_errors=True)


# ---------------------------------------------------------------------------------- targets


def targets(r: dict[str, Any], smallest: dict[str, Any] | None) -> list[tuple[str, str, bool | None]]:
    """(target, measured, met) for one run; ``smallest``: the smallest other size measured."""
    s = r["stages"]
    out: list[tuple[str, str, bool | None]] = []

    def at_mission(stage: str, limit: float, label: str) -> None:
        if s[stage].get("timed_out"):
            out.append((label, f"did not finish in {s[stage]['wall_s']:.0f} s at {s[stage]['images']:,} images", False))
            return
        v, how = extrapolate(r, smallest, stage)
        out.append((label, f"{v:.1f} s at 850k ({how}; measured {s[stage]['wall_s']:.2f} s)", v <= limit))

    at_mission("near-duplicates", 180, "near-duplicate pass <= 3 min")
    at_mission("near-duplicates +10 %", 30, "incremental after +10 % <= 30 s")
    if "hash unclassified" in s:
        h = s["hash unclassified"]
        per = h["cpu_s"] / max(1, h["images"]) * 1e3
        out.append(("(no target) hashing never-classified images, which the reference job's classifier does",
                    f"{per:.2f} ms CPU/image: {per * MISSION / 1e3 / 60 / 2:.0f} min at 850k on 2 cores "
                    f"(measured {h['wall_s']:.1f} s wall for {h['images']:,})", None))
    for fmt in ("imagefolder", "hf"):
        v = s[f"export {fmt}"]["images_per_s"]
        out.append((f"export {fmt} >= 5 000 images/s", f"{v:,.0f} images/s", v >= 5000))
    v = s["export parquet"]["rows_per_s"]
    out.append(("Parquet manifest >= 50 000 rows/s", f"{v:,.0f} rows/s", v >= 50_000))
    w = s["export webdataset"]
    out.append(("WebDataset at the disk's write speed (>= 80 %)",
                f"{w['mb_per_s']:.0f} MB/s vs {w['disk_write_mb_per_s']:.0f} MB/s", w["mb_per_s"] >= 0.8 * w["disk_write_mb_per_s"]))
    if w.get("gnu_tar_mb_per_s"):
        out.append(("(no target) the per-file floor: GNU tar of the same image folder",
                    f"{w['gnu_tar_mb_per_s']:.0f} MB/s; WebDataset is {w['mb_per_s'] / w['gnu_tar_mb_per_s']:.0%} of it", None))
    at_mission("report", 60, "report <= 60 s")
    at_mission("status", 1, "status <= 1 s")
    first = s["resume (+10 %)"].get("first_new_download_s")
    out.append(("resume to first new download <= 3 s", f"{first} s (measured; grows with queries, not images)",
                first is not None and first <= 3))
    worst = max(s.values(), key=lambda x: x["peak_rss_mb"])
    out.append(("peak RSS of every command <= 1.5 GB", f"max {worst['peak_rss_mb']:.0f} MB", worst["peak_rss_mb"] <= 1536))
    if smallest is None:
        out.append(("cost per image flat (+-20 %) from the smallest size", "one size measured", None))
    else:
        worse = []
        for name, row in s.items():
            base = smallest["stages"].get(name)
            if not base or name == "status":
                continue
            ratio = row["us_per_image"] / max(1e-9, base["us_per_image"])
            if ratio > 1.2:
                worse.append(f"{name} x{ratio:.2f}")
        out.append((f"cost per image flat (+-20 %) from {smallest['images']:,} images",
                    "; ".join(worse) or "all within 20 %", not worse))
    return out


def extrapolate(r: dict[str, Any], smallest: dict[str, Any] | None, stage: str) -> tuple[float, str]:
    """A stage's wall time at 850k images: the line through the two measured sizes (fixed cost +
    cost per image) where a smaller size was measured, else through the origin (all cost per image,
    the conservative reading of one point)."""
    row = r["stages"][stage]
    n, t = max(1, row["images"]), row["wall_s"]
    mission_n = MISSION * n / max(1, r["images"])  # a stage over a part (the +10 %) stays that part
    base = smallest["stages"].get(stage) if smallest else None
    if base and base["images"] < n:
        per = max(0.0, (t - base["wall_s"]) / (n - base["images"]))
        return t + per * (mission_n - n), f"line through {base['images']:,} and {n:,}"
    return t * mission_n / n, "linear from one size"


def plot(runs: dict[str, dict[str, Any]], path: Path) -> Path | None:
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        print("matplotlib is not installed (pip install -e '.[bench]'): no plot")
        return None
    sizes = sorted(runs, key=int)
    stages = list(runs[sizes[-1]]["stages"])
    fig, ax = plt.subplots(figsize=(9, 5.5))
    ax.set_prop_cycle(color=plt.get_cmap("tab20").colors)  # one colour per stage (tab10 repeats after 10)
    xs = [runs[k]["images"] for k in sizes]
    for name in stages:
        rows = [runs[k]["stages"].get(name, {}) for k in sizes]
        ys = [row.get("wall_s") for row in rows]
        if None in ys or any(row.get("timed_out") for row in rows):
            continue  # a stage stopped at its time limit has no point to draw
        line = ax.plot(xs, ys, marker="o", label=name)[0]
        ext = extrapolate(runs[sizes[-1]], runs[sizes[0]] if len(sizes) > 1 else None, name)[0]
        ax.plot([xs[-1], MISSION], [ys[-1], ext], ls="--", color=line.get_color(), alpha=0.5)
    ax.set_xscale("log")
    ax.set_yscale("log")
    ax.set_xlabel("stored images")
    ax.set_ylabel("wall time, s")
    ax.axvline(MISSION, color="#999", lw=0.8)
    ax.set_title("mission-scale rehearsal: wall time per stage (dashed: the line through the points, to 850k)",
                 fontsize=10)
    ax.legend(fontsize=7, ncol=2)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    return path


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--size", type=int, default=10_000, help="images to crawl (about)")
    ap.add_argument("--work", type=Path, default=ROOT / "benchmarks" / "_work" / "mission")
    ap.add_argument("--results", type=Path, default=RESULTS / "mission_scale.json")
    ap.add_argument("--keep", action="store_true", help="keep the crawl and exports")
    ap.add_argument("--no-lock", action="store_true", help="do not take the bench lock (untimed smoke runs)")
    ap.add_argument("--no-plot", action="store_true")
    ap.add_argument("--dedup-timeout", type=float, default=3600,
                    help="stop the first near-duplicate pass after this many seconds (the +10 %% pass: a third)")
    ap.add_argument("--report-only", action="store_true",
                    help="run nothing: print the table and verdicts of the stored run of --size (after other sizes ran)")
    args = ap.parse_args()
    runs: dict[str, Any] = {}
    if args.results.exists():
        runs = json.loads(args.results.read_text()).get("runs", {})
    if args.report_only:
        if str(args.size) not in runs:
            raise SystemExit(f"{args.results}: no run of size {args.size}")
        r = runs[str(args.size)]
    else:
        lock = None
        if not args.no_lock:
            lock = open(LOCK, "w")  # noqa: SIM115 - held until the process ends
            fcntl.flock(lock, fcntl.LOCK_EX)
        r = run(args.size, args.work / str(args.size), args.keep, args.dedup_timeout)
        if args.results.exists():
            runs = json.loads(args.results.read_text()).get("runs", {})
        runs[str(args.size)] = r
        args.results.parent.mkdir(parents=True, exist_ok=True)
        tmp = args.results.with_suffix(".json.tmp")
        tmp.write_text(json.dumps({"benchmark": "mission_scale", "runs": runs}, indent=1) + "\n")
        tmp.replace(args.results)
    others = [v for k, v in runs.items() if int(k) < args.size]
    smallest = min(others, key=lambda v: v["images"]) if others else None
    print()
    print(fmt_table(["stage", "images", "wall s", "CPU s", "peak RSS MB", "us/image", "disk MB", "850k (linear) s"],
                    [[k, v["images"], v["wall_s"], v["cpu_s"], v["peak_rss_mb"], v["us_per_image"], v["disk_mb"] or "",
                      round(extrapolate(r, smallest, k)[0], 1)] for k, v in r["stages"].items()]))
    q = r["clusters"]
    print(f"\nnear-duplicate clusters vs the web's truth: {q['correct_pairs']} of {q['true_pairs']} true pairs found "
          f"(recall {q['recall']}), {q['found_pairs']} pairs found (precision {q['precision']}); "
          f"images by kind {q['images_by_kind']}")
    print(f"disk: images {r['disk']['images_mb']} MB, checkpoint {r['disk']['checkpoint_mb']} MB")
    verdicts = targets(r, smallest)
    print()
    print(fmt_table(["target", "measured", "met"],
                    [[t, m, "n/a" if ok is None else ("yes" if ok else "NO")] for t, m, ok in verdicts]))
    if not args.no_plot and len(runs) >= 1:
        p = plot(runs, RESULTS / "mission_scale.png")
        if p:
            print(f"plot: {p.relative_to(ROOT)}")
    counted = [ok for _t, _m, ok in verdicts if ok is not None]
    print(f"mission-scale: {sum(counted)} of {len(counted)} targets met at {r['images']} images")


if __name__ == "__main__":
    main()
