"""``carcrawl classify PATH... --out FILE.jsonl``: classify local files with the crawl's code path.

Folders are walked recursively (sorted, so the output order is stable); every regular file gets
exactly one JSON line, in input order: ``path`` (as given, or the given folder joined with the
file's relative path), ``keep``, ``reason``, ``top5`` (label, score), ``width``, ``height``.
Files that cannot be read get ``unreadable:<why>``, files that are not images
``not_image:<what>`` (html, pdf, text, ...), broken images ``decode_error``.
"""

from __future__ import annotations

import json
import os
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from carcrawl.classify.classifier import Classifier, load_classifier
from carcrawl.classify.decode import DECODE_ERROR
from carcrawl.classify.settings import ClassifySettings
from carcrawl.magic import SNIFF_BYTES, describe_non_image, sniff_image
from carcrawl.models import Verdict

MAX_FILE_BYTES = 256 * 1024 * 1024  # larger files are not read (no 50 MP image is this big)


@dataclass(slots=True)
class _File:
    path: str  # as reported
    data: bytes | None = None
    reason: str | None = None  # set when the file cannot be classified at all


def _expand(paths: list[str]) -> Iterator[str]:
    for given in paths:
        if os.path.isdir(given):
            for root, dirs, files in os.walk(given):
                dirs.sort()
                for name in sorted(files):
                    yield os.path.join(root, name)
        else:
            yield given


def _read(path: str) -> _File:
    try:
        size = os.path.getsize(path)
        if size > MAX_FILE_BYTES:
            return _File(path, reason=f"too_large:{size}")
        with open(path, "rb") as f:
            return _File(path, data=f.read())
    except FileNotFoundError:
        return _File(path, reason="unreadable:not_found")
    except IsADirectoryError:
        return _File(path, reason="unreadable:directory")
    except OSError as e:
        return _File(path, reason=f"unreadable:{(e.strerror or type(e).__name__).lower().replace(' ', '_')}")


def _batches(paths: list[str], size: int) -> Iterator[list[_File]]:
    batch: list[_File] = []
    for path in _expand(paths):
        batch.append(_read(path))
        if len(batch) >= size:
            yield batch
            batch = []
    if batch:
        yield batch


def _line(f: _File, v: Verdict | None) -> str:
    if v is None:
        record: dict[str, object] = {"path": f.path, "keep": False, "reason": f.reason, "top5": []}
    else:
        reason = v.reason
        if reason == DECODE_ERROR and f.data is not None and sniff_image(f.data[:SNIFF_BYTES]) is None:
            reason = f"not_image:{describe_non_image(f.data[:SNIFF_BYTES])}"
        record = {
            "path": f.path,
            "keep": v.keep,
            "reason": reason,
            "top5": [{"label": p.label, "score": p.score} for p in v.top5],
            "width": v.width,
            "height": v.height,
        }
    return json.dumps(record, ensure_ascii=False)


def classify_paths(paths: list[str], settings: ClassifySettings, out_jsonl: Path) -> int:
    """Classify files and folders into ``out_jsonl``; returns the number of lines written."""
    clf: Classifier = load_classifier(settings)
    print(f"carcrawl: classifier: {clf.describe()}", file=sys.stderr)
    pending: list[list[_File]] = []  # batches handed to the classifier, awaiting their verdicts

    def items() -> Iterator[list[tuple[str, bytes]]]:
        for batch in _batches(paths, max(1, settings.batch_size)):
            pending.append(batch)
            yield [(f.path, f.data) for f in batch if f.data is not None]

    written = 0
    out_jsonl.parent.mkdir(parents=True, exist_ok=True)
    try:
        with open(out_jsonl, "w", encoding="utf-8") as out:
            for verdicts in clf.classify_batches(items()):
                batch = pending.pop(0)
                found = iter(verdicts)
                for f in batch:
                    out.write(_line(f, next(found) if f.data is not None else None) + "\n")
                    written += 1
                out.flush()
    finally:
        clf.close()
    return written
