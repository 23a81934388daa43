"""`carcrawl demo` as `make demo` runs it: the whole pipeline offline on the embedded sandbox web,
with a real model. The sandbox's photos carry their ground truth in their URL (photo index) and
their tags (make, model: TAGS.csv), so the test can check that vehicles were kept, non-vehicles
rejected, and the exported classes hold what their names say. One demo run, as a user sees it
(the human output), also shows that the final progress bars equal the summary."""

from __future__ import annotations

import json
import os
import re
import sqlite3
import subprocess
from pathlib import Path
from urllib.parse import urlsplit

from helpers import carcrawl_cmd, image_shas

from carcrawl.export.labels import safe_name
from carcrawl.sandbox.photos import PhotoSet


def _bar(text: str, name: str) -> tuple[int, int]:
    m = re.search(rf"^{name}\s.*?(\d+)/(\d+)", text, re.MULTILINE)
    assert m, f"no {name} bar in:\n{text}"
    return int(m.group(1)), int(m.group(2))


def _row(text: str, label: str) -> int:
    m = re.search(rf"{re.escape(label)}\s*│\s*(\d+)", text)
    assert m, f"no summary row {label!r} in:\n{text}"
    return int(m.group(1))


def test_demo_builds_a_classified_dataset_offline(tmp_path: Path) -> None:
    out = tmp_path / "demo-out"
    proc = subprocess.run([*carcrawl_cmd(), "demo", "--out", str(out)], capture_output=True, text=True,
                          timeout=600, cwd=tmp_path, env={**os.environ, "COLUMNS": "200"})
    assert proc.returncode == 0, proc.stderr[-3000:]
    err = proc.stderr
    assert re.search(r"carcrawl run \d+: done in", err), err[-3000:]
    assert re.search(r"^classify: \S+", err, re.MULTILINE)  # the model, device and decoder it used

    # the final bars equal the summary: every search, every distinct URL, every stored image
    searched, search_total = _bar(err, "search")
    assert searched == search_total == _row(err, "searches finished (this run)")
    downloaded, download_total = _bar(err, "download")
    assert downloaded == download_total == _row(err, "images downloaded (this run)") + _row(
        err, "download failures (this run)")
    classified, classify_total = _bar(err, "classify")
    assert classified == classify_total == _row(err, "classified (this run)") == _row(err, "stored images (total)")
    kept_bar = int(re.search(r"^classify\s.*?(\d+) kept", err, re.MULTILINE).group(1))  # type: ignore[union-attr]
    assert kept_bar == _row(err, "kept in dataset (total)")

    con = sqlite3.connect(out / "checkpoint.sqlite")
    assert con.execute("PRAGMA integrity_check").fetchone()[0] == "ok"
    stored = image_shas(out)
    assert len(stored) >= 40
    assert stored == {s for (s,) in con.execute("SELECT sha256 FROM images")}
    # the sandbox's faults became reasons, and no non-image reached disk
    reasons = dict(con.execute("SELECT reason, count(*) FROM candidates WHERE state != 'done' GROUP BY reason"))
    assert any(r.startswith("not_image") for r in reasons), reasons
    # every stored image was judged by the real model
    judged = dict(con.execute("SELECT sha256, keep FROM verdicts"))
    assert set(judged) == stored

    photos = PhotoSet().photos
    truth: dict[str, str] = {}
    for url, sha in con.execute("SELECT url, sha256 FROM candidates WHERE state='done'"):
        parts = urlsplit(url).path.strip("/").split("/")
        if parts[0] == "img":
            truth[sha] = photos[int(parts[1])].label
    vehicles = [s for s, label in truth.items() if label == "vehicle"]
    others = [s for s, label in truth.items() if label == "other"]
    assert vehicles and others
    recall = sum(judged[s] for s in vehicles) / len(vehicles)
    rejected = sum(not judged[s] for s in others) / len(others)
    assert recall >= 0.7, f"only {recall:.0%} of vehicle photos kept"
    assert rejected >= 0.7, f"only {rejected:.0%} of non-vehicle photos rejected"

    # the download bar counted distinct URLs: exactly the checkpoint's candidates
    assert download_total == con.execute("SELECT count(*) FROM candidates").fetchone()[0]

    # the dataset a user trains on, the manifest and the report
    folder = out / "export" / "imagefolder"
    assert {p.name for p in folder.iterdir() if p.is_dir()} >= {"train"}
    exported = list(folder.rglob("*.jpg"))
    assert len(exported) >= 10
    # the sandbox answers a query mostly with photos of what it names (plus noise), so most exported
    # images sit in the class of the make and model their photo really shows
    shows: dict[str, str] = {}
    for url, sha in con.execute("SELECT url, sha256 FROM candidates WHERE state='done'"):
        parts = urlsplit(url).path.strip("/").split("/")
        if parts[0] == "img":
            tags = photos[int(parts[1])].tags
            shows[sha] = safe_name(f"{tags.make}_{tags.model}") if tags.make and tags.model else "?"
    # the export's "not exported:" line adds up: the reasons shown plus "and N more" are every
    # stored image that is not in the dataset
    flat = " ".join(err.split())
    m = re.search(r"not exported: (.*?)(?: and (\d+) more reasons \((\d+) images\))?(?= \d+ exported images| warning|$)", flat)
    assert m, flat[-2000:]
    listed = sum(int(x) for x in re.findall(r" (\d+)(?:,|$)", m.group(1) + ","))
    assert listed + int(m.group(3) or 0) == len(stored) - len(exported), m.group(0)
    right = [f for f in exported if shows.get(f.stem) == f.parent.name]
    assert len(right) >= 0.7 * len(exported), [(f.parent.name, shows.get(f.stem)) for f in exported]
    assert list((out / "export" / "parquet").rglob("*.parquet"))
    assert (out / "report.html").is_file()

    # after the export found near-duplicates, status's "kept" is what the dataset can hold: kept by
    # the classifier and not a duplicate (those are counted apart), so it agrees with the images done
    st = json.loads(subprocess.run([*carcrawl_cmd(), "status", str(out), "--json"], capture_output=True, text=True,
                                   timeout=60, check=True).stdout)
    assert st["kept"] + st["kept_duplicates"] == kept_bar
    assert st["kept_duplicates"] > 0  # the sandbox serves near-duplicate re-encodings
    assert st["kept"] <= st["images"]["by_state"]["done"]
