"""Perceptual hashes: twelve 64-bit hashes per picture, the input of near-duplicate detection.

A dHash and a DCT pHash of the whole picture and of five 90 % crops (centre and four corners), so
a 10 % crop of a photo still matches its original (see ``export/dedup.py`` for the distance).

They are computed from the picture a decoder already has: the classifier's decoders (Pillow and
DALI, ``classify/``) hash the full picture they decoded, before cropping it for the network, and
the verdict carries the hashes into the checkpoint; ``image_hashes`` decodes a file only for
images that were never classified. Only numpy and Pillow are imported here.
"""

from __future__ import annotations

import io
import math
from pathlib import Path

import numpy as np
from PIL import Image, ImageOps

N_VARIANTS = 6  # whole picture + centre crop + four corner crops
N_HASHES = 2 * N_VARIANTS  # dHash x 6 variants, then pHash x 6
CROP = 0.9
#: side of the grey square the DALI pipeline hands over for hashing (aspect is irrelevant: every
#: view is resized to 9x8 and 32x32 anyway)
HASH_SIDE = 128
#: JPEG decode-time downscale stops at this shorter side: the classifier's resize (256 for the
#: 224-pixel models), so a re-decode for export gives the very pixels the classifier hashed
DRAFT_SIDE = 256


def _dct_matrix(n: int) -> np.ndarray:
    k = np.arange(n)[:, None]
    x = np.arange(n)[None, :]
    m = np.cos(np.pi * (2 * x + 1) * k / (2 * n))
    m[0] *= 1 / np.sqrt(2)
    return (m * np.sqrt(2 / n)).astype(np.float32)


_DCT32 = _dct_matrix(32)
_BITS = (1 << np.arange(63, -1, -1, dtype=np.uint64)).astype(np.uint64)


def _pack(bits: np.ndarray) -> int:
    return int((bits.astype(np.uint64) * _BITS).sum(dtype=np.uint64))


def _dhash(gray: Image.Image) -> int:
    a = np.asarray(gray.resize((9, 8), Image.Resampling.BOX), dtype=np.int16)
    return _pack((a[:, 1:] > a[:, :-1]).ravel())


def _phash(gray: Image.Image) -> int:
    a = np.asarray(gray.resize((32, 32), Image.Resampling.BOX), dtype=np.float32)
    low = (_DCT32 @ a @ _DCT32.T)[:8, :8].ravel()
    return _pack(low > np.median(low[1:]))


def picture_hashes(gray: Image.Image) -> np.ndarray:
    """The 12 uint64 hashes (dHash x 6 views, then pHash x 6) of an upright grey ("L") picture."""
    w, h = gray.size
    cw, ch = max(1, int(w * CROP)), max(1, int(h * CROP))
    boxes = [((w - cw) // 2, (h - ch) // 2), (0, 0), (w - cw, 0), (0, h - ch), (w - cw, h - ch)]
    views = [gray] + [gray.crop((x, y, x + cw, y + ch)) for x, y in boxes]
    return np.array([_dhash(v) for v in views] + [_phash(v) for v in views], dtype=np.uint64)


def to_blob(hashes: np.ndarray) -> bytes:
    """How the checkpoint stores them: 12 little-endian uint64 (96 bytes)."""
    return hashes.astype("<u8").tobytes()


def _upright_grey(im: Image.Image) -> Image.Image:
    """The picture as the classifier's Pillow decoder sees it (upright, transparency on white),
    in grey."""
    im = ImageOps.exif_transpose(im) or im
    if im.mode in ("RGBA", "LA", "PA", "RGBa", "La") or (im.mode == "P" and "transparency" in im.info):
        rgba = im.convert("RGBA")
        im = Image.alpha_composite(Image.new("RGBA", rgba.size, (255, 255, 255, 255)), rgba)
    return im.convert("RGB").convert("L") if im.mode != "L" else im


def image_hashes(data_or_path: bytes | str | Path) -> tuple[np.ndarray, int, int]:
    """(12 uint64 hashes, width, height) of one encoded image, for images the classifier never
    saw. Decoded the way the classifier's Pillow decoder does (JPEG at the reduced scale that
    keeps the shorter side >= ``DRAFT_SIDE``, upright, RGB), so both give the same hashes for
    the same file. Raises ``OSError``/``ValueError`` (from Pillow) when it cannot be decoded."""
    src = io.BytesIO(data_or_path) if isinstance(data_or_path, bytes) else data_or_path
    with Image.open(src) as im:
        width, height = im.size
        if im.format == "JPEG":
            scale = DRAFT_SIDE / min(im.size)
            im.draft("RGB", (math.ceil(width * scale), math.ceil(height * scale)))
        im.load()
        gray = _upright_grey(im)
        if im.getexif().get(0x0112, 1) in (5, 6, 7, 8):
            width, height = height, width
    return picture_hashes(gray), width, height
