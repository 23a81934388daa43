"""Ctrl-C at real size: a 5 000-URL crawl over 8 slow hosts with faults (timeouts, resets, 5xx
that are retried), far more than the scheduler's 512-task buffer. A SIGINT at a random moment
must drain (running transfers finish, bounded by the timeouts), commit, exit 130, and leave
nothing ``in_flight``; the resumed run must end in exactly the state of an uninterrupted run
against an identical server (timeouts and 5xx cut off by the drain are not permanent failures).
"""

from __future__ import annotations

import json
import os
import random
import signal
import sqlite3
import subprocess
import time
from pathlib import Path
from urllib.parse import urlsplit

import pytest
from helpers import carcrawl_cmd, image_shas, sandbox_in_thread

pytestmark = pytest.mark.usefixtures("shared")

URLS = 5000
BUFFER = 512  # DownloadStage's scheduler buffer with the settings below (max(2 x 64, page 512))
#: committed in_flight rows that show the buffer full: far more than the 64 transfers running
#: (each held task is marked in flight; those that just finished are committed done a moment later)
HELD = 400
#: deterministic faults, some retried (5xx, timeouts, resets): a drain must not make them final
FAULT_MIX = ("http_404", "html_as_jpeg", "http_500", "slow_first_byte", "reset")
TOTAL_TIMEOUT = 4.0
#: a hang detector, not a measurement: running transfers end within TOTAL_TIMEOUT, then a commit
#: (timeouts generous enough that a loaded box never turns a good URL into a timeout in one run only)
EXIT_BOUND = 4 * TOTAL_TIMEOUT + 20


def sandbox() -> object:
    return sandbox_in_thread(hosts=8, latency_ms=(40, 120), fault_rate=0.08, seed=11, demo_faults=FAULT_MIX,
                             fault_delay_s=2 * TOTAL_TIMEOUT)


def write_config(path: Path, classify: bool) -> Path:
    path.write_text(
        '[crawl]\nallow_networks = ["127.0.0.0/8"]\n'
        "[download]\nconcurrency = 64\nper_host_concurrency = 6\nper_host_interval = 0.0\n"
        f"connect_timeout = 2.0\nread_timeout = {TOTAL_TIMEOUT / 2}\ntotal_timeout = {TOTAL_TIMEOUT}\n"
        "max_retries = 1\nbackoff_base = 0.05\nbackoff_max = 0.2\n"
        f"[classify]\nenabled = {'true' if classify else 'false'}\ndevice = \"cpu\"\nbatch_size = 16\n"
        "[store]\ncommit_interval = 0.2\n"
    )
    return path


def checkpoint_counts(db: Path) -> tuple[int, int]:
    """(candidates done, candidates in_flight) as committed, or (0, 0) before the file exists."""
    if not db.exists():
        return 0, 0
    try:
        con = sqlite3.connect(f"file:{db}?mode=ro", uri=True, timeout=1)
        try:
            rows = dict(con.execute("SELECT state, count(*) FROM candidates GROUP BY 1").fetchall())
        finally:
            con.close()
    except sqlite3.Error:
        return 0, 0
    return rows.get("done", 0), rows.get("in_flight", 0)


def outcome(out: Path) -> dict[str, set[tuple[object, ...]]]:
    """The end state, with each URL named by its host and path (the two servers' ports differ)."""
    con = sqlite3.connect(out / "checkpoint.sqlite")
    try:
        assert con.execute("PRAGMA integrity_check").fetchone()[0] == "ok"
        cands = {
            (urlsplit(u).hostname, urlsplit(u).path, state, reason, sha)
            for u, state, reason, sha in con.execute(
                "SELECT url, state, coalesce(reason,''), coalesce(sha256,'') FROM candidates")
        }
        return {
            "candidates": cands,
            "images": set(con.execute("SELECT sha256, path, state, coalesce(reason,'') FROM images")),
            "verdicts": set(con.execute("SELECT sha256, keep, reason FROM verdicts")),
        }
    finally:
        con.close()


def interrupt_once(cmd: list[str], out: Path, rng: random.Random, env: dict[str, str]) -> None:
    """Start the crawl, wait until it has committed downloads and holds a full buffer of work,
    SIGINT it at a random moment after that, and check the drain from outside."""
    db = out / "checkpoint.sqlite"
    before, _ = checkpoint_counts(db)
    proc = subprocess.Popen(cmd, stderr=subprocess.PIPE, text=True, env=env)
    end = time.monotonic() + 120
    while proc.poll() is None and time.monotonic() < end:
        done, in_flight = checkpoint_counts(db)
        if done > before + 100 and in_flight >= HELD:
            break
        time.sleep(0.05)
    assert proc.poll() is None, "the crawl ended before it could be interrupted"
    done, in_flight = checkpoint_counts(db)
    assert in_flight >= HELD, (done, in_flight)  # the buffer was full: the hang's condition
    time.sleep(rng.uniform(0.0, 1.5))
    proc.send_signal(signal.SIGINT)
    _, err = proc.communicate(timeout=EXIT_BOUND)
    assert proc.returncode == 130, err[-3000:]
    assert "resume" in err and "Traceback" not in err, err[-3000:]
    con = sqlite3.connect(db)
    try:
        assert con.execute("PRAGMA integrity_check").fetchone()[0] == "ok"
        assert con.execute("SELECT state FROM runs ORDER BY id DESC LIMIT 1").fetchone()[0] == "interrupted"
        pending = con.execute("SELECT count(*) FROM candidates WHERE state='pending'").fetchone()[0]
    finally:
        con.close()
    assert pending > 0, "the interrupt came too late to leave work for the resume"
    status = subprocess.run([*carcrawl_cmd(), "status", "--json", str(out)], capture_output=True, text=True,
                            env=env, timeout=60)
    assert status.returncode == 0, status.stderr
    st = json.loads(status.stdout)
    assert "in_flight" not in st["candidates"]["by_state"], st["candidates"]
    assert "in_flight" not in st["searches"]["by_state"], st["searches"]


@pytest.mark.slow
@pytest.mark.timeout(420)
@pytest.mark.parametrize("classify", [False, True], ids=["classify-off", "classify-on"])
def test_sigint_at_random_moments_of_a_5000_url_crawl_resumes_to_the_uninterrupted_state(
    tmp_path: Path, classify: bool
) -> None:
    rng = random.Random(5000 + classify)
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    config = write_config(tmp_path / "c.toml", classify)

    def fetch_cmd(urls: Path, out: Path) -> list[str]:
        return [*carcrawl_cmd(), "fetch", str(urls), "--out", str(out), "--config", str(config), "--quiet"]

    with sandbox() as sb:  # the uninterrupted reference
        ref_urls = tmp_path / "ref.txt"
        ref_urls.write_text("\n".join(sb.image_urls(URLS)) + "\n")  # type: ignore[attr-defined]
        reference = tmp_path / "reference"
        r = subprocess.run(fetch_cmd(ref_urls, reference), capture_output=True, text=True, env=env, timeout=300)
        assert r.returncode == 0, r.stderr[-3000:]

    with sandbox() as sb:  # an identical server, fresh: interrupted, resumed
        urls = tmp_path / "urls.txt"
        urls.write_text("\n".join(sb.image_urls(URLS)) + "\n")  # type: ignore[attr-defined]
        out = tmp_path / "out"
        cmd = fetch_cmd(urls, out)
        for _ in range(1 if classify else 2):
            interrupt_once(cmd, out, rng, env)
        r = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=300)
        assert r.returncode == 0, r.stderr[-3000:]

    want, got = outcome(reference), outcome(out)
    assert len(want["candidates"]) == URLS
    diff = sorted(got["candidates"] ^ want["candidates"], key=str)[:6]
    assert got["candidates"] == want["candidates"], diff
    assert got["images"] == want["images"]
    assert got["verdicts"] == want["verdicts"]
    reasons = {reason for *_, state, reason, _ in want["candidates"] if state != "done"}
    assert {"http_500", "timeout"} <= reasons, reasons  # the retried faults really were in the crawl
    assert image_shas(out) == {sha for sha, *_ in want["images"]}
    assert not list((out / "images" / ".tmp").iterdir())
