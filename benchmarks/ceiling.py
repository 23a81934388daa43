"""The ceiling: a bare aiohttp loop that only fetches each URL and writes its body to a file.

No politeness, no checkpoint, no magic check, no hashing: what this machine can move through
aiohttp at all. File writes go to a small thread pool (``run_in_executor``), so the event loop
never waits on the disk: a loop that wrote synchronously would be slower than carcrawl, whose
writes are batched off the loop, and so no ceiling. carcrawl's rate as a percentage of this one says how much of the machine our own
code costs. ``vs_img2dataset.py`` runs it in the same alternation as the two downloaders.

    python benchmarks/ceiling.py URLS.txt OUT_DIR [--concurrency 64]

Prints one JSON line: ok, failed, bytes, seconds.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import aiohttp


async def fetch_all(urls: list[str], out: Path, concurrency: int) -> dict[str, float | int]:
    out.mkdir(parents=True, exist_ok=True)
    queue: asyncio.Queue[tuple[int, str]] = asyncio.Queue()
    for item in enumerate(urls):
        queue.put_nowait(item)
    ok = failed = nbytes = 0
    connector = aiohttp.TCPConnector(limit=concurrency, limit_per_host=0)
    timeout = aiohttp.ClientTimeout(total=60)
    writer = ThreadPoolExecutor(max_workers=4, thread_name_prefix="ceiling-write")
    loop = asyncio.get_running_loop()

    def write(path: Path, body: bytes) -> None:
        with open(path, "wb") as f:
            f.write(body)

    async with aiohttp.ClientSession(connector=connector, timeout=timeout, auto_decompress=False) as session:

        async def worker() -> None:
            nonlocal ok, failed, nbytes
            while not queue.empty():
                i, url = queue.get_nowait()
                try:
                    async with session.get(url) as resp:
                        body = await resp.read()
                        if resp.status != 200:
                            failed += 1
                            continue
                    await loop.run_in_executor(writer, write, out / f"{i}.jpg", body)
                    ok += 1
                    nbytes += len(body)
                except (aiohttp.ClientError, OSError, TimeoutError):
                    failed += 1

        start = time.perf_counter()
        await asyncio.gather(*(worker() for _ in range(concurrency)))
    writer.shutdown(wait=True)
    return {"ok": ok, "failed": failed, "bytes": nbytes, "seconds": time.perf_counter() - start}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("urls", type=Path)
    p.add_argument("out", type=Path)
    p.add_argument("--concurrency", type=int, default=64)
    a = p.parse_args()
    urls = [u.strip() for u in a.urls.read_text().splitlines() if u.strip()]
    try:
        import uvloop

        result = uvloop.run(fetch_all(urls, a.out, a.concurrency))
    except ImportError:
        result = asyncio.run(fetch_all(urls, a.out, a.concurrency))
    print(json.dumps(result))


if __name__ == "__main__":
    main()
