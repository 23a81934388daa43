"""The Pillow decoder on real photos and on the awkward files a crawl meets: truncated JPEGs,
decompression bombs, GIF, alpha, CMYK, 16-bit, EXIF rotation. No model needed."""

from __future__ import annotations

import io
import struct
import zlib
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from carcrawl.classify.decode import DECODE_ERROR, TOO_MANY_PIXELS, Geometry, PillowDecoder, decode_pillow

GEOMETRY = Geometry(224, 256)
CAP = 50_000_000


def png_claiming(width: int, height: int) -> bytes:
    """A valid PNG signature and IHDR claiming ``width`` x ``height``, with a few bytes of data."""

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    ihdr = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", zlib.compress(b"\x00" * 64)) + chunk(b"IEND", b"")


def encode(img: Image.Image, fmt: str, **kw: object) -> bytes:
    buf = io.BytesIO()
    img.save(buf, fmt, **kw)
    return buf.getvalue()


@pytest.fixture(scope="module")
def photo(shared: Path) -> Image.Image:
    with Image.open(shared / "images" / "vehicle" / "ANPR__car1.jpg") as im:
        return im.convert("RGB")


def test_real_photos_decode_to_the_model_geometry(shared: Path) -> None:
    files = sorted((shared / "images" / "vehicle").iterdir())[:6] + sorted((shared / "images" / "other").iterdir())[:6]
    with ThreadPoolExecutor(2) as pool:
        batch = PillowDecoder(GEOMETRY, CAP, pool).decode([f.read_bytes() for f in files])
    assert batch.pixels is not None and tuple(batch.pixels.shape) == (12, 224, 224, 3)
    assert batch.rows == list(range(12)) and batch.errors == [None] * 12
    for f, size in zip(files, batch.sizes, strict=True):
        with Image.open(f) as im:
            assert size is not None and sorted(size) == sorted(im.size)


def test_a_truncated_jpeg_spoils_only_itself(vehicle_jpeg: bytes, shared: Path) -> None:
    other = (shared / "images" / "other" / "darknet__dog.jpg").read_bytes()
    blobs = [vehicle_jpeg, vehicle_jpeg[: len(vehicle_jpeg) // 2], b"<html>not an image</html>", other]
    batch = PillowDecoder(GEOMETRY, CAP, None).decode(blobs)
    assert batch.errors == [None, DECODE_ERROR, DECODE_ERROR, None]
    assert batch.rows == [0, 3]
    assert batch.pixels is not None and batch.pixels.shape[0] == 2


@pytest.mark.filterwarnings("ignore::PIL.Image.DecompressionBombWarning")
def test_decompression_bomb_is_refused_from_the_header() -> None:
    # 50000 x 50000 (2.5 Gpx): Pillow's own guard fires at open; we report it as too_many_pixels.
    result = decode_pillow(png_claiming(50_000, 50_000), GEOMETRY, CAP)
    assert result.pixels is None and result.error == TOO_MANY_PIXELS
    # 12000 x 12000 (144 Mpx) is under Pillow's hard limit: our cap refuses it before decoding
    # (decoding these few bytes would have failed with decode_error instead).
    result = decode_pillow(png_claiming(12_000, 12_000), GEOMETRY, CAP)
    assert (result.error, result.width, result.height) == (TOO_MANY_PIXELS, 12_000, 12_000)


def test_pixel_cap_applies_to_real_photos(vehicle_jpeg: bytes) -> None:
    result = decode_pillow(vehicle_jpeg, GEOMETRY, max_pixels=10_000)
    assert result.error == TOO_MANY_PIXELS and result.pixels is None and result.width and result.height


def test_gif_first_frame_and_palette(photo: Image.Image) -> None:
    frames = [photo.convert("P"), Image.new("RGB", photo.size, (0, 0, 255)).convert("P")]
    data = encode(frames[0], "GIF", save_all=True, append_images=frames[1:])
    result = decode_pillow(data, GEOMETRY, CAP)
    assert result.pixels is not None and result.pixels.shape == (224, 224, 3)
    assert result.pixels[..., 2].mean() < 200  # the photo, not the blue second frame


def test_transparent_png_lands_on_white() -> None:
    rgba = Image.new("RGBA", (400, 300), (255, 0, 0, 0))  # red, fully transparent
    rgba.paste((0, 0, 0, 255), (150, 100, 250, 200))  # an opaque black square in the middle
    result = decode_pillow(encode(rgba, "PNG"), GEOMETRY, CAP)
    assert result.pixels is not None
    assert result.pixels[0, 0].tolist() == [255, 255, 255]
    assert result.pixels[112, 112].tolist() == [0, 0, 0]


def test_cmyk_jpeg_matches_its_rgb_original(photo: Image.Image) -> None:
    rgb = decode_pillow(encode(photo, "JPEG", quality=95), GEOMETRY, CAP).pixels
    cmyk = decode_pillow(encode(photo.convert("CMYK"), "JPEG", quality=95), GEOMETRY, CAP).pixels
    assert rgb is not None and cmyk is not None
    assert np.abs(rgb.astype(int) - cmyk.astype(int)).mean() < 12


def test_16_bit_png_is_scaled_not_clipped() -> None:
    ramp = np.tile(np.linspace(0, 65535, 512, dtype=np.uint16), (384, 1))
    data = encode(Image.fromarray(ramp), "PNG")
    result = decode_pillow(data, GEOMETRY, CAP)
    assert result.pixels is not None
    row = result.pixels[112, :, 0].astype(int)
    assert row[0] < 60 and row[-1] > 200 and (np.diff(row) >= -1).all()  # a ramp, not all-white


def test_exif_rotation_is_applied(photo: Image.Image) -> None:
    exif = Image.Exif()
    exif[0x0112] = 6  # rotate 90 degrees clockwise when shown
    landscape = photo.resize((300, 200))
    result = decode_pillow(encode(landscape, "JPEG", exif=exif), GEOMETRY, CAP)
    assert (result.width, result.height) == (200, 300)
    assert result.pixels is not None
