"""Disk full: a crawl writing into a small filesystem (a size-limited tmpfs) stops with one clear
message and exit status 75 (EX_TEMPFAIL), loses nothing it committed, and -- once there is space
again -- the same command resumes and completes the crawl.

Mounting needs root (or CAP_SYS_ADMIN); elsewhere the test is skipped and says why."""

from __future__ import annotations

import contextlib
import hashlib
import os
import sqlite3
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest
from helpers import IMAGES, carcrawl_cmd, image_shas, sandbox_in_thread

pytestmark = pytest.mark.usefixtures("shared")


@contextlib.contextmanager
def small_tmpfs(where: Path, size: str) -> Iterator[Path]:
    where.mkdir(parents=True, exist_ok=True)
    if os.geteuid() != 0:
        pytest.skip("mounting a size-limited tmpfs needs root; run as root (CI container) to test a full disk")
    r = subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(where)],
                       capture_output=True, text=True)
    if r.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here ({r.stderr.strip() or r.returncode}); no disk-full test")
    try:
        yield where
    finally:
        subprocess.run(["umount", "-l", str(where)], check=False)


def grow(where: Path, size: str) -> None:
    subprocess.run(["mount", "-o", f"remount,size={size}", str(where)], check=True)


@pytest.mark.timeout(180)
def test_a_full_disk_stops_cleanly_and_resume_completes(tmp_path: Path) -> None:
    with sandbox_in_thread(photos=IMAGES, hosts=4, latency_ms=(0, 0), fault_rate=0.0) as sb:
        urls = list(sb.image_urls(200))  # ~150 distinct photos, ~30 MB
        ps = sb.photo_set
        assert ps is not None
        want = {hashlib.sha256(ps.photos[int(u.split("/")[-3])].data).hexdigest() for u in urls}
        urls_file = tmp_path / "urls.txt"
        urls_file.write_text("\n".join(urls) + "\n")
        config = tmp_path / "c.toml"
        config.write_text('[crawl]\nallow_networks = ["127.0.0.0/8"]\n[download]\nper_host_interval = 0.0\n'
                          "[store]\ncommit_interval = 0.2\n")
        with small_tmpfs(tmp_path / "mnt", "6m") as mnt:
            out = mnt / "out"
            cmd = [*carcrawl_cmd(), "fetch", str(urls_file), "--out", str(out), "--config", str(config),
                   "--no-classify", "--quiet"]
            first = subprocess.run(cmd, capture_output=True, text=True, timeout=120)
            assert first.returncode == 75, first.stderr[-2000:]
            assert "Traceback" not in first.stderr
            message = [line for line in first.stderr.splitlines() if line.startswith("carcrawl: error:")]
            assert len(message) == 1 and "no space left" in message[0], first.stderr[-2000:]

            # nothing lost: the checkpoint is sound and every image it records is on disk, whole
            con = sqlite3.connect(out / "checkpoint.sqlite")
            assert con.execute("PRAGMA integrity_check").fetchone()[0] == "ok"
            recorded = con.execute("SELECT sha256, path FROM images").fetchall()
            con.close()
            for sha, rel in recorded:
                assert hashlib.sha256((out / rel).read_bytes()).hexdigest() == sha
            assert len(recorded) < len(want), "the disk was never full; make the tmpfs smaller"

            grow(mnt, "128m")
            second = subprocess.run(cmd, capture_output=True, text=True, timeout=120)
            assert second.returncode == 0, second.stderr[-2000:]
            assert image_shas(out) == want
            con = sqlite3.connect(out / "checkpoint.sqlite")
            assert con.execute("PRAGMA integrity_check").fetchone()[0] == "ok"
            assert {s for (s,) in con.execute("SELECT sha256 FROM images")} == want
            assert con.execute("SELECT count(*) FROM candidates WHERE state != 'done'").fetchone()[0] == 0
            con.close()
            assert not list((out / "images" / ".tmp").iterdir())


@pytest.mark.timeout(180)
def test_a_full_disk_under_the_checkpoint_is_the_same_clear_stop(tmp_path: Path) -> None:
    with sandbox_in_thread(photos=IMAGES, hosts=4, latency_ms=(0, 0), fault_rate=0.0) as sb:
        urls = list(sb.image_urls(3000))
        urls_file = tmp_path / "urls.txt"
        urls_file.write_text("\n".join(urls) + "\n")
        with small_tmpfs(tmp_path / "mnt", "512k") as mnt:
            config = tmp_path / "c.toml"
            config.write_text(f'[crawl]\ncheckpoint = "{mnt / "checkpoint.sqlite"}"\nallow_networks = ["127.0.0.0/8"]\n'
                              "[download]\nper_host_interval = 0.0\n[store]\ncommit_interval = 0.2\n")
            out = tmp_path / "out"
            cmd = [*carcrawl_cmd(), "fetch", str(urls_file), "--out", str(out), "--config", str(config),
                   "--no-classify", "--quiet"]
            first = subprocess.run(cmd, capture_output=True, text=True, timeout=120)
            assert first.returncode == 75, first.stderr[-2000:]
            assert "Traceback" not in first.stderr
            assert first.stderr.startswith("carcrawl: error:") and "no space left" in first.stderr, first.stderr[-2000:]
            con = sqlite3.connect(mnt / "checkpoint.sqlite")
            assert con.execute("PRAGMA integrity_check").fetchone()[0] == "ok"
            con.close()

            grow(mnt, "64m")
            second = subprocess.run(cmd, capture_output=True, text=True, timeout=120)
            assert second.returncode == 0, second.stderr[-2000:]
            con = sqlite3.connect(mnt / "checkpoint.sqlite")
            assert con.execute("PRAGMA integrity_check").fetchone()[0] == "ok"
            assert con.execute("SELECT count(*) FROM candidates WHERE state != 'done'").fetchone()[0] == 0
            assert {s for (s,) in con.execute("SELECT sha256 FROM images")} == image_shas(out)
            con.close()


async def test_a_commit_that_fails_keeps_its_batch_and_the_next_commits_it(tmp_path: Path) -> None:
    """The writer's own promise: a failed commit (the checkpoint's filesystem full) raises one
    clear DiskFullError and puts its batch back; once there is room, the next commit writes every
    row, none lost, none twice."""
    from carcrawl.errors import DiskFullError
    from carcrawl.models import Labels
    from carcrawl.store import Store

    # a fresh checkpoint (schema, counters and their triggers) takes ~120 KB, twice that in the WAL
    with small_tmpfs(tmp_path / "mnt", "1m") as mnt:
        store = await Store.open(mnt / "c.sqlite", commit_rows=10**9)
        written = failed_at = 0
        while failed_at == 0:
            for _ in range(500):
                store.add_url_candidate(f"http://h{written % 7}.example/{written}-{'x' * 200}.jpg", f"k{written}",
                                        Labels(category="c"))
                written += 1
            try:
                await store.flush()
            except DiskFullError as e:
                assert "no space left" in str(e)
                failed_at = written
            assert written < 100_000, "the disk never filled"
        assert store.buffered == 500  # the failed batch is back in the buffer, nothing dropped
        store.add_url_candidate("http://late.example/1.jpg", "late", Labels(category="c"))  # written after it
        grow(mnt, "64m")
        assert await store.flush() == 501
        await store.close()
        con = sqlite3.connect(mnt / "c.sqlite")
        assert con.execute("SELECT count(*), count(DISTINCT url_key) FROM candidates").fetchone() == (written + 1,) * 2
        assert con.execute("PRAGMA integrity_check").fetchone()[0] == "ok"
        con.close()
