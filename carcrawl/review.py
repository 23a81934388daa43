"""``carcrawl review import marks.json``: the reviewer's spot-check marks from the report page,
applied to the checkpoint. A mark wins over the model in every later export: ``wrong`` keeps an
image out whatever the classifier said, ``right`` puts it in (a near-duplicate stays out).

The file the report page saves::

    {"format": "carcrawl-marks", "version": 1, "report": "<checkpoint id>",
     "marks": {"<sha256>": "right" | "wrong" | "none", ...}}

(``none`` clears an earlier mark). A plain ``{"<sha256>": "right", ...}`` object and a list of
``{"sha256": ..., "mark": ...}`` objects are accepted too, for marks made by other tools.
"""

from __future__ import annotations

import json
import logging
import re
from pathlib import Path
from typing import Any

from carcrawl.errors import InputFileError
from carcrawl.store.dataset import DatasetDB

log = logging.getLogger(__name__)

MARKS = ("right", "wrong", "none")
_SHA = re.compile(r"^[0-9a-f]{64}$")


def read_marks(path: Path) -> dict[str, str]:
    """sha256 -> mark, validated. Errors name the file and the offending key or item."""
    try:
        data: Any = json.loads(Path(path).read_text(encoding="utf-8"))
    except OSError as e:
        raise InputFileError(f"{path}: cannot read ({e.strerror})") from None
    except UnicodeDecodeError:
        raise InputFileError(f"{path}: not UTF-8 text") from None
    except json.JSONDecodeError as e:
        raise InputFileError(f"{path}: line {e.lineno}: not valid JSON ({e.msg})") from None
    if isinstance(data, dict) and "marks" in data:
        if data.get("format", "carcrawl-marks") != "carcrawl-marks":
            raise InputFileError(f"{path}: key 'format': expected 'carcrawl-marks', got {data.get('format')!r}")
        data = data["marks"]
    items: list[tuple[str, Any, str]] = []
    if isinstance(data, dict):
        items = [(str(k), v, f"key {k!r}") for k, v in data.items()]
    elif isinstance(data, list):
        for i, item in enumerate(data):
            if not isinstance(item, dict) or "sha256" not in item or "mark" not in item:
                raise InputFileError(f"{path}: item {i}: expected an object with 'sha256' and 'mark'")
            items.append((str(item["sha256"]), item["mark"], f"item {i}"))
    else:
        raise InputFileError(f"{path}: expected an object of sha256 -> mark (as saved by the report page)")
    out: dict[str, str] = {}
    for sha, mark, where in items:
        sha = sha.strip().lower()
        if not _SHA.match(sha):
            raise InputFileError(f"{path}: {where}: not a sha256 hex digest: {sha[:80]!r}")
        if mark not in MARKS:
            raise InputFileError(f"{path}: {where}: mark must be one of {', '.join(MARKS)}, got {mark!r}")
        out[sha] = mark
    return out


def import_marks(target: str | Path, marks_path: str | Path) -> int:
    """Apply the marks in ``marks_path`` to the crawl in ``target``. Returns how many were applied.
    Marks for images this checkpoint does not have are skipped (logged); if none match, that is an
    error (probably the marks of another crawl)."""
    marks = read_marks(Path(marks_path))
    if not marks:
        return 0
    with DatasetDB.open(target) as db:
        known = db.known_shas(marks)
        unknown = len(marks) - len(known)
        if not known:
            raise InputFileError(f"{marks_path}: none of its {len(marks)} marks is for an image in {db.path}; "
                                 "were they saved from another crawl's report?")
        if unknown:
            log.warning("%s: %d marks are for images not in %s; skipped", marks_path, unknown, db.path)
        db.save_reviews({s: m for s, m in marks.items() if s in known}, source=str(Path(marks_path).name))
    return len(known)
