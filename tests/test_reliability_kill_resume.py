"""Kill and resume: ``carcrawl crawl`` against the sandbox engines is SIGKILLed at 20 random moments
(during start-up, search, download and -- where the classifier is installed -- classify) and
restarted each time. The end state must equal an uninterrupted run's: the same stored images
(sha256), the same outcome for every candidate URL (and the same verdicts), a sound SQLite file,
and no orphan files (temporary or stored-but-unrecorded)."""

from __future__ import annotations

import os
import random
import signal
import sqlite3
import subprocess
import time
from collections import Counter
from pathlib import Path

import pytest
from helpers import IMAGES, assert_status_counters_match_rows, carcrawl_cmd, image_shas, sandbox_in_thread

pytestmark = pytest.mark.usefixtures("shared")

KILLS = 20
SOURCES = ("bing", "openverse", "wikimedia")


def classify_available() -> bool:
    """Whether the classify package is built (another part of the project); then its phase is
    killed too."""
    try:
        from carcrawl.classify import load_classifier  # noqa: F401
    except ImportError:
        return False
    return True


def write_config(path: Path, sb: object) -> Path:
    lines = [
        "[crawl]", 'allow_networks = ["127.0.0.0/8"]', f"sources = {list(SOURCES)!r}".replace("'", '"'),
        "per_query = 60",
        "[download]", "per_host_interval = 0.05", "per_host_concurrency = 2", "max_retries = 1",
        "backoff_base = 0.05",
        "[classify]", 'device = "cpu"',
        "[store]", "commit_interval = 0.2", "commit_rows = 100",
    ]
    for e in SOURCES:
        lines += [f"[engines.{e}]", f'base_url = "{sb.engine_url(e)}"', "rate = 3.0"]  # type: ignore[attr-defined]
    path.write_text("\n".join(lines) + "\n")
    return path


def crawl_cmd(config: Path, out: Path, classify: bool) -> list[str]:
    return [*carcrawl_cmd(), "crawl", "--config", str(config), "--out", str(out), "--make", "ford",
            "--model", "mustang", "--max-queries", "8", "--quiet", *([] if classify else ["--no-classify"])]


def phase(out: Path) -> str:
    """Which phase the checkpoint says the crawl was in."""
    db = out / "checkpoint.sqlite"
    if not db.exists():
        return "start-up"
    con = sqlite3.connect(db)
    try:
        if not con.execute("SELECT count(*) FROM sqlite_master WHERE name='searches'").fetchone()[0]:
            return "start-up"
        (queries,) = con.execute("SELECT count(*) FROM queries").fetchone()
        if not queries:
            return "start-up"
        if con.execute("SELECT count(*) FROM searches WHERE state IN ('pending','in_flight')").fetchone()[0]:
            return "search"
        if con.execute("SELECT count(*) FROM candidates WHERE state IN ('pending','in_flight')").fetchone()[0]:
            classifying = con.execute("SELECT count(*) FROM verdicts").fetchone()[0]
            return "download+classify" if classifying else "download"
        if con.execute("SELECT count(*) FROM images WHERE state='pending'").fetchone()[0]:
            return "classify"
        return "finished"
    finally:
        con.close()


def runs_started(out: Path) -> int:
    """How many runs the checkpoint has recorded (a run's row is written once it has recovered)."""
    try:
        con = sqlite3.connect(out / "checkpoint.sqlite")
        try:
            return int(con.execute("SELECT count(*) FROM runs").fetchone()[0])
        finally:
            con.close()
    except sqlite3.Error:
        return 0


def outcome(out: Path) -> dict[str, object]:
    con = sqlite3.connect(out / "checkpoint.sqlite")
    try:
        assert con.execute("PRAGMA integrity_check").fetchone()[0] == "ok"
        return {
            "candidates": set(con.execute("SELECT url_key, state, coalesce(reason,''), coalesce(sha256,'') FROM candidates")),
            "searches": set(con.execute("SELECT q.text, s.source, s.state FROM searches s JOIN queries q ON q.id=s.query_id")),
            "images": set(con.execute("SELECT sha256, path, state FROM images")),
            "verdicts": set(con.execute("SELECT sha256, keep, reason FROM verdicts")),
        }
    finally:
        con.close()


@pytest.mark.slow
@pytest.mark.timeout(280)
def test_twenty_sigkills_and_resumes_end_where_an_uninterrupted_run_ends(tmp_path: Path) -> None:
    rng = random.Random(20261123)
    classify = classify_available()
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    with sandbox_in_thread(photos=IMAGES, hosts=6, latency_ms=(20, 60), fault_rate=0.1, results_per_query=40) as sb:
        config = write_config(tmp_path / "c.toml", sb)
        reference = tmp_path / "reference"
        subprocess.run(crawl_cmd(config, reference, classify), check=True, env=env, timeout=240, cwd=tmp_path)

        killed = tmp_path / "killed"
        phases: Counter[str] = Counter()
        for k in range(KILLS):
            runs_before = runs_started(killed)
            proc = subprocess.Popen(crawl_cmd(config, killed, classify), env=env, cwd=tmp_path,
                                    stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
            # every fifth kill lands in start-up; the others at a random moment after this run has
            # recovered the checkpoint, so the kills reach search and download however loaded
            # the machine is
            started = time.monotonic()
            while (k % 5 and runs_started(killed) == runs_before and proc.poll() is None
                   and time.monotonic() - started < 30):
                time.sleep(0.02)
            time.sleep(rng.uniform(0.0, 1.5) if k % 5 else rng.uniform(0.1, 1.0))
            seen = phase(killed)
            proc.send_signal(signal.SIGKILL)
            # a crawl may finish before its kill lands; either way it must not have crashed
            assert proc.wait(30) in (-signal.SIGKILL, 0)
            phases[seen] += 1
            if (killed / "checkpoint.sqlite").exists():
                con = sqlite3.connect(killed / "checkpoint.sqlite")
                assert con.execute("PRAGMA integrity_check").fetchone()[0] == "ok"
                con.close()
        print(f"kills by phase: {dict(phases)}")
        subprocess.run(crawl_cmd(config, killed, classify), check=True, env=env, timeout=240, cwd=tmp_path)

    assert phases["search"] >= 1 and phases["download"] + phases["download+classify"] >= 1, phases
    want, got = outcome(reference), outcome(killed)
    assert got["searches"] == want["searches"]
    assert got["candidates"] == want["candidates"], (
        len(got["candidates"] - want["candidates"]), sorted(got["candidates"] - want["candidates"])[:3])  # type: ignore[operator]
    assert got["images"] == want["images"]
    assert got["verdicts"] == want["verdicts"]
    assert_status_counters_match_rows(killed / "checkpoint.sqlite")  # twenty kills mid-transaction
    assert image_shas(killed) == image_shas(reference) == {s for s, _, _ in want["images"]}  # type: ignore[attr-defined]
    assert not list((killed / "images" / ".tmp").iterdir()), "orphan temporary files"
    on_disk = {p.relative_to(killed).as_posix() for p in (killed / "images").glob("*/*/*.*")}
    assert on_disk == {path for _, path, _ in got["images"]}, "files on disk the checkpoint does not know"  # type: ignore[attr-defined]
