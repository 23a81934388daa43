"""``carcrawl classify PATH... --out FILE.jsonl`` as a user runs it (the console entry point)."""

from __future__ import annotations

import json
import shutil
import subprocess
from pathlib import Path

from helpers import carcrawl_cmd, write_config
from test_classify import OTHERS, VEHICLES


def test_classify_a_folder_writes_one_line_per_file(tmp_path: Path, shared: Path) -> None:
    folder = tmp_path / "photos"
    (folder / "sub").mkdir(parents=True)
    shutil.copy(shared / "images" / "vehicle" / VEHICLES[0], folder / "car.png")
    shutil.copy(shared / "images" / "other" / OTHERS[0], folder / "sub" / "dog.jpg")
    jpeg = (shared / "images" / "vehicle" / VEHICLES[1]).read_bytes()
    (folder / "broken.jpg").write_bytes(jpeg[: len(jpeg) // 3])
    (folder / "notes.txt").write_text("not an image\n")
    single = tmp_path / "single.jpg"
    shutil.copy(shared / "images" / "vehicle" / VEHICLES[1], single)
    config = write_config(tmp_path / "config.toml", '[classify]\nmodel = "efficientnet_lite0"\ndecoder = "pillow"\n')
    out = tmp_path / "verdicts.jsonl"

    proc = subprocess.run(
        [*carcrawl_cmd(), "classify", str(folder), str(single), str(tmp_path / "missing.jpg"),
         "--out", str(out), "--config", str(config), "--device", "cpu", "--batch-size", "2"],
        capture_output=True, text=True, timeout=240,
    )
    assert proc.returncode == 0, proc.stderr
    assert "efficientnet_lite0 (offline weights) on cpu, decoder pillow" in proc.stderr
    lines = [json.loads(line) for line in out.read_text().splitlines()]
    by_path = {rec["path"]: rec for rec in lines}
    assert [rec["path"] for rec in lines] == [
        str(folder / "broken.jpg"), str(folder / "car.png"), str(folder / "notes.txt"),
        str(folder / "sub" / "dog.jpg"), str(single), str(tmp_path / "missing.jpg"),
    ]
    assert "6 files" in proc.stdout
    car = by_path[str(folder / "car.png")]
    assert car["keep"] is True and car["reason"].startswith("vehicle:") and len(car["top5"]) == 5
    assert set(car["top5"][0]) == {"label", "score"}
    assert by_path[str(single)]["keep"] is True
    assert by_path[str(folder / "sub" / "dog.jpg")]["keep"] is False
    assert by_path[str(folder / "broken.jpg")]["reason"] == "decode_error"
    assert by_path[str(folder / "notes.txt")]["reason"] == "not_image:text"
    assert by_path[str(tmp_path / "missing.jpg")]["reason"] == "unreadable:not_found"
