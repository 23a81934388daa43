"""The photos the sandbox serves, held in memory.

Every byte the image hosts send comes from here, read from disk once at start-up, so a request
costs no disk read and no Pillow work. Derived variants (a near-duplicate re-encode, a thumbnail,
a JPEG copy of a PNG, the realistic size mix for benchmarks) are made once, on first use or on
:meth:`PhotoSet.prepare`, and cached.
"""

from __future__ import annotations

import csv
import io
import threading
from dataclasses import dataclass
from pathlib import Path

#: the photo set shipped with the project (a few MB, licences in CREDITS.md)
DEFAULT_PHOTO_DIR = Path(__file__).resolve().parents[1] / "data" / "sandbox_photos"

#: ground-truth labels the sandbox understands (a folder name or a ``label__`` file-name prefix)
LABELS = ("vehicle", "other", "interior")

_MAGIC: tuple[tuple[bytes, str], ...] = (
    (b"\xff\xd8\xff", "jpeg"),
    (b"\x89PNG\r\n\x1a\n", "png"),
    (b"GIF87a", "gif"),
    (b"GIF89a", "gif"),
    (b"BM", "bmp"),
)
_EXT = {"jpeg": "jpg", "png": "png", "gif": "gif", "webp": "webp", "bmp": "bmp"}
_MIME = {"jpeg": "image/jpeg", "png": "image/png", "gif": "image/gif", "webp": "image/webp", "bmp": "image/bmp"}
_SUFFIXES = {".jpg", ".jpeg", ".png", ".gif", ".webp", ".bmp"}

#: variants: ``o`` the file as stored, ``n`` a near-duplicate (resized to 85 %, re-encoded at q70),
#: ``t`` a thumbnail, ``j`` a plain JPEG copy, ``s0``..``s4`` the size mix (long side, quality):
#: roughly 20 KB .. 2 MB per file, like what a crawl really downloads.
SIZE_CLASSES: tuple[tuple[int, int], ...] = ((400, 82), (800, 88), (1400, 90), (2200, 94), (3200, 97))
VARIANTS = ("o", "n", "t", "j") + tuple(f"s{i}" for i in range(len(SIZE_CLASSES)))

#: how many photos the size mix uses (bounds the memory the cached variants take: ~40 MB)
SIZE_MIX_PHOTOS = 16


def sniff(data: bytes) -> str | None:
    """The image format from the magic number, or None."""
    for magic, fmt in _MAGIC:
        if data.startswith(magic):
            return fmt
    if data[:4] == b"RIFF" and data[8:12] == b"WEBP":
        return "webp"
    return None


def ext_of(fmt: str) -> str:
    return _EXT.get(fmt, "bin")


def mime_of(fmt: str) -> str:
    return _MIME.get(fmt, "application/octet-stream")


#: what is known of a photo beyond vehicle/other: ``TAGS.csv`` in the photo folder, columns
#: file,make,model,color,body_type ("" where unknown); the sandbox's engines answer a query with
#: the photos whose tags match it best
TAGS_FILE = "TAGS.csv"


@dataclass(frozen=True, slots=True)
class Tags:
    make: str = ""
    model: str = ""
    color: str = ""
    body_type: str = ""


def load_tags(folder: Path) -> dict[str, Tags]:
    """File name -> :class:`Tags` from the folder's ``TAGS.csv`` (empty when there is none)."""
    path = Path(folder) / TAGS_FILE
    if not path.is_file():
        return {}
    with path.open(newline="", encoding="utf-8") as f:
        return {
            row["file"]: Tags(*(" ".join((row.get(k) or "").split()).lower() for k in ("make", "model", "color", "body_type")))
            for row in csv.DictReader(f)
            if row.get("file")
        }


@dataclass(frozen=True, slots=True)
class Photo:
    """One photo of the set: its ground-truth label comes from the folder or the file name, its
    make/model/colour/body type (where known) from ``TAGS.csv``."""

    name: str  # file name as found
    label: str  # vehicle / other / interior / "" (unknown)
    data: bytes
    fmt: str  # jpeg, png, webp, ...
    width: int
    height: int
    tags: Tags = Tags()

    @property
    def ext(self) -> str:
        return ext_of(self.fmt)

    @property
    def mime(self) -> str:
        return mime_of(self.fmt)


def _label_for(path: Path, root: Path) -> str:
    if path.parent != root and path.parent.name in LABELS:
        return path.parent.name
    prefix = path.name.split("__", 1)[0]
    return prefix if prefix in LABELS and "__" in path.name else ""


def load_photos(folder: Path) -> list[Photo]:
    """Every decodable image in ``folder`` and its direct sub-folders, sorted by path.

    Files that are not images (CREDITS.md, SOURCES.csv) are skipped; a folder without any image is
    a clear error, not an empty sandbox."""
    from PIL import Image

    folder = Path(folder)
    if not folder.is_dir():
        raise FileNotFoundError(f"sandbox photo folder not found: {folder}")
    paths = sorted(p for p in [*folder.glob("*"), *folder.glob("*/*")] if p.suffix.lower() in _SUFFIXES)
    photos: list[Photo] = []
    tags = load_tags(folder)
    for p in paths:
        data = p.read_bytes()
        fmt = sniff(data)
        if fmt is None:
            continue
        try:
            with Image.open(io.BytesIO(data)) as im:
                width, height = im.size
        except Exception:  # noqa: BLE001 - a broken file is skipped, the rest still serve
            continue
        photos.append(Photo(p.name, _label_for(p, folder), data, fmt, width, height, tags.get(p.name, Tags())))
    if not photos:
        raise ValueError(f"no images found in sandbox photo folder {folder}")
    return photos


def _encode(data: bytes, long_side: int | None, quality: int, scale: float | None = None) -> bytes:
    from PIL import Image

    with Image.open(io.BytesIO(data)) as src:
        im = src.convert("RGB")
    if scale is not None:
        im = im.resize((max(16, round(im.width * scale)), max(16, round(im.height * scale))), Image.BILINEAR)
    elif long_side is not None:
        f = long_side / max(im.size)
        im = im.resize((max(16, round(im.width * f)), max(16, round(im.height * f))), Image.BICUBIC)
    buf = io.BytesIO()
    im.save(buf, "JPEG", quality=quality)
    return buf.getvalue()


class PhotoSet:
    """The loaded photos plus a thread-safe cache of their derived variants."""

    def __init__(self, folder: Path | None = None) -> None:
        self.folder = Path(folder) if folder is not None else DEFAULT_PHOTO_DIR
        self.photos = load_photos(self.folder)
        self._cache: dict[tuple[int, str], bytes] = {}
        self._lock = threading.Lock()

    def __len__(self) -> int:
        return len(self.photos)

    def cached(self, idx: int, variant: str) -> bytes | None:
        """The bytes if no Pillow work is needed (the hot path), else None."""
        if variant == "o":
            return self.photos[idx].data
        if variant == "j" and self.photos[idx].fmt == "jpeg":
            return self.photos[idx].data
        return self._cache.get((idx, variant))

    def variant(self, idx: int, variant: str) -> bytes:
        """The bytes of a variant, made (once) if needed. Blocking: call it from a thread."""
        got = self.cached(idx, variant)
        if got is not None:
            return got
        if variant not in VARIANTS:
            raise KeyError(variant)
        src = self.photos[idx].data
        if variant == "n":
            out = _encode(src, None, 70, scale=0.85)
        elif variant == "t":
            out = _encode(src, 240, 70)
        elif variant == "j":
            out = _encode(src, None, 90, scale=1.0)
        else:
            long_side, quality = SIZE_CLASSES[int(variant[1:])]
            out = _encode(src, long_side, quality)
        with self._lock:
            return self._cache.setdefault((idx, variant), out)

    def prepare(self, variants: tuple[str, ...] = ("n", "t", "j"), size_mix: bool = False) -> None:
        """Make variants ahead of time (blocking), so a benchmark measures no Pillow work."""
        for idx in range(len(self.photos)):
            for v in variants:
                self.variant(idx, v)
        if size_mix:
            for idx in self.size_mix_photos():
                for i in range(len(SIZE_CLASSES)):
                    self.variant(idx, f"s{i}")

    def size_mix_photos(self) -> list[int]:
        """Up to :data:`SIZE_MIX_PHOTOS` photos spread evenly over the set (so both labels appear)."""
        n = len(self.photos)
        k = min(SIZE_MIX_PHOTOS, n)
        return sorted({i * n // k for i in range(k)})

    def dims(self, idx: int, variant: str) -> tuple[int, int]:
        """Width and height a variant will have (computed, not decoded)."""
        p = self.photos[idx]
        if variant == "n":
            return max(16, round(p.width * 0.85)), max(16, round(p.height * 0.85))
        if variant == "t" or variant.startswith("s"):
            side = 240 if variant == "t" else SIZE_CLASSES[int(variant[1:])][0]
            f = side / max(p.width, p.height)
            return max(16, round(p.width * f)), max(16, round(p.height * f))
        return p.width, p.height
