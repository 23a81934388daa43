"""The whole spine against the real sandbox web on loopback: search → download → checkpoint,
politeness as the server saw it, non-images never on disk, kill -9 and resume."""

from __future__ import annotations

import os
import random
import signal
import sqlite3
import subprocess
import time
from pathlib import Path

import pytest
from helpers import (
    IMAGES,
    assert_status_counters_match_rows,
    carcrawl_cmd,
    crawl_settings,
    image_shas,
    sandbox_in_thread,
)

from carcrawl.models import Labels, Query
from carcrawl.pipeline import Job, Pipeline
from carcrawl.urllists import UrlRow

pytestmark = pytest.mark.usefixtures("shared")


def url_job(urls: list[str]) -> Job:
    rows = [UrlRow(u, Labels(category="c"), i) for i, u in enumerate(urls)]
    return Job(urls=lambda: iter(rows), fingerprint=str(len(rows)))


async def test_html_served_as_jpeg_never_reaches_disk(tmp_path: Path) -> None:
    with sandbox_in_thread(photos=IMAGES, hosts=2, latency_ms=(0, 0), fault_rate=0.0) as sb:
        bad = [sb.fault_url("html_as_jpeg", i) for i in range(10)]
        good = list(sb.image_urls(10))
        out = tmp_path / "out"
        s = crawl_settings(out, **{"download.per_host_interval": 0.0})
        result = await Pipeline(s, url_job(bad + good), fresh=True).run()
    assert result.status["reasons"].get("not_image:html") == 10
    for p in (out / "images").rglob("*"):
        if p.is_file():
            assert not p.read_bytes()[:64].lstrip().lower().startswith((b"<!doctype", b"<html")), p
    con = sqlite3.connect(out / "checkpoint.sqlite")
    assert con.execute("SELECT count(*) FROM images").fetchone()[0] == len(image_shas(out))


async def test_crawl_searches_the_sandbox_engines_and_downloads(tmp_path: Path) -> None:
    with sandbox_in_thread(photos=IMAGES, hosts=4, latency_ms=(0, 5), fault_rate=0.1, results_per_query=30) as sb:
        out = tmp_path / "out"
        s = crawl_settings(out, sb, **{"crawl.sources": ["bing", "openverse"], "crawl.per_query": 20,
                                     "download.per_host_interval": 0.0})
        queries = [Query(f"{c} ford mustang", Labels("ford", "mustang", c)) for c in ("red", "blue", "black")]
        result = await Pipeline(s, Job(queries=lambda: iter(queries), fingerprint="q"), fresh=True).run()
    st = result.status
    assert st["searches"]["by_state"] == {"done": 6}
    con = sqlite3.connect(out / "checkpoint.sqlite")
    assert con.execute("SELECT count(DISTINCT source) FROM candidates").fetchone()[0] == 2
    assert con.execute("SELECT count(*) FROM candidates WHERE make='ford' AND model='mustang'").fetchone()[0] > 30
    assert st["candidates"]["by_state"].get("pending", 0) == 0
    assert st["images"]["by_state"]["done"] > 0
    assert any(r.startswith(("not_image", "http_", "truncated")) for r in st["reasons"])
    assert_status_counters_match_rows(out / "checkpoint.sqlite")


def _fetch_cmd(urls_file: Path, out: Path, config: Path) -> list[str]:
    return [*carcrawl_cmd(), "fetch", str(urls_file), "--out", str(out), "--config", str(config), "--no-classify", "--quiet"]


def _committed_done(db: Path) -> bool:
    if not db.exists():
        return False
    try:
        con = sqlite3.connect(f"file:{db}?mode=ro", uri=True, timeout=1)
        try:
            return bool(con.execute("SELECT count(*) FROM candidates WHERE state='done'").fetchone()[0])
        finally:
            con.close()
    except sqlite3.Error:
        return False


def test_sigkill_and_resume_stores_the_same_images_and_refetches_nothing_done(tmp_path: Path) -> None:
    rng = random.Random(7)
    with sandbox_in_thread(photos=IMAGES, hosts=6, latency_ms=(20, 60), fault_rate=0.0) as sb:
        urls = list(sb.image_urls(600))
        urls += [sb.fault_url("html_as_jpeg", i) for i in range(20)] + [sb.fault_url("http_404", i) for i in range(20)]
        urls_file = tmp_path / "urls.txt"
        urls_file.write_text("\n".join(urls) + "\n")
        config = tmp_path / "c.toml"
        config.write_text('[crawl]\nallow_networks = ["127.0.0.0/8"]\n[download]\nper_host_interval = 0.01\n'
                          "per_host_concurrency = 4\n[store]\ncommit_interval = 0.2\ncommit_rows = 50\n")
        env = {**os.environ, "PYTHONUNBUFFERED": "1"}
        reference = tmp_path / "reference"
        subprocess.run(_fetch_cmd(urls_file, reference, config), check=True, env=env, timeout=300)
        expected = image_shas(reference)
        assert len(expected) > 20

        killed = tmp_path / "killed"
        kills = 0
        for _ in range(3):
            proc = subprocess.Popen(_fetch_cmd(urls_file, killed, config), env=env)
            # the kill lands mid-download however slow the start-up is on a loaded box
            db = killed / "checkpoint.sqlite"
            while proc.poll() is None and not _committed_done(db):
                time.sleep(0.05)
            time.sleep(rng.uniform(0.0, 1.5))
            if proc.poll() is not None:
                break
            proc.send_signal(signal.SIGKILL)
            proc.wait()
            kills += 1
            con = sqlite3.connect(killed / "checkpoint.sqlite")
            done_before = {u for (u,) in con.execute("SELECT url FROM candidates WHERE state='done'")}
            con.close()
            sb.access_log.clear()
            t_restart = time.monotonic()
        assert kills >= 1, "the crawl finished before it could be killed; make it slower"
        subprocess.run(_fetch_cmd(urls_file, killed, config), check=True, env=env, timeout=300)
        # nothing the checkpoint had as done before the last restart was fetched again
        refetched = [a for a in sb.access_log.requests() if a.start >= t_restart and any(a.path in u for u in done_before)]
        assert not refetched, refetched[:3]

    assert image_shas(killed) == expected
    con = sqlite3.connect(killed / "checkpoint.sqlite")
    assert con.execute("PRAGMA integrity_check").fetchone()[0] == "ok"
    assert {s for (s,) in con.execute("SELECT sha256 FROM images")} == expected
    assert con.execute("SELECT count(*) FROM candidates WHERE state IN ('pending','in_flight')").fetchone()[0] == 0
    assert not list((killed / "images" / ".tmp").iterdir())


def test_status_json_counts_blocked_addresses(tmp_path: Path) -> None:
    """Without an explicit allowlist, loopback URLs are refused (SSRF guard) and counted."""
    urls = tmp_path / "urls.txt"
    urls.write_text("http://127.0.0.1:9/a.jpg\nhttp://localhost:9/b.jpg\nhttp://10.0.0.1/c.jpg\n")
    out = tmp_path / "out"
    subprocess.run([*carcrawl_cmd(), "fetch", str(urls), "--out", str(out), "--no-classify", "--quiet"],
                   check=True, timeout=120, cwd=tmp_path)
    import json

    st = json.loads(subprocess.run([*carcrawl_cmd(), "status", "--json", str(out)], check=True, timeout=60,
                                   capture_output=True, text=True).stdout)
    assert st["reasons"] == {"blocked_address": 3}
    assert not image_shas(out)


def test_cli_import_does_not_load_torch() -> None:
    """``carcrawl --help`` must be instant: only the classify package imports torch, lazily."""
    code = "import sys, carcrawl.cli, carcrawl.pipeline; sys.exit('torch' in sys.modules)"
    assert subprocess.run([carcrawl_cmd()[0], "-c", code], timeout=60).returncode == 0
