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

console = Console(stderr=True)  # progress, summaries and messages: stderr, beside the logs
out_console = Console()  # a command's answer (status, why): stdout, so `carcrawl status | head` works


class ProgressDisplay:
    """Bars for search, download and classify; totals grow as the crawl discovers work."""

    def __init__(self, enabled: bool = True, classify: bool = True):
        self._capped = False
        self.enabled = enabled
        self.classify = classify
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
        if kind == "capped":
            self._capped = True
        if not self.enabled and kind != "stopping":  # --quiet / --json: nothing on the terminal
            return
        if kind == "classifier":
            console.print(f"[bold]classify[/]: {escape(str(data))}")
        elif kind == "recovered":
            console.print(f"resuming: {describe_recovered(data)} in flight when the last run stopped; they are pending again")
        elif kind == "temp_removed":
            console.print(f"removed {data} temporary files a killed run left behind")
        elif kind == "capped":
            console.print(f"reached --max-images {data}: finishing the transfers in flight, then done")
        elif kind == "stopping" and self._capped:
            return
        elif kind == "stopping":
            console.print("[yellow]stopping: finishing transfers in flight and committing (Ctrl-C again to stop at once)[/]")
        elif kind == "start" and self.progress is not None:
            self.base = data
            p = self.progress
            self.tasks["search"] = p.add_task("search", total=data["searches"] or None, rate="")
            self.tasks["download"] = p.add_task("download", total=data["candidates"] or None, rate="")
            if self.classify:
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
        total = self.base.get("candidates", 0) + c["new_candidates"]  # distinct URLs, as committed
        p.update(self.tasks["download"], completed=done, total=max(total, done) or None,
                 rate=f"{stats.rate('fetched'):.1f} img/s, {c['bytes'] / 1e6:.1f} MB, {c['failed']} failed")
        if "classify" in self.tasks:
            unique = c["fetched"] - c["duplicates"] + self.base.get("unclassified", 0)
            p.update(self.tasks["classify"], completed=c["classified"], total=max(unique, c["classified"]) or None,
                     rate=f"{stats.rate('classified'):.1f} img/s, {c['kept']} kept")

    def final(self, result: Any) -> None:
        """The last frame: this run's counts (what the summary prints) over this run's work, where
        the work left is read from the checkpoint, so a finished run's bars are full and equal the
        summary, and an interrupted one's show what is left."""
        if self.progress is None or not self.tasks:
            return
        c = result.stats["counts"]
        st = result.status

        def left(table: str, states: tuple[str, ...]) -> int:
            return sum(st[table]["by_state"].get(x, 0) for x in states)

        p = self.progress
        elapsed = max(result.elapsed_s, 1e-9)
        searched = c.get("searches_done", 0) + c.get("searches_failed", 0)
        distinct = sum(st["candidates"]["by_state"].values())
        p.update(self.tasks["search"], completed=searched, total=searched + left("searches", ("pending", "in_flight")),
                 rate=f"{distinct} distinct URLs in the checkpoint")
        done = c.get("fetched", 0) + c.get("failed", 0)
        p.update(self.tasks["download"], completed=done, total=done + left("candidates", ("pending", "in_flight")),
                 rate=f"{c.get('fetched', 0) / elapsed:.1f} img/s, {c.get('bytes', 0) / 1e6:.1f} MB, "
                      f"{c.get('failed', 0)} failed")
        if "classify" in self.tasks:
            classified = c.get("classified", 0)
            p.update(self.tasks["classify"], completed=classified, total=classified + left("images", ("pending",)),
                     rate=f"{classified / elapsed:.1f} img/s, {c.get('kept', 0)} kept")
        p.refresh()


def print_summary(result: Any, settings: Any) -> None:
    st = result.status
    c = result.stats["counts"]
    t = Table(title=f"carcrawl run {result.run_id}: {result.state} in {result.elapsed_s:.1f} s", show_header=False)
    t.add_column(style="bold")
    t.add_column(justify="right")
    t.add_row("searches finished (this run)", str(c.get("searches_done", 0) + c.get("searches_failed", 0)))
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


def describe_recovered(data: dict[str, int]) -> str:
    """``{"searches": 3, "candidates": 12}`` as "3 searches and 12 URLs were"."""
    names = {"searches": ("search", "searches"), "candidates": ("URL", "URLs")}
    parts = [f"{n} {names.get(k, (k, k))[n != 1]}" for k, n in data.items() if n]
    total = sum(data.values())
    return " and ".join(parts) + (" was" if total == 1 else " were")


def finish_status(counts: dict[str, Any], folder: Path) -> dict[str, Any]:
    """What the checkpoint cannot know by itself: whether its last run still holds the folder (a
    row that says ``running`` with nobody holding the lock is a run that was killed), and no ETA
    while searches still run (they keep finding URLs, so pending/rate would be a lie)."""
    from carcrawl.lock import holder

    run = counts.get("last_run")
    if run is not None:
        h = holder(folder)
        if h is not None:
            run["held_by"] = {"pid": h.pid, "command": h.command, "started_at": h.started_at}
        elif run["state"] == "running":
            run["state"] = "interrupted"
            run["note"] = "killed: its row still said running, but no process holds the folder"
    s = counts["searches"]["by_state"]
    open_searches = s.get("pending", 0) + s.get("in_flight", 0)
    if open_searches:
        counts["eta_seconds"] = None
        counts["eta_note"] = f"unknown while {open_searches} searches are still to run"
    return counts


def print_status(counts: dict[str, Any], path: Path) -> None:
    t = Table(title=f"carcrawl status: {escape(str(path))}")
    t.add_column("table")
    t.add_column("state[:reason]")
    t.add_column("count", justify="right")
    for table in ("searches", "candidates", "images"):
        for key, n in counts[table]["by_reason"].items():
            t.add_row(table, escape(key), str(n))
    out_console.print(t)
    extra = []
    if "rate_urls_per_s" in counts:
        extra.append(f"rate {counts['rate_urls_per_s']} URLs/s")
    if counts.get("eta_note"):
        extra.append(f"ETA {counts['eta_note']}")
    elif counts.get("eta_seconds") is not None:
        extra.append(f"ETA {counts['eta_seconds'] / 60:.1f} min")
    run = counts.get("last_run")
    if run is not None:
        line = f"last run: {run['state']}"
        if run.get("held_by"):
            line += f" (pid {run['held_by']['pid']}, {escape(run['held_by']['command'])})"
        elif run.get("note"):
            line += f" ({run['note']})"
        extra.append(line)
    kept = f"kept {counts['kept']}"
    if counts.get("kept_duplicates"):
        kept += f" ({counts['kept_duplicates']} more kept by the classifier were near-duplicates)"
    out_console.print(f"{kept}, rejected by classifier {counts['rejected_by_classifier']}. " + ", ".join(extra))


def print_story(story: dict[str, Any]) -> None:
    """``carcrawl why``: one URL's state, reason, attempts and where it came from."""
    o = out_console
    o.print(f"[bold]{escape(story['url'])}[/]", soft_wrap=True)
    reason = f": {escape(story['reason'])}" if story.get("reason") else ""
    o.print(f"  state    {escape(story['state'])}{reason} (after {story['attempts']} attempts; last change {story['updated_at'] or '?'})")
    if story.get("final_url"):
        o.print(f"  redirected to {escape(story['final_url'])}", soft_wrap=True)
    found = story.get("found_by")
    if found:
        o.print(f"  found by {escape(found['source'])} for query {escape(repr(found['query']))}, page {found['page']}, rank {found['rank']}")
        if found.get("search"):
            s = found["search"]
            sreason = f": {escape(s['reason'])}" if s.get("reason") else ""
            o.print(f"  that search: {escape(s['state'])}{sreason}, {s['pages']} pages, {s['found']} URLs found")
    else:
        o.print(f"  from {escape(story['source'])} (a URL list)")
    if story.get("labels"):
        o.print("  labels   " + escape(", ".join(f"{k}={v}" for k, v in story["labels"].items())))
    img = story.get("image")
    if img:
        ireason = f": {escape(img['reason'])}" if img.get("reason") else ""
        o.print(f"  image    {img['sha256'][:16]}... {img['bytes']} bytes, {escape(img['state'])}{ireason}")
    v = story.get("verdict")
    if v:
        o.print(f"  verdict  {'kept' if v['keep'] else 'rejected'} ({escape(v['reason'])}) by {escape(v['model'])}")


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
