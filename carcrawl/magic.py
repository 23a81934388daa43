"""Magic-number checks on the first bytes of a body: is it an image, and if not, what is it?

This runs on the first chunk of every download, so it is a handful of ``startswith`` calls and
no allocation. A body that is not an image is aborted at once (``not_image:<what>``) instead of
being downloaded in full, which is where the seed crawl lost hours (HTML served as ``.jpg``).
"""

from __future__ import annotations

#: bytes needed for a confident answer (ISO-BMFF brands sit at offset 8..12, RIFF/WEBP at 8..12)
SNIFF_BYTES = 32

_IMAGE_PREFIXES: tuple[tuple[bytes, str], ...] = (
    (b"\xff\xd8\xff", "jpeg"),
    (b"\x89PNG\r\n\x1a\n", "png"),
    (b"GIF87a", "gif"),
    (b"GIF89a", "gif"),
    (b"BM", "bmp"),
    (b"II*\x00", "tiff"),
    (b"MM\x00*", "tiff"),
    (b"\x00\x00\x01\x00", "ico"),
)

_HEIF_BRANDS = {
    b"avif": "avif", b"avis": "avif",
    b"heic": "heic", b"heix": "heic", b"hevc": "heic", b"hevx": "heic", b"heim": "heic", b"heis": "heic",
    b"mif1": "heic", b"msf1": "heic",
}

#: formats the pipeline stores; ``ico`` is recognised but not wanted
STORED_FORMATS = frozenset({"jpeg", "png", "gif", "webp", "bmp", "tiff", "avif", "heic"})


def sniff_image(head: bytes) -> str | None:
    """The image format of a body starting with ``head``, or ``None`` if it is not an image."""
    for prefix, fmt in _IMAGE_PREFIXES:
        if head.startswith(prefix):
            return fmt
    if head[:4] == b"RIFF" and head[8:12] == b"WEBP":
        return "webp"
    if head[4:8] == b"ftyp":
        return _HEIF_BRANDS.get(head[8:12])
    return None


def describe_non_image(head: bytes) -> str:
    """A short name for what a non-image body is, for the ``not_image:<what>`` reason."""
    if not head:
        return "empty"
    s = head.lstrip()[:64].lower()
    if s.startswith((b"<!doctype html", b"<html", b"<head", b"<body", b"<script", b"<meta", b"<!--", b"<div", b"<title")):
        return "html"
    if s.startswith(b"<?xml") or s.startswith(b"<svg"):
        return "svg" if b"<svg" in head.lower() else "xml"
    if s.startswith((b"{", b"[")):
        return "json"
    if head.startswith(b"%PDF"):
        return "pdf"
    if head.startswith((b"PK\x03\x04", b"\x1f\x8b", b"7z\xbc\xaf", b"Rar!")):
        return "archive"
    if head[4:8] == b"ftyp" or head.startswith(b"\x1aE\xdf\xa3"):
        return "video"
    if head.startswith(b"\x00\x00\x01\x00"):
        return "ico"
    try:
        head.decode("utf-8")
    except UnicodeDecodeError:
        return "binary"
    return "text"
