"""Memory stays flat: peak RSS of ``carcrawl fetch`` over 2 000 and over 20 000 sandbox URLs.

The sandbox (its own process, 64 loopback hosts, 20-80 ms latency) serves the shipped photos
(~80 KB each, unique bodies); carcrawl downloads, checks, writes and checkpoints them (classify
off: on this CPU-only box the classifier would make a 20 000-image run take most of an hour).
Target: the larger run's peak within 15 % of the smaller's.

    python benchmarks/memory.py                    # ~2 min
    python benchmarks/memory.py --sizes 2000 20000 200000
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from _common import CrawlKnobs, fmt_table, start_sandbox, write_result  # noqa: E402
from scaling import measure_size  # noqa: E402

TARGET = 0.15


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--sizes", type=int, nargs="+", default=[2000, 20_000])
    p.add_argument("--concurrency", type=int, default=128)
    a = p.parse_args()
    knobs = CrawlKnobs(concurrency=a.concurrency)
    sandbox = start_sandbox(hosts=64, size_mix=False)
    rows = []
    try:
        for n in a.sizes:
            row = measure_size(sandbox, list(sandbox.layout.image_urls(n)), f"mem{n}", knobs, resume=False)
            rows.append(row)
            print(f"{n:>8} URLs: peak RSS {row['peak_rss_mb']:6.1f} MB  {row['images_per_s']:6.0f} img/s  "
                  f"ok {row['ok']}  rc={row['rc']}", flush=True)
    finally:
        sandbox.stop()
    base = rows[0]["peak_rss_mb"]
    growth = rows[-1]["peak_rss_mb"] / base - 1
    print(fmt_table(["URLs", "peak RSS MB", "vs smallest", "images/s end to end", "MB/s", "ok", "wall s"],
                    [[r["urls"], r["peak_rss_mb"], f"{r['peak_rss_mb'] / base - 1:+.1%}", r["images_per_s"],
                      r["mb_per_s"], r["ok"], r["wall_s"]] for r in rows]))
    verdict = "met" if growth <= TARGET else "MISSED"
    print(f"peak RSS {rows[-1]['urls']} vs {rows[0]['urls']}: {growth:+.1%} (target <= +{TARGET:.0%}: {verdict})")
    write_result("memory", {"command": " ".join(["python", "benchmarks/memory.py", *sys.argv[1:]]),
                            "carcrawl": knobs.as_dict(), "image": "shipped photos ~80 KB, unique",
                            "rows": rows, "growth": growth, "target": TARGET, "verdict": verdict})


if __name__ == "__main__":
    main()
