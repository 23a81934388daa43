"""Ctrl-C as a user presses it: the first SIGINT drains and commits and exits 130 with a resume
hint; a second SIGINT stops at once; either way the same command resumes to the same result.
The list is longer than the scheduler's 512-task buffer, so the signal lands with it full (see
also test_reliability_drain.py: 5 000 URLs with faults, against an uninterrupted run)."""

from __future__ import annotations

import os
import signal
import sqlite3
import subprocess
import time
from pathlib import Path

import pytest
from helpers import IMAGES, carcrawl_cmd, image_shas, sandbox_in_thread

pytestmark = pytest.mark.usefixtures("shared")


def _started(out: Path, proc: subprocess.Popen[str], deadline: float = 60.0) -> None:
    """Wait until the crawl has committed its first downloads (so the signal lands mid-crawl)."""
    end = time.monotonic() + deadline
    db = out / "checkpoint.sqlite"
    while time.monotonic() < end and proc.poll() is None:
        if db.exists():
            try:
                con = sqlite3.connect(f"file:{db}?mode=ro", uri=True, timeout=1)
                n = con.execute("SELECT count(*) FROM candidates WHERE state='done'").fetchone()[0]
                con.close()
                if n:
                    return
            except sqlite3.Error:
                pass
        time.sleep(0.1)
    raise AssertionError("the crawl never got going")


@pytest.mark.parametrize("presses", [1, 2])
def test_ctrl_c_stops_cleanly_and_the_same_command_resumes(tmp_path: Path, presses: int) -> None:
    n = 2000
    with sandbox_in_thread(photos=IMAGES, hosts=4, latency_ms=(30, 60), fault_rate=0.0) as sb:
        urls = tmp_path / "urls.txt"
        urls.write_text("\n".join(sb.image_urls(n)) + "\n")
        config = tmp_path / "c.toml"
        config.write_text('[crawl]\nallow_networks = ["127.0.0.0/8"]\n[download]\nper_host_interval = 0.02\n'
                          "per_host_concurrency = 2\n[store]\ncommit_interval = 0.2\n")
        out = tmp_path / "out"
        cmd = [*carcrawl_cmd(), "fetch", str(urls), "--out", str(out), "--config", str(config), "--no-classify",
               "--quiet"]
        env = {**os.environ, "PYTHONUNBUFFERED": "1"}
        proc = subprocess.Popen(cmd, stderr=subprocess.PIPE, text=True, env=env)
        _started(out, proc)
        for _ in range(presses):
            proc.send_signal(signal.SIGINT)
            time.sleep(0.05)
        _, err = proc.communicate(timeout=60)
        assert proc.returncode == 130, err
        assert "resume" in err  # tells the user what to do next
        con = sqlite3.connect(out / "checkpoint.sqlite")
        assert con.execute("PRAGMA integrity_check").fetchone()[0] == "ok"
        done_before = con.execute("SELECT count(*) FROM candidates WHERE state='done'").fetchone()[0]
        con.close()
        assert 0 < done_before < n
        con = sqlite3.connect(out / "checkpoint.sqlite")
        # a drain records the run as interrupted, a second press as cancelled; neither leaves a
        # row in flight (the untried URLs are pending for the resume)
        assert con.execute("SELECT state FROM runs ORDER BY id DESC LIMIT 1").fetchone()[0] == "interrupted"
        assert con.execute("SELECT count(*) FROM candidates WHERE state='in_flight'").fetchone()[0] == 0
        con.close()
        finished = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=120)
        assert finished.returncode == 0, finished.stderr
    con = sqlite3.connect(out / "checkpoint.sqlite")
    states = dict(con.execute("SELECT state || ':' || coalesce(reason, ''), count(*) FROM candidates GROUP BY 1"))
    assert states == {"done:": n}
    assert len(image_shas(out)) == con.execute("SELECT count(*) FROM images").fetchone()[0]
    assert not list((out / "images" / ".tmp").iterdir())
