"""Decoders: encoded bytes -> fixed-size RGB crops, one bad image never spoiling its batch.

Every decoder returns a :class:`DecodedBatch`: the pixels of the images that decoded, as one
uint8 NHWC tensor (N x size x size x 3, on the CPU or the GPU), which rows they were, and for
every input either its width/height or the reason it failed (``decode_error``,
``too_many_pixels``), and the perceptual hashes of every decoded input's full picture (``phash``;
taken before the crop, so export never decodes a classified image again). The geometry matches torchvision's eval transform (resize the shorter side to
``resize``, centre-crop ``size``), done in one resampling step.

Only Pillow and numpy are imported here; the DALI decoders live in ``dali.py``. torch is imported
lazily (inside functions) so that importing this module stays cheap.
"""

from __future__ import annotations

import io
import math
import warnings
from collections.abc import Sequence
from concurrent.futures import Executor
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import numpy as np
from PIL import Image, ImageOps

from carcrawl.phash import picture_hashes, to_blob

if TYPE_CHECKING:
    import torch

DECODE_ERROR = "decode_error"
TOO_MANY_PIXELS = "too_many_pixels"

# Our own ``max_pixels`` cap is applied to every header before decoding; Pillow's warning for
# images between its limit and twice it would only add noise to the crawl's log.
warnings.filterwarnings("ignore", category=Image.DecompressionBombWarning)

# EXIF orientations that swap width and height (rotations by 90/270, transverse, transpose).
_SWAPPING_ORIENTATIONS = frozenset({5, 6, 7, 8})


@dataclass(frozen=True, slots=True)
class Geometry:
    """Input geometry of a model: shorter side resized to ``resize``, centre crop ``size``."""

    size: int = 224
    resize: int = 256


@dataclass(frozen=True, slots=True)
class Decoded:
    """One image out of the Pillow decoder: pixels (size x size x 3 uint8) or an error reason."""

    pixels: np.ndarray | None
    width: int | None = None
    height: int | None = None
    error: str | None = None
    hashes: bytes | None = None  # perceptual hashes of the full picture (phash.to_blob)


@dataclass(frozen=True, slots=True)
class Header:
    """What a lazy ``Image.open`` tells without decoding: format, mode, oriented size, or an error."""

    format: str | None
    mode: str | None
    width: int | None
    height: int | None
    has_alpha: bool = False
    error: str | None = None


@dataclass(slots=True)
class DecodedBatch:
    """The decoded images of one batch.

    ``pixels[j]`` belongs to input ``rows[j]``; ``sizes[i]`` is input i's (width, height) or
    None; ``errors[i]`` is None or input i's reason; ``hashes[i]`` input i's perceptual hashes
    or None. ``pixels`` is None when nothing decoded."""

    pixels: torch.Tensor | None
    rows: list[int]
    sizes: list[tuple[int, int] | None]
    errors: list[str | None]
    hashes: list[bytes | None] = field(default_factory=list)


def _orientation(img: Image.Image) -> int:
    try:
        return int(img.getexif().get(0x0112, 1) or 1)
    except Exception:  # a broken EXIF block must not cost us the image
        return 1


def _has_alpha(img: Image.Image) -> bool:
    return img.mode in ("RGBA", "LA", "PA", "RGBa", "La") or (
        img.mode == "P" and "transparency" in img.info
    )


def peek(data: bytes, max_pixels: int) -> tuple[Image.Image | None, Header]:
    """Open lazily (header only) and apply the pixel cap before any pixel is decoded.

    Pillow itself refuses images over ``2 * Image.MAX_IMAGE_PIXELS`` at open; that is reported as
    ``too_many_pixels`` too, so the effective cap is ``min(max_pixels, 2 * MAX_IMAGE_PIXELS)``."""
    try:
        img = Image.open(io.BytesIO(data))
        width, height = img.size
    except Image.DecompressionBombError:
        return None, Header(None, None, None, None, error=TOO_MANY_PIXELS)
    except Exception:
        return None, Header(None, None, None, None, error=DECODE_ERROR)
    if width < 1 or height < 1:
        return None, Header(img.format, img.mode, None, None, error=DECODE_ERROR)
    if width * height > max_pixels:
        return None, Header(img.format, img.mode, width, height, error=TOO_MANY_PIXELS)
    if _orientation(img) in _SWAPPING_ORIENTATIONS:
        width, height = height, width
    return img, Header(img.format, img.mode, width, height, has_alpha=_has_alpha(img))


def _to_rgb(img: Image.Image) -> Image.Image:
    """RGB for the network; transparent areas become white (product shots on transparent PNGs)."""
    if img.mode == "RGB":
        return img
    if _has_alpha(img):
        rgba = img.convert("RGBA")
        background = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        return Image.alpha_composite(background, rgba).convert("RGB")
    if img.mode in ("I;16", "I;16B", "I;16L", "I;16N", "I"):
        # 16/32-bit greyscale: scale to 8 bits instead of letting convert() clip at 255.
        arr = np.asarray(img, dtype=np.float64)
        top = float(arr.max()) or 1.0
        return Image.fromarray((arr * (255.0 / top)).astype(np.uint8), "L").convert("RGB")
    if img.mode == "F":
        arr = np.nan_to_num(np.asarray(img, dtype=np.float64))
        lo, hi = float(arr.min()), float(arr.max())
        scaled = (arr - lo) * (255.0 / (hi - lo or 1.0))
        return Image.fromarray(scaled.astype(np.uint8), "L").convert("RGB")
    return img.convert("RGB")


def center_crop_box(width: int, height: int, geometry: Geometry) -> tuple[float, float, float, float]:
    """The source box that "resize shorter side to ``resize``, centre-crop ``size``" samples from."""
    side = min(width, height) * geometry.size / geometry.resize
    left = (width - side) / 2
    top = (height - side) / 2
    return (left, top, left + side, top + side)


def decode_pillow(data: bytes, geometry: Geometry, max_pixels: int) -> Decoded:
    """Decode one image with Pillow: header peek and pixel cap first, JPEG DCT downscale on decode
    (``draft``), EXIF orientation, first frame of animations, alpha on white, then one fused
    crop+resize. Never raises."""
    img, header = peek(data, max_pixels)
    if img is None:
        return Decoded(None, header.width, header.height, header.error)
    try:
        if img.format == "JPEG":
            # Ask libjpeg for the smallest 1/2, 1/4, 1/8 scale that keeps the shorter side >= resize.
            scale = geometry.resize / min(img.size)
            img.draft("RGB", (math.ceil(img.size[0] * scale), math.ceil(img.size[1] * scale)))
        img.load()
        img = ImageOps.exif_transpose(img) or img
        img = _to_rgb(img)
        hashes = to_blob(picture_hashes(img.convert("L")))  # the full picture, before the crop
        box = center_crop_box(img.size[0], img.size[1], geometry)
        img = img.resize(
            (geometry.size, geometry.size), Image.Resampling.BILINEAR, box=box, reducing_gap=3.0
        )
        pixels = np.asarray(img, dtype=np.uint8)
        if pixels.shape != (geometry.size, geometry.size, 3):
            return Decoded(None, header.width, header.height, DECODE_ERROR)
    except Exception:  # truncated, corrupt, unsupported sub-format, ...: this image only
        return Decoded(None, header.width, header.height, DECODE_ERROR)
    return Decoded(pixels, header.width, header.height, hashes=hashes)


def assemble(results: Sequence[Decoded], out: np.ndarray | None = None) -> DecodedBatch:
    """Stack per-image results into a :class:`DecodedBatch` (CPU tensor)."""
    import torch

    rows = [i for i, r in enumerate(results) if r.pixels is not None]
    pixels = None
    if rows:
        stacked = np.stack([results[i].pixels for i in rows], out=out)  # type: ignore[misc]
        pixels = torch.from_numpy(stacked)
    sizes: list[tuple[int, int] | None] = [
        (r.width, r.height) if r.width is not None and r.height is not None else None for r in results
    ]
    return DecodedBatch(pixels, rows, sizes, [r.error for r in results], [r.hashes for r in results])


class PillowDecoder:
    """Decode with Pillow (or Pillow-SIMD when installed in its place) in a small thread pool;
    Pillow releases the GIL while decoding and resampling, so threads scale."""

    device = "cpu"

    def __init__(self, geometry: Geometry, max_pixels: int, pool: Executor | None) -> None:
        self.geometry = geometry
        self.max_pixels = max_pixels
        self.pool = pool
        self.name = "pillow-simd" if pillow_simd_installed() else "pillow"

    def decode_one(self, data: bytes) -> Decoded:
        return decode_pillow(data, self.geometry, self.max_pixels)

    def submit(self, blobs: Sequence[bytes]) -> list[Any]:
        """Start decoding; returns futures (or finished results without a pool)."""
        if self.pool is None:
            return [self.decode_one(b) for b in blobs]
        return [self.pool.submit(self.decode_one, b) for b in blobs]

    def decode(self, blobs: Sequence[bytes]) -> DecodedBatch:
        results = [f if isinstance(f, Decoded) else f.result() for f in self.submit(blobs)]
        return assemble(results)


def pillow_simd_installed() -> bool:
    """Pillow-SIMD versions carry a ``.postN`` suffix (e.g. ``9.5.0.post1``)."""
    return ".post" in Image.__version__
