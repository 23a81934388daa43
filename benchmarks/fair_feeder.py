"""Fair feeder: the same 4 000 URLs over 8 hosts (200 ms per image), listed host by host and
interleaved. A fair feeder keeps every host busy whatever the order, so the grouped list should
run at >= 80 % of the interleaved list's rate (issue 11 measured 0.35x before the fix).

Run (holding the machine-wide lock)::

    flock /tmp/carcrawl-bench.lock python benchmarks/fair_feeder.py [--code DIR]

``--code`` runs another checkout's carcrawl (e.g. the code before the change) against the same
server. Writes ``benchmarks/results/fair_feeder.json``.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path

from _common import (
    ROOT,
    WORK,
    CrawlKnobs,
    carcrawl_config,
    run_measured,
    start_sandbox,
    thumb_urls,
    write_result,
    write_urls,
)

URLS = 4000
HOSTS = 8
LATENCY_MS = (200.0, 200.0)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--code", type=Path, default=ROOT, help="the checkout whose carcrawl runs (default: this one)")
    ap.add_argument("--urls", type=int, default=URLS)
    args = ap.parse_args()
    work = WORK / "fair_feeder"
    knobs = CrawlKnobs(concurrency=64, per_host_concurrency=4, per_host_interval=0.02)
    config = carcrawl_config(work / "config.toml", knobs)
    env = {"PYTHONPATH": str(args.code.resolve())}
    rows = {}
    sb = start_sandbox(hosts=HOSTS, latency_ms=LATENCY_MS, size_mix=False)
    try:
        interleaved = thumb_urls(sb.layout, args.urls)  # round-robin over the hosts
        grouped = sorted(interleaved, key=lambda u: u.split("/")[2])  # host by host
        for name, urls in (("interleaved", interleaved), ("grouped", grouped)):
            listing = work / f"{name}.txt"
            write_urls(listing, urls)
            out = work / f"out-{name}"
            cmd = [sys.executable, "-m", "carcrawl.cli", "fetch", str(listing), "--out", str(out), "--config",
                   str(config), "--no-classify", "--json", "--fresh"]
            # cwd too: ``python -m`` puts the working directory before PYTHONPATH on sys.path
            m = run_measured(cmd, env=env, cwd=args.code.resolve(), timeout=900)
            if m.rc != 0:
                print(m.stderr[-3000:], file=sys.stderr)
                return 1
            done = json.loads(m.stdout.strip().splitlines()[-1])["status"]["candidates"]["by_state"].get("done", 0)
            rows[name] = {"urls": len(urls), "done": done, "wall_s": round(m.wall_s, 2),
                          "urls_per_s": round(len(urls) / m.wall_s, 1), "cpu_s": round(m.cpu_s, 2)}
    finally:
        sb.stop()
    ratio = rows["grouped"]["urls_per_s"] / rows["interleaved"]["urls_per_s"]
    print(f"{'list':<12} {'URLs':>6} {'done':>6} {'wall s':>8} {'URLs/s':>8}")
    for name, r in rows.items():
        print(f"{name:<12} {r['urls']:>6} {r['done']:>6} {r['wall_s']:>8} {r['urls_per_s']:>8}")
    print(f"grouped / interleaved rate: {ratio:.2f} (target >= 0.80)")
    code = "this checkout" if args.code.resolve() == ROOT else os.path.basename(str(args.code.resolve()))
    write_result("fair_feeder" if code == "this checkout" else f"fair_feeder_{code}",
                 {"code": code, "hosts": HOSTS, "latency_ms": LATENCY_MS, "knobs": knobs.as_dict(), "runs": rows,
                  "ratio": round(ratio, 3)})
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
