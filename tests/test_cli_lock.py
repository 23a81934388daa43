"""One crawl per output folder, seen from outside: a second ``carcrawl crawl`` on a folder a running
crawl holds refuses at once and names the holder; after a SIGKILL the lock is gone (the kernel
drops a flock with its process), ``status`` says the killed run was interrupted, not running, and
the same command resumes on the folder, saying in words what it took back."""

from __future__ import annotations

import json
import os
import signal
import sqlite3
import subprocess
import time
from pathlib import Path

from helpers import carcrawl_cmd, sandbox_in_thread

from carcrawl.lock import LOCK_NAME


def _crawl(sb: object, out: Path, *extra: str) -> list[str]:
    return [*carcrawl_cmd(), "crawl", "--sandbox", sb.engine_url("bing"), "--out", str(out),  # type: ignore[attr-defined]
            "--make", "ford", "--model", "mustang", "--no-classify", "--quiet", *extra]


def _wait_for_holder(out: Path, proc: subprocess.Popen[str]) -> dict[str, object]:
    """Until the crawl has written itself into the lock file (it holds the lock by then)."""
    lock = out / LOCK_NAME
    while proc.poll() is None:
        try:
            data = json.loads(lock.read_text())
        except (OSError, ValueError):
            data = {}
        if data.get("pid") == proc.pid:
            return data
        time.sleep(0.05)
    raise AssertionError(f"the first crawl ended before holding the folder: {proc.stderr.read() if proc.stderr else ''}")


def _in_flight(out: Path, proc: subprocess.Popen[str]) -> None:
    """Until the checkpoint has committed rows in flight (so the resume has something to take back)."""
    db = out / "checkpoint.sqlite"
    while proc.poll() is None:
        try:
            con = sqlite3.connect(f"file:{db}?mode=ro", uri=True)
            try:
                n = sum(con.execute(f"SELECT count(*) FROM {t} WHERE state='in_flight'").fetchone()[0]
                        for t in ("searches", "candidates"))
            finally:
                con.close()
        except sqlite3.Error:
            n = 0
        if n:
            return
        time.sleep(0.05)
    raise AssertionError("the first crawl ended before any row was in flight")


def test_second_crawl_refuses_while_first_runs_and_a_killed_crawls_lock_does_not_block(tmp_path: Path) -> None:
    out = tmp_path / "out"
    with sandbox_in_thread(latency_ms=(150, 250), hosts=2, fault_rate=0.0) as sb:
        cmd = _crawl(sb, out, "--max-queries", "2", "--per-query", "40")
        first = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, cwd=tmp_path)
        try:
            _wait_for_holder(out, first)
            second = subprocess.run(_crawl(sb, out), capture_output=True, text=True, timeout=60, cwd=tmp_path)
            assert second.returncode == 75, second.stderr
            lines = second.stderr.strip().splitlines()
            assert len(lines) == 1, second.stderr
            assert f"pid {first.pid}" in lines[0] and "carcrawl crawl" in lines[0] and "started" in lines[0]
            assert first.poll() is None  # the refusal did not disturb the running crawl

            # `status` while it runs names the holder, on stdout
            st = json.loads(subprocess.run([*carcrawl_cmd(), "status", str(out), "--json"], capture_output=True,
                                           text=True, timeout=60, check=True).stdout)
            if "last_run" in st:  # the run row may not be committed yet at this instant
                assert st["last_run"]["state"] == "running" and st["last_run"]["held_by"]["pid"] == first.pid
            _in_flight(out, first)
            first.send_signal(signal.SIGKILL)
            first.wait(30)
        finally:
            if first.poll() is None:
                first.kill()
                first.wait(30)

        st = json.loads(subprocess.run([*carcrawl_cmd(), "status", str(out), "--json"], capture_output=True,
                                       text=True, timeout=60, check=True).stdout)
        assert st["last_run"]["state"] == "interrupted", st["last_run"]
        assert "held_by" not in st["last_run"]
        human = subprocess.run([*carcrawl_cmd(), "status", str(out)], capture_output=True, text=True, timeout=60)
        assert "last run: interrupted" in " ".join(human.stdout.split()), human.stdout + human.stderr

        third = subprocess.run([a for a in cmd if a != "--quiet"], capture_output=True, text=True, timeout=300,
                               cwd=tmp_path)
        assert third.returncode == 0, third.stderr[-2000:]
        resumed = [line for line in third.stderr.splitlines() if line.startswith("resuming:")]
        assert resumed and " in flight when the last run stopped" in resumed[0] and "{" not in resumed[0], third.stderr[-2000:]
    # the third crawl took the folder over: the lock file names it, not the killed one
    assert json.loads((out / LOCK_NAME).read_text())["pid"] not in (first.pid, os.getpid())
