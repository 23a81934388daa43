"""`carcrawl demo` as `make demo` runs it: the whole pipeline offline on the embedded sandbox web,
with a real model. The sandbox's photos carry their ground truth in their URL (photo index), so
the test can check that vehicles were kept and non-vehicles rejected by the classifier."""

from __future__ import annotations

import json
import sqlite3
import subprocess
from pathlib import Path
from urllib.parse import urlsplit

from helpers import carcrawl_cmd, image_shas

from carcrawl.sandbox.photos import PhotoSet


def test_demo_builds_a_classified_dataset_offline(tmp_path: Path) -> None:
    out = tmp_path / "demo-out"
    proc = subprocess.run([*carcrawl_cmd(), "demo", "--out", str(out), "--json"], capture_output=True, text=True,
                          timeout=600, cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr[-3000:]
    summary = json.loads(proc.stdout.splitlines()[0])
    assert summary["state"] == "done"
    assert summary["classifier"]  # the model, device and decoder it used

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

    # the dataset a user trains on, the manifest and the report
    folder = out / "export" / "imagefolder"
    assert {p.name for p in folder.iterdir() if p.is_dir()} >= {"train"}
    assert list(folder.rglob("*.jpg"))
    assert list((out / "export" / "parquet").rglob("*.parquet"))
    assert (out / "report.html").is_file()
