"""Soak: a long chaos crawl (every sandbox fault, mixed at random) through the real pipeline, watching
the crawler's own resources as it goes -- resident memory, open file descriptors, asyncio tasks
alive, threads -- which must all stay flat whether it has done 1 000 URLs or 100 000.

The sandbox runs in its own process (``SandboxProcess``) so only the crawler is measured. URLs are
generated lazily (never a list), the crawl downloads without classifying, and a sampler task in
the crawler's event loop records a row every ``--every`` seconds. Flat means: the last third of
the samples is no higher than the first third (after warm-up) by more than a small margin.

    python benchmarks/soak.py                          # 100 000 URLs or 9 minutes, whichever first
    python benchmarks/soak.py --urls 20000 --seconds 120
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import platform
import statistics
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from carcrawl.config import load_settings  # noqa: E402
from carcrawl.models import Labels  # noqa: E402
from carcrawl.pipeline import Job, Pipeline  # noqa: E402
from carcrawl.sandbox import SandboxProcess  # noqa: E402
from carcrawl.urllists import UrlRow  # noqa: E402

RESULTS = ROOT / "benchmarks" / "results" / "soak.json"
SHARED_IMAGES = ROOT.parent / "shared" / "images"


def proc_status() -> dict[str, int]:
    """VmRSS / VmHWM (KiB) and Threads of this process, from /proc (no psutil)."""
    out = {}
    for line in Path("/proc/self/status").read_text().splitlines():
        key, _, value = line.partition(":")
        if key in ("VmRSS", "VmHWM", "Threads"):
            out[key] = int(value.split()[0])
    return out


def open_fds() -> int:
    return len(os.listdir("/proc/self/fd"))


def rows(layout: Any, n: int) -> Iterator[UrlRow]:
    empty = Labels()
    for i, url in enumerate(layout.image_urls(n)):
        yield UrlRow(url, empty, i)


async def soak(layout: Any, n: int, seconds: float, every: float, out: Path) -> dict[str, Any]:
    settings = load_settings(None, {
        "crawl.out": str(out), "crawl.allow_networks": ["127.0.0.0/8"], "classify.enabled": False,
        "download.concurrency": 64, "download.per_host_concurrency": 4, "download.per_host_interval": 0.0,
        "download.connect_timeout": 2.0, "download.read_timeout": 1.0, "download.total_timeout": 3.0,
        "download.max_retries": 1, "download.backoff_base": 0.05, "download.backoff_max": 0.3,
        "download.max_bytes": 4_000_000, "store.commit_interval": 1.0,
    })
    pipeline = Pipeline(settings, Job(urls=lambda: rows(layout, n), fingerprint=f"soak:{n}"), fresh=True)
    samples: list[dict[str, Any]] = []
    t0 = time.monotonic()

    async def sampler() -> None:
        while True:
            c = pipeline.stats.counts
            st = proc_status()
            samples.append({
                "t_s": round(time.monotonic() - t0, 1),
                "urls_done": c["fetched"] + c["failed"],
                "rss_mib": round(st["VmRSS"] / 1024, 1),
                "fds": open_fds(),
                "tasks": len(asyncio.all_tasks()),
                "threads": st["Threads"],
            })
            if time.monotonic() - t0 > seconds and not pipeline.stopping:
                pipeline.stop()
            await asyncio.sleep(every)

    watcher = asyncio.create_task(sampler())
    try:
        result = await pipeline.run()
    finally:
        watcher.cancel()
    elapsed = time.monotonic() - t0
    return {"result": result, "samples": samples, "elapsed_s": elapsed, "peak_rss_mib": proc_status()["VmHWM"] / 1024}


def flatness(samples: list[dict[str, Any]], key: str) -> dict[str, float]:
    """Median of the first and last third of the samples after a warm-up (the first 10 %)."""
    body = samples[max(1, len(samples) // 10):]
    third = max(1, len(body) // 3)
    first = statistics.median(s[key] for s in body[:third])
    last = statistics.median(s[key] for s in body[-third:])
    return {"first_third": first, "last_third": last, "max": max(s[key] for s in body), "min": min(s[key] for s in body)}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--urls", type=int, default=100_000)
    ap.add_argument("--seconds", type=float, default=540.0, help="stop (drain and commit) after this long")
    ap.add_argument("--every", type=float, default=2.0, help="seconds between samples")
    ap.add_argument("--hosts", type=int, default=64)
    ap.add_argument("--fault-rate", type=float, default=0.2)
    args = ap.parse_args()

    photos = SHARED_IMAGES if SHARED_IMAGES.exists() else None
    with SandboxProcess(photos=photos, hosts=args.hosts, latency_ms=(0, 5), chaos=True, fault_rate=args.fault_rate,
                        seed=1, fault_delay_s=3.0, trickle_bps=200.0, flaky_tries=2,
                        access_log_size=10_000) as layout, \
            tempfile.TemporaryDirectory(prefix="carcrawl-soak-") as tmp:
        try:
            import uvloop

            got = uvloop.run(soak(layout, args.urls, args.seconds, args.every, Path(tmp) / "out"))
        except ImportError:
            got = asyncio.run(soak(layout, args.urls, args.seconds, args.every, Path(tmp) / "out"))
    result, samples = got["result"], got["samples"]
    done = samples[-1]["urls_done"] if samples else 0
    # judge flatness while the crawl is in full swing: not the last URLs' drain, not after a stop
    total = samples[-1]["urls_done"] if samples else 0
    steady = [s for s in samples if s["urls_done"] < 0.97 * total and s["t_s"] <= args.seconds] or samples
    flat = {k: flatness(steady, k) for k in ("rss_mib", "fds", "tasks", "threads")}

    print(f"soak: {done} URLs in {got['elapsed_s']:.0f} s ({done / got['elapsed_s']:.0f} URLs/s), state {result.state}, "
          f"peak RSS {got['peak_rss_mib']:.0f} MiB")
    print(f"{'t (s)':>7} {'URLs done':>10} {'RSS MiB':>8} {'fds':>5} {'tasks':>6} {'threads':>7}")
    step = max(1, len(samples) // 20)
    for s in samples[::step] + ([samples[-1]] if samples and (len(samples) - 1) % step else []):
        print(f"{s['t_s']:>7.0f} {s['urls_done']:>10} {s['rss_mib']:>8.1f} {s['fds']:>5} {s['tasks']:>6} {s['threads']:>7}")
    print(f"{'':>7} {'':>10} {'first third':>22} {'last third':>11} {'min':>6} {'max':>6}")
    for k, f in flat.items():
        print(f"{k:>18} {f['first_third']:>22.1f} {f['last_third']:>11.1f} {f['min']:>6.1f} {f['max']:>6.1f}")

    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    RESULTS.write_text(json.dumps({
        "benchmark": "soak",
        "date": time.strftime("%Y-%m-%d"),
        "machine": {"cpus": os.cpu_count(), "python": platform.python_version(), "platform": platform.platform()},
        "command": "python " + " ".join([f"benchmarks/{Path(sys.argv[0]).name}", *sys.argv[1:]]),
        "urls_asked": args.urls, "urls_done": done, "elapsed_s": round(got["elapsed_s"], 1),
        "urls_per_s": round(done / got["elapsed_s"], 1), "state": result.state,
        "peak_rss_mib": round(got["peak_rss_mib"], 1), "flatness": flat,
        "reasons": result.status.get("reasons", {}), "candidates": result.status["candidates"]["by_state"],
        "samples": samples,
    }, indent=1) + "\n")
    print(f"wrote {RESULTS.relative_to(ROOT)}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
