"""How carcrawl's cost grows with the size of the crawl: 1k, 10k, 100k URLs (1M where time allows).

For each size, one fresh ``carcrawl fetch --no-classify`` over that many sandbox URLs (small
images, ~10 KB each, unique bodies, 64 loopback hosts with 20-80 ms latency, the server in its own
process), measured from outside: images/s, peak RSS of the process tree, checkpoint size. Then the
resume probe: the last 1 % of the candidates are put back to ``in_flight`` (what a kill -9 in the
middle of them leaves behind) and the same command is run again; resume time is from the start of
that process to the first response the sandbox finishes for it (its first host's robots.txt, one
20-80 ms latency before its first image), plus the time to finish.

    python benchmarks/scaling.py                     # 1k, 10k, 100k: ~6 min
    python benchmarks/scaling.py --sizes 1000 10000  # quicker

Writes results/scaling.json and results/scaling.png (matplotlib from the benchmark tools venv;
the plot is skipped with a message when it is missing).
"""

from __future__ import annotations

import argparse
import json
import sqlite3
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

from _common import (  # noqa: E402
    RESULTS,
    WORK,
    CrawlKnobs,
    carcrawl_config,
    carcrawl_fetch_cmd,
    carcrawl_json,
    fmt_table,
    remove,
    run_measured,
    start_sandbox,
    thumb_urls,
    write_result,
    write_urls,
)

TOOLS_PY = WORK / "tools-venv" / "bin" / "python"


def served(sandbox: Any) -> int:
    """Responses the sandbox has finished so far (all hosts)."""
    return sum(sandbox.stats()["statuses"].values())


def measure_size(sandbox: Any, urls_list: list[str], tag: str, knobs: CrawlKnobs, *, resume: bool = True,
                 keep: bool = False) -> dict[str, Any]:
    """One fresh crawl of ``urls_list`` and (optionally) the resume probe on its checkpoint."""
    n = len(urls_list)
    base = WORK / "scaling" / tag
    remove(base)
    urls = base / "urls.txt"
    write_urls(urls, urls_list)
    out = base / "out"
    cfg = carcrawl_config(base / "carcrawl.toml", knobs)
    server0 = sandbox.cpu_seconds_now() or 0.0
    m = run_measured(carcrawl_fetch_cmd(urls, out, cfg), timeout=590)
    server_cpu = (sandbox.cpu_seconds_now() or 0.0) - server0
    summary = carcrawl_json(m.stdout)
    counts = summary.get("stats", {}).get("counts", {})
    ok = int(counts.get("fetched", 0))
    ckpt = out / "checkpoint.sqlite"
    row: dict[str, Any] = {
        "urls": n, "rc": m.rc, "ok": ok, "failed": int(counts.get("failed", 0)), "wall_s": m.wall_s,
        "images_per_s": ok / m.wall_s, "mb_per_s": int(counts.get("bytes", 0)) / 1e6 / m.wall_s, "cpu_s": m.cpu_s, "cpu_s_per_1000": 1000 * m.cpu_s / max(ok, 1),
        "peak_rss_mb": m.peak_rss_mb, "server_cpu_s": server_cpu,
        "checkpoint_mb": sum(p.stat().st_size for p in out.glob("checkpoint.sqlite*")) / 1e6,
    }
    if m.rc != 0:
        row["stderr_tail"] = m.stderr[-1500:]
    if resume and ckpt.exists():
        row.update(resume_probe(sandbox, urls, out, cfg, ckpt, n))
    if not keep:
        remove(base)
    return row


def resume_probe(sandbox: Any, urls: Path, out: Path, cfg: Path, ckpt: Path, n: int) -> dict[str, Any]:
    """Put the last 1 % back in flight (as a kill leaves them), rerun, time start -> first response."""
    k = max(100, n // 100)
    con = sqlite3.connect(ckpt)  # the benchmark's own fixture step; carcrawl's code goes through store/
    with con:
        con.execute("UPDATE candidates SET state='in_flight' WHERE id > (SELECT max(id) FROM candidates) - ?", (k,))
    con.close()
    before = served(sandbox)
    start = time.perf_counter()
    proc = subprocess.Popen(carcrawl_fetch_cmd(urls, out, cfg, fresh=False), stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)
    first = None
    while proc.poll() is None and first is None:
        if served(sandbox) > before:
            first = time.perf_counter() - start
            break
        time.sleep(0.005)
    stdout, _ = proc.communicate(timeout=300)
    total = time.perf_counter() - start
    redone = int(carcrawl_json(stdout).get("stats", {}).get("counts", {}).get("fetched", 0))
    return {"resume_rows": k, "resume_first_response_s": first, "resume_total_s": total, "resume_fetched": redone}


def plot(rows: list[dict[str, Any]], path: Path) -> str | None:
    """A small PNG of the curve, drawn by the tools venv's matplotlib (not a project dependency)."""
    if not TOOLS_PY.exists():
        return f"plot skipped: no {TOOLS_PY} (python3 -m venv benchmarks/_work/tools-venv && .../pip install matplotlib)"
    data = json.dumps([{k: r.get(k) for k in ("urls", "images_per_s", "peak_rss_mb", "checkpoint_mb",
                                                "resume_first_response_s")} for r in rows])
    script = f"""
import json, matplotlib
matplotlib.use("Agg")
import matplotlib.pyplot as plt
rows = json.loads({data!r})
x = [r["urls"] for r in rows]
fig, axes = plt.subplots(1, 4, figsize=(12, 2.8), dpi=80)
for ax, key, title in zip(axes, ["images_per_s", "peak_rss_mb", "checkpoint_mb", "resume_first_response_s"],
                          ["images/s", "peak RSS (MB)", "checkpoint (MB)", "resume: start to first response (s)"]):
    ax.plot(x, [r[key] or 0 for r in rows], "o-")
    ax.set_xscale("log"); ax.set_title(title, fontsize=9); ax.set_xlabel("URLs", fontsize=8)
    ax.tick_params(labelsize=7); ax.set_ylim(bottom=0)
fig.suptitle("carcrawl fetch, scaling curve (2-core box, sandbox on loopback)", fontsize=9)
fig.tight_layout()
fig.savefig({str(path)!r})
"""
    r = subprocess.run([str(TOOLS_PY), "-c", script], capture_output=True, text=True)
    if r.returncode != 0:
        return f"plot failed: {r.stderr[-500:]}"
    return None


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--sizes", type=int, nargs="+", default=[1000, 10_000, 100_000])
    p.add_argument("--hosts", type=int, default=64)
    p.add_argument("--concurrency", type=int, default=128)
    p.add_argument("--name", default="scaling")
    a = p.parse_args()
    knobs = CrawlKnobs(concurrency=a.concurrency)
    sandbox = start_sandbox(hosts=a.hosts, size_mix=False)
    rows = []
    try:
        for n in a.sizes:
            row = measure_size(sandbox, thumb_urls(sandbox.layout, n), f"n{n}", knobs)
            rows.append(row)
            print(f"{n:>8} URLs: {row['images_per_s']:7.0f} img/s  peak RSS {row['peak_rss_mb']:6.1f} MB  "
                  f"checkpoint {row['checkpoint_mb']:6.1f} MB  resume {row.get('resume_first_response_s') or 0:5.2f} s "
                  f"(total {row.get('resume_total_s', 0):5.2f} s)  rc={row['rc']}", flush=True)
    finally:
        sandbox.stop()
    print(fmt_table(
        ["URLs", "images/s", "CPU-s / 1000", "peak RSS MB", "checkpoint MB", "resume: first response s",
         "resume: done s"],
        [[r["urls"], r["images_per_s"], r["cpu_s_per_1000"], r["peak_rss_mb"], r["checkpoint_mb"],
          r.get("resume_first_response_s") or 0.0, r.get("resume_total_s") or 0.0] for r in rows],
    ))
    png = RESULTS / f"{a.name}.png"
    problem = plot(rows, png)
    print(problem or f"plot: {png} ({png.stat().st_size // 1024} KB)")
    write_result(a.name, {"command": " ".join(["python", "benchmarks/scaling.py", *sys.argv[1:]]),
                          "hosts": a.hosts, "carcrawl": knobs.as_dict(), "image": "thumbnail ~10 KB, unique",
                          "rows": rows})


if __name__ == "__main__":
    main()
