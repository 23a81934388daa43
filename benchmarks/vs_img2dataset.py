"""carcrawl against img2dataset, and both against the bare aiohttp ceiling: same URLs, one run.

The sandbox serves N photos re-encoded to a realistic size mix (~20 KB .. 2 MB, mean ~450 KB)
from H loopback hosts (20-80 ms latency each), in its own process, every body unique per URL.
Then, alternating A B C A B C ... on the same URL list:

- A ``carcrawl fetch --no-classify``: download, magic check, sha256, content-addressed file,
  SQLite checkpoint; per-host limits on (cap per host, minimum interval between request starts),
  robots.txt fetched per host;
- B img2dataset (its own venv under benchmarks/_work, never a project dependency):
  ``--output_format files --resize_mode no --disable_all_reencoding True``, processes = cores,
  ``--thread_count`` tuned (``--tune``); no per-host limits;
- C ``benchmarks/ceiling.py``: aiohttp fetch + write, nothing else.

Each is a fresh process measured from outside: images/s and MB/s over the whole command (start-up
included), CPU seconds per 1 000 images (the whole process tree, from wait4), peak RSS of the tree
(children included), success count, and the server's CPU during the run.

    python benchmarks/vs_img2dataset.py --urls 4000            # ~3 min
    python benchmarks/vs_img2dataset.py --urls 1000 --tune     # pick img2dataset's thread count

The last line printed is ``ratio carcrawl/img2dataset: X.XX``.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

from _common import (  # noqa: E402
    BENCH,
    PYTHON,
    WORK,
    CrawlKnobs,
    Measured,
    carcrawl_config,
    carcrawl_fetch_cmd,
    carcrawl_json,
    compile_checkout,
    files_under,
    fmt_table,
    remove,
    run_measured,
    start_sandbox,
    write_result,
    write_urls,
)

I2D_VENV = WORK / "i2d-venv"
I2D = I2D_VENV / "bin" / "img2dataset"
I2D_ENV = {"NO_ALBUMENTATIONS_UPDATE": "1", "WANDB_MODE": "disabled", "TQDM_DISABLE": "1"}
DEFAULT_I2D_THREADS = 256  # img2dataset's own best in `--tune` on this machine (see RESULTS.md)


def i2d_available(install: bool = True) -> str | None:
    """None when img2dataset can run, else why not. When missing it is installed from PyPI into
    its own venv under benchmarks/_work (never into the environment that runs carcrawl)."""
    if I2D.exists():
        return None
    where = I2D_VENV.relative_to(BENCH.parent)
    if not install:
        return f"img2dataset is not installed in {where} (--no-install given)"
    print(f"installing img2dataset into {where} (once; a minute or two) ...", file=sys.stderr, flush=True)
    try:
        subprocess.run([sys.executable, "-m", "venv", "--clear", str(I2D_VENV)], check=True)
        subprocess.run([str(I2D_VENV / "bin" / "pip"), "install", "-q", "img2dataset"], check=True)
    except (OSError, subprocess.CalledProcessError) as e:
        return f"could not install img2dataset into {where}: {e}"
    return None if I2D.exists() else f"pip ran but {where}/bin/img2dataset is missing"


def i2d_cmd(urls: Path, out: Path, n: int, threads: int) -> list[str]:
    procs = os.cpu_count() or 1
    shard = max(100, -(-n // (4 * procs)))  # several shards per process, or one process idles
    return [
        str(I2D), "--url_list", str(urls), "--input_format", "txt", "--output_folder", str(out),
        "--output_format", "files", "--resize_mode", "no", "--disable_all_reencoding", "True",
        "--processes_count", str(procs), "--thread_count", str(threads),
        "--number_sample_per_shard", str(shard), "--extract_exif", "False", "--enable_wandb", "False",
        "--timeout", "30", "--retries", "0",
    ]


def i2d_successes(out: Path) -> int | None:
    total = None
    for p in out.glob("*_stats.json"):
        try:
            total = (total or 0) + int(json.loads(p.read_text()).get("successes", 0))
        except (ValueError, OSError):
            continue
    return total


def run_one(tool: str, urls: Path, n: int, sandbox: Any, knobs: CrawlKnobs, threads: int,
            out_root: Path = WORK / "vs") -> dict[str, Any]:
    out = out_root / f"out-{tool}"
    remove(out)
    cfg = carcrawl_config(WORK / "vs" / "carcrawl.toml", knobs)
    if tool == "carcrawl":
        cmd = carcrawl_fetch_cmd(urls, out, cfg)
        env: dict[str, str] = {}
    elif tool == "img2dataset":
        cmd, env = i2d_cmd(urls, out, n, threads), I2D_ENV
    else:
        cmd, env = [PYTHON, str(BENCH / "ceiling.py"), str(urls), str(out), "--concurrency",
                    str(knobs.concurrency)], {}
    server_before = sandbox.cpu_seconds_now() or 0.0
    m: Measured = run_measured(cmd, env=env, timeout=560)
    server_cpu = (sandbox.cpu_seconds_now() or 0.0) - server_before
    files, nbytes = files_under(out)
    ok = files
    extra: dict[str, Any] = {}
    if tool == "carcrawl":
        summary = carcrawl_json(m.stdout)
        ok = int(summary.get("stats", {}).get("counts", summary.get("stats", {})).get("fetched", files) or files)
    elif tool == "img2dataset":
        extra["own_successes"] = i2d_successes(out)
    if m.rc != 0:
        extra["stderr_tail"] = m.stderr[-2000:]
    remove(out)
    return {
        "tool": tool,
        "rc": m.rc,
        "ok": ok,
        "files": files,
        "mb": nbytes / 1e6,
        "wall_s": m.wall_s,
        "images_per_s": ok / m.wall_s,
        "mb_per_s": nbytes / 1e6 / m.wall_s,
        "cpu_s": m.cpu_s,
        "cpu_s_per_1000": 1000 * m.cpu_s / max(ok, 1),
        "peak_rss_mb": m.peak_rss_mb,
        "server_cpu_s": server_cpu,
        **extra,
    }


def summarise(runs: list[dict[str, Any]], tools: list[str]) -> list[dict[str, Any]]:
    rows = []
    for t in tools:
        rs = [r for r in runs if r["tool"] == t]
        if not rs:
            continue
        med = {k: statistics.median(r[k] for r in rs) for k in
               ("images_per_s", "mb_per_s", "cpu_s_per_1000", "peak_rss_mb", "ok", "server_cpu_s", "wall_s")}
        rates = [r["images_per_s"] for r in rs]
        rows.append({"tool": t, "runs": len(rs), **med, "images_per_s_min": min(rates), "images_per_s_max": max(rates)})
    return rows


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--urls", type=int, default=4000, help="URLs in the list (default 4000)")
    p.add_argument("--rounds", type=int, default=2, help="A B C repetitions (default 2)")
    p.add_argument("--hosts", type=int, default=64)
    p.add_argument("--latency-ms", type=float, nargs=2, default=(20.0, 80.0))
    p.add_argument("--concurrency", type=int, default=64, help="carcrawl's and the ceiling's global concurrency")
    p.add_argument("--per-host-concurrency", type=int, default=4)
    p.add_argument("--per-host-interval", type=float, default=0.02)
    p.add_argument("--i2d-threads", type=int, default=DEFAULT_I2D_THREADS)
    p.add_argument("--tune", action="store_true", help="only try img2dataset thread counts and carcrawl concurrencies")
    p.add_argument("--no-ceiling", action="store_true")
    p.add_argument("--no-install", action="store_true", help="do not pip-install img2dataset when it is missing")
    p.add_argument("--name", default="vs_img2dataset", help="results/<name>.json")
    p.add_argument("--out-root", type=Path, default=WORK / "vs",
                   help="where the three write their files (e.g. /dev/shm to take the disk out of it)")
    a = p.parse_args()

    compile_checkout()
    why_not = i2d_available(install=not a.no_install)
    if why_not:
        print(f"img2dataset skipped: {why_not}", file=sys.stderr)
    knobs = CrawlKnobs(a.concurrency, a.per_host_concurrency, a.per_host_interval)
    sandbox = start_sandbox(hosts=a.hosts, latency_ms=tuple(a.latency_ms), size_mix=True)
    try:
        urls = WORK / "vs" / "urls.txt"
        n = write_urls(urls, sandbox.layout.image_urls(a.urls, size_mix=True))
        if a.tune:
            tune(urls, n, sandbox, knobs, why_not)
            return
        tools = ["carcrawl"] + ([] if why_not else ["img2dataset"]) + ([] if a.no_ceiling else ["ceiling"])
        runs: list[dict[str, Any]] = []
        for r in range(a.rounds):
            for t in tools:
                res = run_one(t, urls, n, sandbox, knobs, a.i2d_threads, a.out_root)
                res["round"] = r
                runs.append(res)
                print(f"round {r} {t:<11} {res['ok']:>6} ok  {res['images_per_s']:8.1f} img/s  "
                      f"{res['mb_per_s']:7.1f} MB/s  {res['cpu_s_per_1000']:6.2f} cpu-s/1k  "
                      f"{res['peak_rss_mb']:7.1f} MB  server {res['server_cpu_s']:5.1f} cpu-s  rc={res['rc']}",
                      flush=True)
    finally:
        server_total = sandbox.stop()
    summary = summarise(runs, tools)
    ratios = ratio_pairs(runs, "img2dataset")
    ceiling = ratio_pairs(runs, "ceiling")
    print()
    print(f"{n} URLs, {a.hosts} hosts, latency {a.latency_ms[0]:.0f}-{a.latency_ms[1]:.0f} ms, "
          f"carcrawl concurrency {a.concurrency}, per host {a.per_host_concurrency} / {a.per_host_interval}s; "
          f"img2dataset {os.cpu_count()} processes x {a.i2d_threads} threads; files under {a.out_root}; "
          f"medians of {a.rounds} rounds")
    print(fmt_table(
        ["tool", "images/s (min-max)", "MB/s", "CPU-s / 1000 img", "peak RSS MB", "ok", "server CPU-s"],
        [[s["tool"], f"{s['images_per_s']:.0f} ({s['images_per_s_min']:.0f}-{s['images_per_s_max']:.0f})",
          s["mb_per_s"], s["cpu_s_per_1000"], s["peak_rss_mb"], int(s["ok"]), s["server_cpu_s"]] for s in summary],
    ))
    write_result(a.name, {
        "command": " ".join(["python", "benchmarks/vs_img2dataset.py", *sys.argv[1:]]),
        "urls": n, "hosts": a.hosts, "latency_ms": list(a.latency_ms), "carcrawl": knobs.as_dict(),
        "out_root": "benchmarks/_work/vs" if a.out_root == WORK / "vs" else str(a.out_root),
        "i2d_threads": a.i2d_threads, "i2d_processes": os.cpu_count(), "img2dataset": why_not or "ran",
        "runs": runs, "summary": summary, "server_cpu_total_s": server_total,
        "ratio_per_round": ratios, "ceiling_share_per_round": ceiling,
        "ratio": statistics.median(ratios) if ratios else None,
        "ceiling_share": statistics.median(ceiling) if ceiling else None,
    })
    if ceiling:
        print(f"carcrawl as share of the ceiling: {statistics.median(ceiling):.0%} "
              f"(per round: {', '.join(f'{c:.0%}' for c in ceiling)})")
    if ratios:
        print(f"per round: {', '.join(f'{r:.2f}' for r in ratios)}")
        print(f"ratio carcrawl/img2dataset: {statistics.median(ratios):.2f}")
    else:
        print("ratio carcrawl/img2dataset: n/a (img2dataset did not run)")


def ratio_pairs(runs: list[dict[str, Any]], other: str) -> list[float]:
    """carcrawl's images/s over ``other``'s, round by round (measured minutes apart, same server)."""
    out = []
    for r in sorted({x["round"] for x in runs}):
        a = [x for x in runs if x["round"] == r and x["tool"] == "carcrawl"]
        b = [x for x in runs if x["round"] == r and x["tool"] == other]
        if a and b and b[0]["images_per_s"] > 0:
            out.append(a[0]["images_per_s"] / b[0]["images_per_s"])
    return out


def tune(urls: Path, n: int, sandbox: Any, knobs: CrawlKnobs, why_not: str | None) -> None:
    """One run per setting: img2dataset thread counts, carcrawl global concurrency."""
    rows = []
    if not why_not:
        for threads in (16, 32, 64, 128, 256):
            r = run_one("img2dataset", urls, n, sandbox, knobs, threads)
            rows.append(["img2dataset", f"threads={threads}", r["images_per_s"], r["cpu_s_per_1000"], r["ok"]])
            print(rows[-1], flush=True)
    for conc in (32, 64, 128, 256):
        k = CrawlKnobs(conc, knobs.per_host_concurrency, knobs.per_host_interval)
        r = run_one("carcrawl", urls, n, sandbox, k, 0)
        rows.append(["carcrawl", f"concurrency={conc}", r["images_per_s"], r["cpu_s_per_1000"], r["ok"]])
        print(rows[-1], flush=True)
    print(fmt_table(["tool", "setting", "images/s", "CPU-s / 1000", "ok"], rows))
    write_result("vs_img2dataset_tune", {"urls": n, "rows": rows})


if __name__ == "__main__":
    main()
