"""What a person sees: rich progress bars with live rates while a crawl runs, and the summary
tables at the end. Everything shown that came from the web goes through ``rich.markup.escape``."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

from rich.console import Console
from rich.markup import escape
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn
from rich.table import Table

console = Console(stderr=True)


class ProgressDisplay:
    """Bars for search, download and classify; totals grow as the crawl discovers work."""

    def __init__(self, enabled: bool = True):
        self.enabled = enabled
        self.progress: Progress | None = None
        self.tasks: dict[str, Any] = {}
        self.base: dict[str, int] = {}
        self._last = 0.0

    def __enter__(self) -> ProgressDisplay:
        if self.enabled:
            self.progress = Progress(
                TextColumn("{task.description:<9}"),
                BarColumn(bar_width=30),
                MofNCompleteColumn(),
                TextColumn("{task.fields[rate]}"),
                TimeElapsedColumn(),
                console=console,
                transient=False,
            )
            self.progress.start()
        return self

    def __exit__(self, *exc: object) -> None:
        if self.progress is not None:
            self.progress.stop()

    def event(self, kind: str, data: Any) -> None:
        if not self.enabled and kind != "stopping":  # --quiet / --json: nothing on the terminal
            return
        if kind == "classifier":
            console.print(f"[bold]classify[/]: {escape(str(data))}")
        elif kind == "recovered":
            console.print(f"resuming: {escape(str(data))} rows were in flight and are pending again")
        elif kind == "temp_removed":
            console.print(f"removed {data} temporary files a killed run left behind")
        elif kind == "stopping":
            console.print("[yellow]stopping: finishing transfers in flight and committing (Ctrl-C again to stop at once)[/]")
        elif kind == "start" and self.progress is not None:
            self.base = data
            p = self.progress
            self.tasks["search"] = p.add_task("search", total=data["searches"] or None, rate="")
            self.tasks["download"] = p.add_task("download", total=data["candidates"] or None, rate="")
            self.tasks["classify"] = p.add_task("classify", total=data["unclassified"] or None, rate="")
        elif kind == "progress" and self.progress is not None and self.tasks:
            self._update(data)

    def _update(self, stats: Any) -> None:
        now = time.monotonic()
        if now - self._last < 0.25:
            return
        self._last = now
        c = stats.counts
        p = self.progress
        assert p is not None
        searched = c["searches_done"] + c["searches_failed"]
        p.update(self.tasks["search"], completed=searched, total=max(self.base.get("searches", 0), searched) or None,
                 rate=f"{c['candidates']} URLs found")
        done = c["fetched"] + c["failed"]
        total = self.base.get("candidates", 0) + c["candidates"]
        p.update(self.tasks["download"], completed=done, total=max(total, done) or None,
                 rate=f"{stats.rate('fetched'):.1f} img/s, {c['bytes'] / 1e6:.1f} MB, {c['failed']} failed")
        unique = c["fetched"] - c["duplicates"] + self.base.get("unclassified", 0)
        p.update(self.tasks["classify"], completed=c["classified"], total=max(unique, c["classified"]) or None,
                 rate=f"{stats.rate('classified'):.1f} img/s, {c['kept']} kept")


def print_summary(result: Any, settings: Any) -> None:
    st = result.status
    c = result.stats["counts"]
    t = Table(title=f"carcrawl run {result.run_id}: {result.state} in {result.elapsed_s:.1f} s", show_header=False)
    t.add_column(style="bold")
    t.add_column(justify="right")
    t.add_row("search requests (this run)", str(c.get("search_requests", 0)))
    t.add_row("images downloaded (this run)", str(c.get("fetched", 0)))
    t.add_row("download failures (this run)", str(c.get("failed", 0)))
    t.add_row("classified (this run)", str(c.get("classified", 0)))
    t.add_row("kept in dataset (total)", str(st.get("kept", 0)))
    t.add_row("rejected by classifier (total)", str(st.get("rejected_by_classifier", 0)))
    t.add_row("stored images (total)", str(sum(st["images"]["by_state"].values())))
    t.add_row("stored bytes (total)", f"{st.get('stored_bytes', 0) / 1e6:.1f} MB")
    if result.elapsed_s > 0:
        t.add_row("download rate", f"{c.get('fetched', 0) / result.elapsed_s:.1f} images/s")
    console.print(t)
    if st.get("reasons"):
        r = Table(title="why URLs and images were dropped (total)")
        r.add_column("reason")
        r.add_column("count", justify="right")
        for reason, n in list(st["reasons"].items())[:20]:
            r.add_row(escape(reason), str(n))
        console.print(r)
    console.print(f"checkpoint: {escape(str(settings.checkpoint_path))}")


def print_status(counts: dict[str, Any], path: Path) -> None:
    t = Table(title=f"carcrawl status: {escape(str(path))}")
    t.add_column("table")
    t.add_column("state[:reason]")
    t.add_column("count", justify="right")
    for table in ("searches", "candidates", "images"):
        for key, n in counts[table]["by_reason"].items():
            t.add_row(table, escape(key), str(n))
    console.print(t)
    extra = []
    if "rate_urls_per_s" in counts:
        extra.append(f"rate {counts['rate_urls_per_s']} URLs/s")
    if counts.get("eta_seconds") is not None:
        extra.append(f"ETA {counts['eta_seconds'] / 60:.1f} min")
    if "last_run" in counts:
        extra.append(f"last run: {counts['last_run']['state']}")
    console.print(f"kept {counts['kept']}, rejected by classifier {counts['rejected_by_classifier']}. " + ", ".join(extra))


def print_category_report(checkpoint: Path) -> None:
    """Per category: requested, downloaded, failed by reason (the part-of-imagenet report)."""
    from carcrawl.store import category_report, open_readonly

    con = open_readonly(checkpoint)
    try:
        rows = category_report(con)
    finally:
        con.close()
    t = Table(title="per-category download report")
    for col in ("category", "requested", "downloaded", "kept", "failed", "top failure reasons"):
        t.add_column(col)
    for r in rows:
        t.add_row(escape(r["category"]), str(r["requested"]), str(r["downloaded"]), str(r["kept"]), str(r["failed"]),
                  escape(", ".join(f"{k} {v}" for k, v in r["reasons"][:3])))
    Console().print(t)  # the command's result: stdout, unlike progress and logs
