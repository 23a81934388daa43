"""Reviewer marks on a real checkpoint: they win over the model in later exports; bad files are
clear errors naming the file and the key."""

from __future__ import annotations

import hashlib
import json
import subprocess
from pathlib import Path

import pytest
from helpers import carcrawl_cmd
from test_export_helpers import Shot, build_crawl, other_photos, vehicle_photos

from carcrawl.errors import InputFileError
from carcrawl.export import export
from carcrawl.models import Labels
from carcrawl.review import import_marks

pytestmark = pytest.mark.usefixtures("shared")


def sha(body: bytes) -> str:
    return hashlib.sha256(body).hexdigest()


@pytest.fixture()
def crawl(tmp_path: Path) -> tuple[Path, list[bytes], list[bytes]]:
    kept = [p.read_bytes() for p in vehicle_photos(6)]
    rejected = [p.read_bytes() for p in other_photos(3)]
    shots = [Shot(f"http://v.example/{i}.jpg", Labels("ford", "mustang"), b) for i, b in enumerate(kept)]
    shots += [Shot(f"http://o.example/{i}.jpg", Labels("ford", "mustang"), b, keep=False, reason="not_vehicle:dog")
              for i, b in enumerate(rejected)]
    build_crawl(tmp_path / "out", shots)
    return tmp_path / "out", kept, rejected


def exported(out: Path, dest: Path) -> set[str]:
    export(out, "imagefolder", dest)
    return {p.stem for p in dest.rglob("*.*") if p.parent.parent.name in ("train", "val", "test")}


def marks_file(path: Path, marks: dict[str, str]) -> Path:
    path.write_text(json.dumps({"format": "carcrawl-marks", "version": 1, "marks": marks}))
    return path


def test_marks_win_over_the_model_in_later_exports(crawl: tuple, tmp_path: Path) -> None:
    out, kept, rejected = crawl
    assert exported(out, tmp_path / "e0") == {sha(b) for b in kept}
    marks = {sha(kept[0]): "wrong", sha(rejected[0]): "right"}
    assert import_marks(out, marks_file(tmp_path / "m.json", marks)) == 2
    after = exported(out, tmp_path / "e1")
    assert sha(kept[0]) not in after and sha(rejected[0]) in after
    # a later import wins, and "none" clears a mark
    assert import_marks(out, marks_file(tmp_path / "m2.json", {sha(kept[0]): "none", sha(rejected[0]): "wrong"})) == 2
    again = exported(out, tmp_path / "e2")
    assert sha(kept[0]) in again and sha(rejected[0]) not in again


def test_bad_marks_files_are_clear_errors(crawl: tuple, tmp_path: Path) -> None:
    out, kept, _ = crawl
    cases = {
        "broken.json": ('{"marks": {', r"broken.json: line 1: not valid JSON"),
        "badsha.json": ('{"marks": {"../../etc": "right"}}', r"badsha.json: key '../../etc': not a sha256"),
        "badmark.json": (json.dumps({"marks": {sha(kept[0]): "maybe"}}), rf"badmark.json: key '{sha(kept[0])}': mark must be"),
        "list.json": (json.dumps([{"sha256": sha(kept[0])}]), r"list.json: item 0: expected an object"),
        "other.json": (json.dumps({"marks": {"ab" * 32: "right"}}), r"other.json: none of its 1 marks"),
    }
    for name, (text, message) in cases.items():
        (tmp_path / name).write_text(text)
        with pytest.raises(InputFileError, match=message):
            import_marks(out, tmp_path / name)
    # a list of objects (marks from another tool) is accepted
    (tmp_path / "ok.json").write_text(json.dumps([{"sha256": sha(kept[1]), "mark": "wrong"}]))
    assert import_marks(out, tmp_path / "ok.json") == 1


def test_cli_review_import(crawl: tuple, tmp_path: Path) -> None:
    out, kept, _ = crawl
    m = marks_file(tmp_path / "marks.json", {sha(kept[2]): "wrong", "cd" * 32: "right"})
    r = subprocess.run([*carcrawl_cmd(), "review", "import", str(m), "--out", str(out)], capture_output=True, text=True)
    assert r.returncode == 0, r.stderr
    assert "applied 1 marks" in r.stdout
    (tmp_path / "bad.json").write_text("{")
    r = subprocess.run([*carcrawl_cmd(), "review", "import", str(tmp_path / "bad.json"), "--out", str(out)],
                       capture_output=True, text=True)
    assert r.returncode == 2 and "bad.json: line 1" in r.stderr and "Traceback" not in r.stderr
