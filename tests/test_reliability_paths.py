"""Path safety on the crawl side: labels from a URL list, a categories table or a catalogue
(``../../etc``, absolute paths, NUL bytes, very long names) never reach the filesystem. The crawl
writes only its checkpoint and content-addressed files ``images/ab/cd/<sha256>.<ext>`` inside the
output folder, whatever the labels say. (Export paths are tested with the export.)"""

from __future__ import annotations

import csv
import re
import sqlite3
import subprocess
from pathlib import Path

import pytest
from helpers import IMAGES, carcrawl_cmd, sandbox_in_thread

from carcrawl.filestore import relative_path

pytestmark = pytest.mark.usefixtures("shared")

HOSTILE = ["../../etc", "/etc/passwd", "..", "a/../../b", "nul\x00byte", "x" * 5000, "C:\\Windows\\x", "~root",
           "$(touch pwned)", "' OR 1=1; DROP TABLE candidates; --"]
IMAGE_FILE = re.compile(r"images/[0-9a-f]{2}/[0-9a-f]{2}/[0-9a-f]{64}\.(jpg|png|gif|webp|bmp|tif|avif|heic)")


@pytest.mark.parametrize("sha", ["../../etc/passwd", "a" * 63 + "\x00", "A" * 64, "a" * 65, "", "/" + "a" * 63])
def test_image_paths_take_only_hex_digests(sha: str) -> None:
    with pytest.raises(ValueError):
        relative_path(sha, "jpeg")


def test_an_unknown_format_cannot_steer_the_extension() -> None:
    assert relative_path("ab" * 32, "../../x").endswith(".bin")


def assert_only_crawl_files(root: Path, out: Path, inputs: set[str]) -> None:
    """Everything under ``root`` is an input file, the checkpoint, or a content-addressed image."""
    for p in root.rglob("*"):
        rel = p.relative_to(root).as_posix()
        if p.is_dir() or rel in inputs:
            continue
        assert p.resolve().is_relative_to(out.resolve()), f"written outside the output folder: {rel}"
        inner = p.relative_to(out).as_posix()
        assert inner.startswith("checkpoint.sqlite") or inner == ".carcrawl.lock" or IMAGE_FILE.fullmatch(inner), (
            f"unexpected file {inner}")


def test_hostile_labels_from_url_lists_and_categories_never_reach_the_filesystem(tmp_path: Path) -> None:
    root = tmp_path / "work"
    root.mkdir()
    with sandbox_in_thread(photos=IMAGES, hosts=2, latency_ms=(0, 0), fault_rate=0.0) as sb:
        urls = list(sb.image_urls(2 * len(HOSTILE)))
        with (root / "urls.csv").open("w", newline="") as f:
            w = csv.writer(f)
            w.writerow(["url", "make", "model", "category"])
            for i, label in enumerate(HOSTILE):
                w.writerow([urls[i], label, label[::-1], label])
        with (root / "cats.csv").open("w", newline="") as f:
            w = csv.writer(f)
            w.writerow(["code", "name", "to_download", "how_many"])
            for i, label in enumerate(HOSTILE):
                w.writerow([f"n{i}", label.replace("\x00", ""), "yes", 1])
        (root / "table.tsv").write_text(
            "".join(f"n{i}_1\t{urls[len(HOSTILE) + i]}\n" for i in range(len(HOSTILE))))
        (root / "c.toml").write_text('[crawl]\nallow_networks = ["127.0.0.0/8"]\n[download]\nper_host_interval = 0.0\n')
        out = root / "out"
        for args in (["urls.csv"], ["table.tsv", "--categories", "cats.csv"]):
            r = subprocess.run([*carcrawl_cmd(), "fetch", *args, "--out", "out", "--config", "c.toml",
                                "--no-classify", "--quiet"], capture_output=True, text=True, timeout=120, cwd=root)
            assert r.returncode == 0, r.stderr[-2000:]
    assert_only_crawl_files(root, out, {"urls.csv", "cats.csv", "table.tsv", "c.toml"})
    con = sqlite3.connect(out / "checkpoint.sqlite")
    assert con.execute("SELECT count(*) FROM candidates WHERE state='done'").fetchone()[0] == 2 * len(HOSTILE)
    stored = {c for (c,) in con.execute("SELECT category FROM candidates")}
    assert {"../../etc", "/etc/passwd", "x" * 5000, "' OR 1=1; DROP TABLE candidates; --"} <= stored  # kept, as data
    assert con.execute("PRAGMA integrity_check").fetchone()[0] == "ok"


def test_hostile_catalogue_names_never_reach_the_filesystem(tmp_path: Path) -> None:
    root = tmp_path / "work"
    root.mkdir()
    with sandbox_in_thread(photos=IMAGES, hosts=2, latency_ms=(0, 0), fault_rate=0.0, results_per_query=6) as sb:
        (root / "cat.csv").write_text("make,model\n../../etc,passwd\n/abs,..\n~root,$(touch pwned)\n")
        (root / "c.toml").write_text(
            '[crawl]\nallow_networks = ["127.0.0.0/8"]\nsources = ["bing"]\nper_query = 6\n'
            f'[download]\nper_host_interval = 0.0\n[engines.bing]\nbase_url = "{sb.engine_url("bing")}"\nrate = 50.0\n')
        r = subprocess.run([*carcrawl_cmd(), "crawl", "--catalog", "cat.csv", "--out", "out", "--config", "c.toml",
                            "--max-queries", "3", "--no-classify", "--quiet"],
                           capture_output=True, text=True, timeout=120, cwd=root)
        assert r.returncode == 0, r.stderr[-2000:]
    out = root / "out"
    assert_only_crawl_files(root, out, {"cat.csv", "c.toml"})
    con = sqlite3.connect(out / "checkpoint.sqlite")
    assert {m for (m,) in con.execute("SELECT DISTINCT make FROM candidates")} <= {"../../etc", "/abs", "~root"}
    assert con.execute("SELECT count(*) FROM images").fetchone()[0] > 0
