"""The mission-scale rehearsal runs end to end at a few hundred images (untimed: numbers come
from ``python benchmarks/mission_scale.py --size 100000``), so the benchmark cannot rot."""

from __future__ import annotations

import json
import re
import subprocess
import sys
from pathlib import Path

import pytest
from helpers import ROOT

pytestmark = pytest.mark.usefixtures("shared")


def test_mission_scale_smoke(tmp_path: Path) -> None:
    results = tmp_path / "mission.json"
    r = subprocess.run([sys.executable, str(ROOT / "benchmarks" / "mission_scale.py"), "--size", "500", "--no-lock",
                        "--no-plot", "--results", str(results), "--work", str(tmp_path / "work")],
                       capture_output=True, text=True, timeout=600)
    assert r.returncode == 0, r.stdout[-2000:] + r.stderr[-3000:]
    lines = r.stdout.strip().splitlines()
    assert re.fullmatch(r"mission-scale: \d+ of \d+ targets met at \d+ images", lines[-1]), lines[-1]
    run = json.loads(results.read_text())["runs"]["500"]
    stages = run["stages"]
    assert set(stages) >= {"crawl (90 %)", "near-duplicates", "resume (+10 %)", "near-duplicates +10 %", "splits",
                           "export imagefolder", "export hf", "export webdataset", "export parquet", "report", "status"}
    assert 400 <= run["images"] <= 600 and stages["resume (+10 %)"]["images"] > 0
    assert stages["resume (+10 %)"]["first_new_download_s"] is not None
    # the near-duplicate pass finds the web's known copies and nothing else
    q = run["clusters"]
    assert q["true_pairs"] > 10 and q["recall"] >= 0.9 and q["precision"] >= 0.9, q
    assert stages["export parquet"]["rows_per_s"] > 0 and stages["export imagefolder"]["exported"] > 300
    assert (stages["export webdataset"]["gnu_tar_mb_per_s"] or 0) > 0, r.stderr[-2000:]
