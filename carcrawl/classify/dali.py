"""DALI decoders: a batch of encoded bytes in memory -> 224x224 RGB crops, on the GPU or the CPU.

One pipeline: ``fn.external_source`` (the batch's encoded bytes) -> ``fn.decoders.image``
(``device="mixed"``: nvJPEG / the hardware JPEG decoder, or ``"cpu"``: libjpeg-turbo with
``device_id=None``) -> resize the shorter side -> ``crop_mirror_normalize`` centre crop, uint8 HWC.
A second output, the full picture in grey squeezed to ``phash.HASH_SIDE`` pixels square, gives
the perceptual hashes (computed on the CPU from that small picture).
The model normalises on its own device, so the decoders of every path hand over the same thing.
On the GPU the output is copied device-to-device into one of two reused torch buffers (no host
round trip); two buffers because batch N+1 decodes while batch N is inferred.

DALI fails the whole batch when one sample is corrupt, so images are screened first with
Pillow's header peek (pixel cap, size, format), truncated JPEGs (no end-of-image marker) and
formats or modes DALI does not decode the way the Pillow path does (GIF, alpha, CMYK, 16-bit,
palette) go to the Pillow decoder, and a batch that still fails is split in halves until only the
bad samples remain; those get Pillow's verdict too (normally ``decode_error``).

On this project's 2-core CPU machine the Pillow decoder (JPEG downscale-on-decode via ``draft``)
decodes faster than or as fast as DALI's CPU pipeline (benchmarks/RESULTS.md, "Classify: CPU
throughput"), so ``decoder="auto"`` uses DALI only on the GPU. The GPU branch (``device_id`` set)
has not run yet: no GPU was available where it was written; its CPU twin is tested.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from typing import Any

import numpy as np
from PIL import Image

from carcrawl.classify.decode import (
    DecodedBatch,
    Geometry,
    Header,
    PillowDecoder,
    peek,
)
from carcrawl.phash import HASH_SIDE, picture_hashes, to_blob

log = logging.getLogger(__name__)

# Pillow format names DALI decodes; modes that decode to the same pixels as the Pillow path.
DALI_FORMATS = frozenset({"JPEG", "PNG", "WEBP", "BMP", "TIFF", "PPM", "JPEG2000"})
DALI_MODES = frozenset({"RGB", "L", "YCbCr"})


def dali_import_error() -> str | None:
    """None when ``nvidia.dali`` imports, else why not (for messages)."""
    try:
        import nvidia.dali  # noqa: F401
    except Exception as e:  # ImportError, or a broken CUDA library underneath
        return f"{type(e).__name__}: {e}"
    return None


def _ends_like_jpeg(data: bytes) -> bool:
    """A complete JPEG ends with the EOI marker (FF D9), possibly followed by padding."""
    tail = data[-64:].rstrip(b"\x00\r\n ")
    return tail.endswith(b"\xff\xd9")


def screen(data: bytes, max_pixels: int) -> tuple[Header, bool]:
    """Cheap pre-screen (header only): the header, and whether DALI would decode this image the
    way the Pillow path does."""
    img, header = peek(data, max_pixels)
    if img is None or header.error is not None or header.has_alpha:
        return header, False
    if header.format not in DALI_FORMATS or header.mode not in DALI_MODES:
        return header, False
    if header.format == "JPEG" and not _ends_like_jpeg(data):
        return header, False
    # DALI's resize needs a few pixels; tiny images go the Pillow way.
    return header, (header.width or 0) >= 2 and (header.height or 0) >= 2


def build_pipeline(geometry: Geometry, batch_size: int, threads: int, device_id: int | None) -> Any:
    """The DALI pipeline (built). ``device_id=None`` = CPU only; else mixed decode on that GPU."""
    from nvidia.dali import fn, pipeline_def, types

    gpu = device_id is not None

    @pipeline_def(batch_size=batch_size, num_threads=threads, device_id=device_id, prefetch_queue_depth=1)
    def pipeline() -> Any:
        encoded = fn.external_source(name="encoded", dtype=types.UINT8, ndim=1)
        decoded = fn.decoders.image(encoded, device="mixed" if gpu else "cpu", output_type=types.RGB)
        images = fn.resize(decoded, resize_shorter=geometry.resize, interp_type=types.INTERP_LINEAR, antialias=True)
        crops = fn.crop_mirror_normalize(
            images,
            crop=(geometry.size, geometry.size),
            crop_pos_x=0.5,
            crop_pos_y=0.5,
            dtype=types.UINT8,
            output_layout="HWC",
        )
        grey = fn.color_space_conversion(decoded, image_type=types.RGB, output_type=types.GRAY)
        picture = fn.resize(grey, size=(HASH_SIDE, HASH_SIDE), interp_type=types.INTERP_LINEAR, antialias=True)
        return crops, picture

    pipe = pipeline()
    pipe.build()
    return pipe


class DaliDecoder:
    """Decode with DALI (``device_id`` None: CPU pipeline; an int: that GPU), isolating bad images.

    ``decode`` is called from one thread at a time (the classifier's prefetch thread)."""

    def __init__(
        self,
        geometry: Geometry,
        max_pixels: int,
        batch_size: int,
        threads: int,
        device_id: int | None,
        fallback: PillowDecoder,
    ) -> None:
        self.geometry = geometry
        self.max_pixels = max_pixels
        self.batch_size = batch_size
        self.device_id = device_id
        self.fallback = fallback
        self.device = "cpu" if device_id is None else f"cuda:{device_id}"
        self.name = "dali-cpu" if device_id is None else "dali-gpu (nvjpeg)"
        self.pipe = build_pipeline(geometry, batch_size, threads, device_id)
        self._buffers: list[Any] = []  # two reused GPU output buffers, one per decode() call
        self._slot = 0
        self.isolated = 0  # samples that failed inside a DALI batch (for tests and logs)
        self._hashes: list[bytes] = []  # perceptual hashes of the last run's samples
        self._row_hashes: dict[int, bytes] = {}  # input row -> hashes, for the batch being decoded

    # -- one DALI run ------------------------------------------------------------------------
    def _run(self, blobs: Sequence[np.ndarray]) -> Any:
        """Decode ``blobs`` (<= batch_size) in one DALI run: a torch uint8 N x S x S x 3 tensor
        (a CPU copy, or a slice of a GPU buffer valid until the next-but-one call)."""
        import torch

        self.pipe.feed_input("encoded", list(blobs))
        out, picture = self.pipe.run()
        pictures = (picture if self.device_id is None else picture.as_cpu()).as_array()
        self._hashes = [to_blob(picture_hashes(Image.fromarray(p[:, :, 0], "L"))) for p in pictures]
        if self.device_id is None:
            return torch.from_numpy(out.as_array())  # as_array copies out of DALI's buffer
        from nvidia.dali.plugin.pytorch import feed_ndarray

        if not self._buffers:
            s = self.geometry.size
            self._buffers = [torch.empty((self.batch_size, s, s, 3), dtype=torch.uint8, device=self.device) for _ in range(2)]
        # Same stream as the model: the copy is ordered after the kernels that read this buffer.
        target = self._buffers[self._slot][: len(blobs)]
        return feed_ndarray(out.as_tensor(), target, cuda_stream=torch.cuda.current_stream())

    def _run_isolating(self, rows: list[int], blobs: Sequence[np.ndarray]) -> tuple[list[int], list[Any], list[int]]:
        """Run; when DALI fails the batch, bisect. Returns (rows decoded, tensors, rows failed);
        the hashes of the rows decoded go into ``self._row_hashes``."""
        try:
            tensor = self._run(blobs)
            self._row_hashes.update(zip(rows, self._hashes, strict=True))
            return rows, [tensor], []
        except Exception as e:  # DALI raises RuntimeError for the whole batch
            if len(rows) == 1:
                self.isolated += 1
                log.debug("DALI could not decode sample %d: %s", rows[0], str(e).splitlines()[0] if str(e) else e)
                return [], [], rows
        mid = len(rows) // 2
        ok_a, t_a, bad_a = self._run_isolating(rows[:mid], blobs[:mid])
        if self.device_id is not None:
            t_a = [t.clone() for t in t_a]  # this call's buffer is rewritten by the next run
        ok_b, t_b, bad_b = self._run_isolating(rows[mid:], blobs[mid:])
        return ok_a + ok_b, t_a + t_b, bad_a + bad_b

    # -- the decoder interface ---------------------------------------------------------------
    def decode(self, blobs: Sequence[bytes]) -> DecodedBatch:
        import torch

        n = len(blobs)
        sizes: list[tuple[int, int] | None] = [None] * n
        errors: list[str | None] = [None] * n
        dali_rows: list[int] = []
        pillow_rows: list[int] = []
        self._slot ^= 1  # batch N+1 decodes into the other buffer while batch N is inferred
        self._row_hashes = {}
        for i, data in enumerate(blobs):
            header, to_dali = screen(data, self.max_pixels)
            if header.width is not None and header.height is not None:
                sizes[i] = (header.width, header.height)
            (dali_rows if to_dali else pillow_rows).append(i)

        # Pillow's share runs in its thread pool while DALI works (DALI releases the GIL).
        futures = self.fallback.submit([blobs[i] for i in pillow_rows])
        rows: list[int] = []
        tensors: list[Any] = []
        for start in range(0, len(dali_rows), self.batch_size):
            chunk = dali_rows[start : start + self.batch_size]
            arrays = [np.frombuffer(blobs[i], dtype=np.uint8) for i in chunk]
            ok, parts, bad = self._run_isolating(chunk, arrays)
            if parts and self.device_id is not None and start + self.batch_size < len(dali_rows):
                parts = [t.clone() for t in parts]
            rows += ok
            tensors += parts
            if bad:  # Pillow decides (usually decode_error; sometimes it copes where DALI did not)
                pillow_rows += bad
                futures += self.fallback.submit([blobs[i] for i in bad])

        fallback_pixels: list[np.ndarray] = []
        for i, f in zip(pillow_rows, futures, strict=True):
            result = f if not hasattr(f, "result") else f.result()
            if result.pixels is None:
                errors[i] = result.error
                continue
            rows.append(i)
            fallback_pixels.append(result.pixels)
            self._row_hashes[i] = result.hashes  # type: ignore[assignment]
            if sizes[i] is None and result.width is not None and result.height is not None:
                sizes[i] = (result.width, result.height)
        if fallback_pixels:
            tensors.append(torch.from_numpy(np.stack(fallback_pixels)).to(torch.device(self.device)))
        pixels = None
        if tensors:
            pixels = tensors[0] if len(tensors) == 1 else torch.cat(tensors)
        return DecodedBatch(pixels, rows, sizes, errors, [self._row_hashes.get(i) for i in range(n)])


def dali_works(geometry: Geometry, device_id: int | None) -> str | None:
    """None when a DALI pipeline on ``device_id`` builds and decodes a real JPEG, else why not."""
    reason = dali_import_error()
    if reason is not None:
        return reason
    try:
        import io

        from PIL import Image

        buf = io.BytesIO()
        Image.new("RGB", (320, 240), (200, 30, 30)).save(buf, "JPEG")
        pipe = build_pipeline(geometry, 1, 1, device_id)
        pipe.feed_input("encoded", [np.frombuffer(buf.getvalue(), dtype=np.uint8)])
        out = pipe.run()[0]
        shape = tuple(out.as_tensor().shape())
        del pipe
        if shape != (1, geometry.size, geometry.size, 3):
            return f"unexpected DALI output shape {shape}"
    except Exception as e:
        return f"{type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''}"
    return None
