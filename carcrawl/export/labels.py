"""Label schemes, merge maps and safe folder names.

One crawl can be exported under several label schemes; the label of an image comes from the
query (or URL-list row) that found it. Class names are web- and user-supplied text, so every
folder name is made safe here: it can never climb out of the export folder, whatever the label.
"""

from __future__ import annotations

import csv
import hashlib
import json
import re
import unicodedata
from collections.abc import Mapping
from pathlib import Path

from carcrawl.errors import InputFileError

SCHEMES = ("make_model", "make_model_color", "body_type", "category")
MAX_NAME_BYTES = 120
_UNSAFE = re.compile(r"[^\w\-. +&(),']+", re.UNICODE)
_WINDOWS_RESERVED = {"con", "prn", "aux", "nul", *(f"com{i}" for i in range(10)), *(f"lpt{i}" for i in range(10))}


def label_parts(scheme: str, make: str, model: str, color: str, body_type: str, category: str) -> tuple[str, ...]:
    """The label parts for a scheme; an empty tuple when the image has no label under it."""
    parts: tuple[str, ...]
    if scheme == "make_model":
        parts = (make, model)
    elif scheme == "make_model_color":
        parts = (make, model, color)
    elif scheme == "body_type":
        parts = (body_type,)
    elif scheme == "category":
        parts = (category,)
    else:
        raise ValueError(scheme)
    return parts if all(p.strip() for p in parts) else ()


def label_name(parts: tuple[str, ...]) -> str:
    """``ford_mustang``, ``ford_mustang_red``, ``suv``: parts joined by ``_``."""
    return "_".join(" ".join(p.split()) for p in parts)


def safe_name(label: str) -> str:
    """A folder name for a label that is safe on every filesystem: no separators, no NUL, no
    ``..``, no leading dot, no reserved device names, at most ``MAX_NAME_BYTES`` bytes (long
    names keep a hash of the full label so they stay distinct)."""
    name = unicodedata.normalize("NFC", label.replace("\x00", ""))
    name = _UNSAFE.sub("_", name).strip(" ._")
    name = re.sub(r"_+", "_", name) or "_"
    if name.split(".")[0].lower() in _WINDOWS_RESERVED:
        name = f"_{name}"
    encoded = name.encode("utf-8")
    if len(encoded) > MAX_NAME_BYTES:
        digest = hashlib.sha256(label.encode("utf-8", "surrogatepass")).hexdigest()[:10]
        name = encoded[: MAX_NAME_BYTES - 11].decode("utf-8", "ignore").rstrip(" ._") + "~" + digest
    return name


def folder_names(labels: list[str]) -> dict[str, str]:
    """label -> folder name, distinct even when two labels sanitise (or case-fold) alike."""
    out: dict[str, str] = {}
    taken: set[str] = set()
    for label in sorted(labels):
        name = safe_name(label)
        if name.lower() in taken:
            name = f"{name[:MAX_NAME_BYTES - 11]}~{hashlib.sha256(label.encode('utf-8', 'surrogatepass')).hexdigest()[:10]}"
        taken.add(name.lower())
        out[label] = name
    return out


def inside(root: Path, *parts: str) -> Path:
    """``root / parts`` after checking the result stays inside root (belt and braces after safe_name)."""
    path = root.joinpath(*parts)
    resolved_root = root.resolve()
    if resolved_root not in path.resolve().parents and path.resolve() != resolved_root:
        raise ValueError(f"refusing to write outside {root}: {parts!r}")
    return path


def read_merge_map(path: Path) -> dict[str, str | None]:
    """Label merges from JSON (``{"old": "new", "drop me": null}``) or CSV (``from,to`` rows, a
    header optional; an empty ``to`` drops the class). Errors name the file and line or key."""
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as e:
        raise InputFileError(f"{path}: cannot read the merge map ({e})") from None
    out: dict[str, str | None] = {}
    if path.suffix.lower() == ".json" or text.lstrip().startswith("{"):
        try:
            data = json.loads(text)
        except json.JSONDecodeError as e:
            raise InputFileError(f"{path}: line {e.lineno}: not valid JSON ({e.msg})") from None
        if not isinstance(data, Mapping):
            raise InputFileError(f"{path}: expected a JSON object mapping old label -> new label (or null)")
        for k, v in data.items():
            if v is not None and not isinstance(v, str):
                raise InputFileError(f"{path}: key {k!r}: the new label must be a string or null, got {v!r}")
            out[str(k)] = v.strip() or None if isinstance(v, str) else None
        return out
    for lineno, row in enumerate(csv.reader(text.splitlines()), start=1):
        if not row or all(not c.strip() for c in row) or row[0].lstrip().startswith("#"):
            continue
        if lineno == 1 and [c.strip().lower() for c in row[:2]] in (["from", "to"], ["old", "new"]):
            continue
        if len(row) > 2:
            raise InputFileError(f"{path}: line {lineno}: expected two columns from,to, got {len(row)}")
        old = row[0].strip()
        new = row[1].strip() if len(row) > 1 else ""
        if not old:
            raise InputFileError(f"{path}: line {lineno}: the 'from' label is empty")
        out[old] = new or None
    return out


def apply_merge(label: str, merge: Mapping[str, str | None]) -> str | None:
    """Follow a merge map (chains ``a -> b -> c`` too, cycles stop); ``None`` = dropped."""
    seen = {label}
    current: str | None = label
    while current is not None and current in merge:
        current = merge[current]
        if current in seen:
            break
        if current is not None:
            seen.add(current)
    return current


def bodytype_vectors(hits: list[tuple[str, str, str, str, int]]) -> dict[tuple[str, str], dict[str, float]]:
    """(make, model) -> {body type: share}: per source, the hit counts of ``<make> <model> <body
    type>`` normalised to sum 1, then averaged over the sources that found anything."""
    per: dict[tuple[str, str, str], dict[str, int]] = {}
    for make, model, bt, source, n in hits:
        per.setdefault((make, model, source), {})[bt] = max(0, int(n or 0))
    acc: dict[tuple[str, str], dict[str, float]] = {}
    count: dict[tuple[str, str], int] = {}
    for (make, model, _source), counts in per.items():
        total = sum(counts.values())
        if total <= 0:
            continue
        vec = acc.setdefault((make, model), {})
        for bt, n in counts.items():
            vec[bt] = vec.get(bt, 0.0) + n / total
        count[(make, model)] = count.get((make, model), 0) + 1
    return {
        key: {bt: round(v / count[key], 6) for bt, v in sorted(vec.items())} for key, vec in acc.items()
    }
