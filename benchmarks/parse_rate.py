"""How fast the search parsers turn saved responses into candidates (the search stage's CPU cost).

Parses each real capture under ``../shared/fixtures/search`` repeatedly and prints pages/s,
candidates/s and MB/s per capture, then writes the numbers to
``benchmarks/results/parse_rate.json``. Bing is the one that matters (the default source, and the
biggest pages); the JSON sources are listed for comparison.

    python benchmarks/parse_rate.py              # ~2 s of parsing per capture
    python benchmarks/parse_rate.py --seconds 0.5 --only bing
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from carcrawl.sources import make_source  # noqa: E402

FIXTURES = ROOT.parent / "shared" / "fixtures" / "search"
RESULTS = ROOT / "benchmarks" / "results" / "parse_rate.json"
CAPTURES = [
    ("bing", "bing/gois_bing_images_async_2021-07.html"),
    ("bing", "bing/phrona_bing_images_async_rust-programming.html"),
    ("bing", "bing/retrievalgo_bing_images_search_golang-gopher.html"),
    ("duckduckgo", "duckduckgo/phrona_ddg_images_ijs_rust-programming.json"),
    ("openverse", "openverse/openverse_tape_q-cat_page3_2024-01-01.json"),
    ("wikimedia", "wikimedia/mediasearch_generator-search_q-cat_image.json"),
    ("flickr", "flickr/gois_flickr_photos_search_api_url_o_2021-07.json"),
    ("google", "google/gois_google_images_ichunk_rg_meta_2021-07.txt"),
]


def measure(source_name: str, body: bytes, seconds: float) -> dict[str, float | int]:
    """Parse ``body`` over and over for about ``seconds``; best of three rounds, after a warm-up."""
    src = make_source(source_name)
    page = src.parse(200, {}, body, None)  # warm-up, and the candidate count
    if page.problem is not None:
        raise SystemExit(f"{source_name}: capture did not parse: {page.problem}")
    best = float("inf")
    reps = 1
    for _ in range(3):
        n, start = 0, time.perf_counter()
        while True:
            src.parse(200, {}, body, None)
            n += 1
            elapsed = time.perf_counter() - start
            if elapsed >= seconds / 3:
                break
        best, reps = min(best, elapsed / n), n
    return {
        "bytes": len(body),
        "candidates": len(page.candidates),
        "reps_per_round": reps,
        "ms_per_page": best * 1000,
        "pages_per_s": 1 / best,
        "candidates_per_s": len(page.candidates) / best,
        "mb_per_s": len(body) / best / 1e6,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=float, default=2.0, help="parsing time per capture")
    parser.add_argument("--only", help="only this source (e.g. bing)")
    parser.add_argument("--out", type=Path, default=RESULTS)
    args = parser.parse_args()
    if not FIXTURES.is_dir():
        raise SystemExit(f"captures not found at {FIXTURES}")
    rows = []
    header = f"{'source':<11} {'capture':<52} {'KB':>6} {'cands':>5} {'ms/page':>8} {'pages/s':>8} {'cands/s':>9} {'MB/s':>6}"
    print(header)
    print("-" * len(header))
    for source_name, rel in CAPTURES:
        if args.only and source_name != args.only:
            continue
        body = (FIXTURES / rel).read_bytes()
        r = measure(source_name, body, args.seconds)
        rows.append({"source": source_name, "capture": rel, **r})
        print(
            f"{source_name:<11} {Path(rel).name[:52]:<52} {r['bytes'] / 1024:>6.0f} {r['candidates']:>5} "
            f"{r['ms_per_page']:>8.2f} {r['pages_per_s']:>8.1f} {r['candidates_per_s']:>9.0f} {r['mb_per_s']:>6.1f}"
        )
    bing = [r for r in rows if r["source"] == "bing"]
    summary = {}
    if bing:
        total_time = sum(1 / r["pages_per_s"] for r in bing)
        summary = {
            "bing_pages_per_s": len(bing) / total_time,
            "bing_candidates_per_s": sum(r["candidates"] for r in bing) / total_time,
        }
        print(
            f"\nBing, all captures together: {summary['bing_pages_per_s']:.1f} pages/s, "
            f"{summary['bing_candidates_per_s']:.0f} candidates/s (one core)"
        )
    import selectolax

    report = {
        "benchmark": "parse_rate",
        "when": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        "python": platform.python_version(),
        "selectolax": getattr(selectolax, "__version__", "?"),
        "machine": platform.machine(),
        "cpus": os.cpu_count(),
        "load_average_1m": os.getloadavg()[0],  # other work on the machine skews the numbers
        "seconds_per_capture": args.seconds,
        "rows": rows,
        "summary": summary,
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    tmp = args.out.with_suffix(".json.tmp")
    tmp.write_text(json.dumps(report, indent=2) + "\n")
    tmp.replace(args.out)
    print(f"wrote {args.out.relative_to(ROOT) if args.out.is_relative_to(ROOT) else args.out}")


if __name__ == "__main__":
    main()
