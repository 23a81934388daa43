"""The image cap and per-class quotas as a user sets them on the command line: ``fetch
--max-images`` stops at the cap (plus at most the transfers in flight) and ends ``done``, with
the rest left pending for a later run; ``crawl --per-class`` stores at most that many images per
make/model and marks the rest ``rejected:quota_full`` without requesting them."""

from __future__ import annotations

import sqlite3
import subprocess
from pathlib import Path

from helpers import carcrawl_cmd, image_shas, sandbox_in_thread

CONCURRENCY = 2


def test_max_images_stops_at_the_cap_and_ends_done(tmp_path: Path) -> None:
    (tmp_path / "config.toml").write_text(
        f'[crawl]\nallow_networks = ["127.0.0.0/8"]\n[download]\nconcurrency = {CONCURRENCY}\nper_host_interval = 0.0\n')
    with sandbox_in_thread(latency_ms=(20, 40), hosts=2, fault_rate=0.0, photos=None) as sb:
        urls = list(sb.image_urls(33))  # the 33 shipped photos: every URL a distinct image
        (tmp_path / "urls.txt").write_text("\n".join(urls) + "\n")
        r = subprocess.run([*carcrawl_cmd(), "fetch", "urls.txt", "--out", "out", "--no-classify", "--max-images", "10"],
                           capture_output=True, text=True, timeout=300, cwd=tmp_path)
        asked = {a.path for a in sb.access_log.requests() if a.path.startswith("/img/")}
    assert r.returncode == 0, r.stderr[-2000:]
    assert "reached --max-images 10" in r.stderr
    stored = image_shas(tmp_path / "out")
    assert 10 <= len(stored) <= 10 + CONCURRENCY, len(stored)
    assert len(asked) <= 10 + CONCURRENCY  # nothing fetched past the cap but what was in flight
    con = sqlite3.connect(tmp_path / "out" / "checkpoint.sqlite")
    assert con.execute("SELECT state FROM runs ORDER BY id DESC").fetchone()[0] == "done"
    left = con.execute("SELECT count(*) FROM candidates WHERE state IN ('pending', 'in_flight')").fetchone()[0]
    assert left == 33 - len(asked)  # not tried, kept for a run with a higher cap


def test_per_class_quota_holds_and_the_rest_is_rejected_without_a_request(tmp_path: Path) -> None:
    (tmp_path / "config.toml").write_text("[download]\nconcurrency = 1\nper_host_interval = 0.0\n")
    with sandbox_in_thread(latency_ms=(0, 5), hosts=2, fault_rate=0.0) as sb:
        r = subprocess.run([*carcrawl_cmd(), "crawl", "--sandbox", sb.engine_url("bing"), "--out", "out",
                            "--make", "ford", "--model", "mustang", "--make", "toyota", "--model", "corolla",
                            "--color", "red", "--sources", "bing,openverse", "--per-query", "20", "--per-class", "3",
                            "--no-classify", "--quiet"], capture_output=True, text=True, timeout=300, cwd=tmp_path)
        asked = [a.path for a in sb.access_log.requests() if a.path.startswith("/img/")]
    assert r.returncode == 0, r.stderr[-2000:]
    con = sqlite3.connect(tmp_path / "out" / "checkpoint.sqlite")
    per_class = dict(con.execute(
        "SELECT c.make || '/' || c.model, count(*) FROM images i JOIN candidates c ON c.id = i.candidate_id GROUP BY 1"))
    assert set(per_class) == {"ford/mustang", "toyota/corolla"}, per_class
    assert all(n <= 3 + 1 for n in per_class.values()), per_class  # + the one transfer in flight
    full = con.execute("SELECT count(*) FROM candidates WHERE reason='quota_full' AND state='rejected'").fetchone()[0]
    assert full > 0
    assert len(asked) + full == con.execute("SELECT count(*) FROM candidates WHERE source != 'urls'").fetchone()[0]
