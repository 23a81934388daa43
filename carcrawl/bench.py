"""``carcrawl bench``: download and classify throughput on this machine, and settings to match.

The download part runs the real pipeline (download, magic check, sha256, files, checkpoint;
classify off) against the sandbox web in its own process (loopback hosts with 20-80 ms latency,
photos re-encoded to a 20 KB .. 2 MB size mix, every body unique per URL so no write is skipped as a
duplicate), at a few global concurrencies. The classify part runs the configured classifier (the
GPU when there is one) over the shipped photos at a few batch sizes. It prints one table and the
``[download] concurrency`` and ``[classify] batch_size`` to put in config.toml.
"""

from __future__ import annotations

import asyncio
import contextlib
import resource
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

#: (URLs per download run, concurrencies tried, classify batch sizes tried, images per classify run)
QUICK = (1200, (32, 128), (16, 32), 64)
FULL = (4000, (32, 64, 128, 256), (8, 16, 32, 64), 256)


@dataclass
class Row:
    part: str
    setting: str
    images_per_s: float
    mb_per_s: float | None
    cpu_s_per_1000: float
    ok: int
    note: str = ""


def _unique_child(conn: Any, kwargs: dict[str, Any]) -> None:
    """Sandbox child process whose image bodies are unique per URL: the path is appended after
    the image's end marker (decoders ignore it), so a content-addressed store writes every one."""
    from carcrawl.sandbox import process, server

    plain_send = server.Sandbox._send

    async def unique_send(self: Any, request: Any, body: bytes, ctype: str, status: int = 200,
                          headers: Any = None) -> Any:
        if status == 200 and request.path.startswith("/img/"):
            body = body + b"\ncarcrawl-bench:" + request.path.encode()
        return await plain_send(self, request, body, ctype, status, headers)

    server.Sandbox._send = unique_send  # type: ignore[method-assign]
    process._child(conn, kwargs)


def start_bench_sandbox(hosts: int = 64, latency_ms: tuple[float, float] = (20.0, 80.0), *,
                        size_mix: bool = True, unique: bool = True, **kwargs: Any) -> Any:
    """A running :class:`~carcrawl.sandbox.SandboxProcess` without faults (``.layout`` has the
    URLs, call ``.stop()`` at the end); with ``unique`` every image body differs per URL."""
    from carcrawl.sandbox import process

    proc = process.SandboxProcess(hosts=hosts, latency_ms=latency_ms, fault_rate=0.0, size_mix=size_mix,
                                  access_log_size=1000, **kwargs)
    if not unique:
        proc.start()
        return proc
    plain = process._child
    process._child = _unique_child  # spawn pickles the target by name; this one is importable
    try:
        proc.start()
    finally:
        process._child = plain
    return proc


def _cpu() -> float:
    ru = resource.getrusage(resource.RUSAGE_SELF)
    return ru.ru_utime + ru.ru_stime


async def _download_once(urls: list[str], concurrency: int, out: Path) -> tuple[int, int, float, float]:
    """One fresh crawl of ``urls``: (fetched, bytes, seconds, CPU seconds of this process)."""
    from carcrawl.config import load_settings
    from carcrawl.models import Labels
    from carcrawl.pipeline import Job, Pipeline
    from carcrawl.urllists import UrlRow

    settings = load_settings(None, {
        "crawl.out": str(out), "crawl.sources": ["urls"], "crawl.allow_networks": ["127.0.0.0/8"],
        "download.concurrency": concurrency, "download.per_host_interval": 0.02,
        "download.max_retries": 0, "classify.enabled": False,
    })
    job = Job(urls=lambda: (UrlRow(u, Labels(), i + 1) for i, u in enumerate(urls)), fingerprint=f"bench:{len(urls)}")
    cpu0, start = _cpu(), time.perf_counter()
    result = await Pipeline(settings, job, command="bench", fresh=True).run()
    elapsed, cpu = time.perf_counter() - start, _cpu() - cpu0
    counts = result.stats["counts"]
    return int(counts.get("fetched", 0)), int(counts.get("bytes", 0)), elapsed, cpu


def download_rows(n: int, concurrencies: tuple[int, ...]) -> list[Row]:
    try:
        import uvloop

        run = uvloop.run
    except ImportError:  # pragma: no cover
        run = asyncio.run
    sandbox = start_bench_sandbox()
    rows = []
    try:
        urls = list(sandbox.layout.image_urls(n, size_mix=True))
        for conc in concurrencies:
            with tempfile.TemporaryDirectory(prefix="carcrawl-bench-") as tmp:
                ok, nbytes, secs, cpu = run(_download_once(urls, conc, Path(tmp)))
            rows.append(Row("download", f"concurrency {conc}", ok / secs, nbytes / 1e6 / secs,
                            1000 * cpu / max(ok, 1), ok))
    finally:
        sandbox.stop()
    return rows


def classify_rows(device: str | None, batch_sizes: tuple[int, ...], count: int) -> tuple[list[Row], str]:
    """Rows per batch size, or no rows and why the classifier could not run."""
    try:
        from carcrawl.classify import ClassifySettings, load_classifier
    except ImportError as e:
        return [], f"classifier not available ({e})"
    from carcrawl.sandbox.photos import PhotoSet

    photos = PhotoSet().photos
    items = [(f"{i:064x}", photos[i % len(photos)].data) for i in range(count)]
    rows = []
    desc = ""
    for bs in batch_sizes:
        try:
            clf = load_classifier(ClassifySettings(device=device or "auto", batch_size=bs))
        except Exception as e:  # noqa: BLE001 - no model offline, no torch: report, don't crash
            return rows, f"classifier could not load: {type(e).__name__}: {e}"
        desc = clf.describe()
        clf.classify(items[:bs])  # warm-up: first-batch allocations, cuDNN autotune
        cpu0, start = _cpu(), time.perf_counter()
        clf.classify(items)
        secs, cpu = time.perf_counter() - start, _cpu() - cpu0
        rows.append(Row("classify", f"batch_size {bs}", count / secs, None, 1000 * cpu / count, count))
    return rows, desc


def suggest(rows: list[Row], part: str) -> Row | None:
    """The smallest setting within 5 % of the best rate (more buys nothing but memory)."""
    mine = [r for r in rows if r.part == part and r.ok > 0]
    if not mine:
        return None
    best = max(r.images_per_s for r in mine)
    return next(r for r in mine if r.images_per_s >= 0.95 * best)


def run_bench(quick: bool = False, device: str | None = None,
              plan: tuple[int, tuple[int, ...], tuple[int, ...], int] | None = None) -> list[Row]:
    """Run both benchmarks, print the table and the suggested settings; returns the rows.
    ``plan`` overrides (URLs, concurrencies, batch sizes, images to classify)."""
    from rich.console import Console
    from rich.table import Table

    n, concurrencies, batch_sizes, count = plan or (QUICK if quick else FULL)
    console = Console()
    console.print(f"download: {n} sandbox URLs (size mix ~20 KB..2 MB, 64 loopback hosts, 20-80 ms) "
                  f"at concurrency {', '.join(map(str, concurrencies))} ...")
    rows = download_rows(n, concurrencies)
    console.print(f"classify: {count} photos at batch size {', '.join(map(str, batch_sizes))} ...")
    crow, desc = classify_rows(device, batch_sizes, count)
    rows += crow
    table = Table(title="carcrawl bench")
    for col in ("stage", "setting", "images/s", "MB/s", "CPU-s / 1000 images", "ok"):
        table.add_column(col, justify="left" if col in ("stage", "setting") else "right")
    for r in rows:
        table.add_row(r.part, r.setting, f"{r.images_per_s:,.1f}", "" if r.mb_per_s is None else f"{r.mb_per_s:,.1f}",
                      f"{r.cpu_s_per_1000:,.2f}", f"{r.ok:,}")
    console.print(table)
    if desc:
        console.print(f"classifier: {desc}")
    lines = []
    d = suggest(rows, "download")
    if d is not None:
        lines.append(f"[download]\nconcurrency = {d.setting.split()[-1]}   # {d.images_per_s:,.0f} images/s here")
    c = suggest(rows, "classify")
    if c is not None:
        lines.append(f"[classify]\nbatch_size = {c.setting.split()[-1]}    # {c.images_per_s:,.1f} images/s here")
    elif desc:
        lines.append(f"# classify: {desc}")
    console.print("suggested for config.toml:\n" + "\n".join(lines), markup=False, soft_wrap=True)
    with contextlib.suppress(Exception):
        if d is not None and c is not None and c.images_per_s < d.images_per_s:
            console.print(f"the classifier ({c.images_per_s:,.0f}/s) is the bottleneck: downloads will wait on it "
                          "(the queue between them is bounded), so a higher concurrency buys nothing", soft_wrap=True)
    return rows
