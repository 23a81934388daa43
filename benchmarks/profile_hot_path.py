"""Profile ``carcrawl fetch`` on the sandbox with py-spy and print where its time goes.

py-spy samples the real process from outside (no instrumentation cost); the raw stacks are folded
into self time per function and inclusive time per carcrawl function. py-spy lives in the
benchmark tools venv (``benchmarks/_work/tools-venv``), never a project dependency.

    python benchmarks/profile_hot_path.py --urls 4000 --label before
"""

from __future__ import annotations

import argparse
import collections
import shutil
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from _common import (  # noqa: E402
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


def _py_spy() -> Path:
    """py-spy from the tools venv, else beside this interpreter, else on PATH."""
    for p in (WORK / "tools-venv" / "bin" / "py-spy", Path(sys.executable).parent / "py-spy"):
        if p.exists():
            return p
    found = shutil.which("py-spy")
    return Path(found) if found else WORK / "tools-venv" / "bin" / "py-spy"


PY_SPY = _py_spy()
RATE = 250  # samples per second per thread


def fold(raw: Path) -> tuple[int, collections.Counter[str], collections.Counter[str], collections.Counter[str]]:
    """(samples, self samples per frame, inclusive samples per frame, samples per thread) from
    py-spy's raw output recorded with ``--threads`` (each stack's first frame names its thread)."""
    total = 0
    self_c: collections.Counter[str] = collections.Counter()
    incl: collections.Counter[str] = collections.Counter()
    threads: collections.Counter[str] = collections.Counter()
    for line in raw.read_text().splitlines():
        stack, _, count = line.rpartition(" ")
        if not stack:
            continue
        n = int(count)
        total += n
        thread, *frames = stack.split(";")
        threads[thread.split(": ", 1)[-1]] += n
        if not frames:
            continue
        self_c[_short(frames[-1])] += n
        for f in {_short(f) for f in frames}:
            incl[f] += n
    return total, self_c, incl, threads


def _short(frame: str) -> str:
    """``fetch_image (carcrawl/net/client.py:321)`` -> ``fetch_image (carcrawl/net/client.py)`` (lines vary)."""
    name, _, where = frame.partition(" (")
    path = where.rsplit(":", 1)[0]
    for marker in ("site-packages/", "carcrawl/", "lib/python3"):
        if marker in path:
            path = path[path.index(marker):]
            break
    return f"{name} ({path})"


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--urls", type=int, default=4000)
    p.add_argument("--thumbs", action="store_true", help="small images (per-request cost) instead of the size mix")
    p.add_argument("--label", default="now", help="stored under results/profile.json[label]")
    p.add_argument("--top", type=int, default=25)
    p.add_argument("--concurrency", type=int, default=CrawlKnobs.concurrency, help="carcrawl's global concurrency")
    a = p.parse_args()
    if not PY_SPY.exists():
        raise SystemExit(f"py-spy not found at {PY_SPY}: python3 -m venv {WORK}/tools-venv && "
                         f"{WORK}/tools-venv/bin/pip install py-spy matplotlib")
    sandbox = start_sandbox(hosts=64, size_mix=not a.thumbs)
    try:
        urls_list = thumb_urls(sandbox.layout, a.urls) if a.thumbs else list(
            sandbox.layout.image_urls(a.urls, size_mix=True))
        urls = write_urls(WORK / "profile" / "urls.txt", urls_list) and WORK / "profile" / "urls.txt"
        out = WORK / "profile" / "out"
        remove(out)
        cfg = carcrawl_config(WORK / "profile" / "carcrawl.toml", CrawlKnobs(a.concurrency))
        raw = WORK / "profile" / f"{a.label}.raw.txt"
        cmd = [str(PY_SPY), "record", "--rate", str(RATE), "--format", "raw", "--threads", "-o", str(raw), "--",
               *carcrawl_fetch_cmd(urls, out, cfg)]
        m = run_measured(cmd, timeout=560)
        remove(out)
    finally:
        sandbox.stop()
    summary = carcrawl_json(m.stdout)
    fetched = summary.get("stats", {}).get("counts", {}).get("fetched", 0)
    total, self_c, incl, threads = fold(raw)
    print(f"{fetched} fetched in {m.wall_s:.1f}s ({fetched / m.wall_s:.0f}/s, under py-spy); {total} samples")
    # busy share: a thread's samples over the samples of a thread on the CPU all the run (250 Hz;
    # py-spy leaves idle threads out); the event loop runs on MainThread
    print(fmt_table(["thread", "samples", "busy %"],
                    [[t, n, 100 * n / (m.wall_s * RATE)] for t, n in threads.most_common()]))
    top_self = [[f, n, 100 * n / total] for f, n in self_c.most_common(a.top)]
    ours = [[f, n, 100 * n / total] for f, n in incl.most_common() if "carcrawl/" in f][: a.top]
    print("self time:")
    print(fmt_table(["function", "samples", "%"], top_self))
    print("inclusive time, carcrawl functions:")
    print(fmt_table(["function", "samples", "%"], ours))
    import json

    res_path = Path(__file__).resolve().parent / "results" / "profile.json"
    prior = json.loads(res_path.read_text()) if res_path.exists() else {}
    labels = prior.get("labels", {})
    labels[a.label] = {"urls": a.urls, "thumbs": a.thumbs, "concurrency": a.concurrency, "fetched": fetched,
                       "wall_s": m.wall_s, "samples": total, "threads": dict(threads.most_common()),
                       "self_top": top_self, "carcrawl_inclusive": ours}
    write_result("profile", {"labels": labels})


if __name__ == "__main__":
    main()
