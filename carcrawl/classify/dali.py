"""DALI decoders: a batch of encoded bytes in memory -> fixed-size RGB crops, on the GPU or the CPU.

One pipeline: ``fn.external_source`` (the batch's encoded bytes) -> ``fn.decoders.image``
(``device="mixed"``: nvJPEG / the hardware JPEG decoder, or ``"cpu"``: libjpeg-turbo with
``device_id=None``) -> resize the shorter side (the longer side capped by ``max_size``) ->
``crop_mirror_normalize`` centre crop, uint8 HWC. A second output, the full picture in grey
squeezed to ``phash.HASH_SIDE`` pixels square, gives the perceptual hashes (computed on the CPU
from that small picture). The model normalises on its own device, so the decoders of every path
hand over the same thing. On the GPU the output is copied device-to-device
into a tensor allocated for that run (torch's caching allocator makes that cheap), so two batches
in flight never share, and never overwrite, an output buffer.

Robust by design, because DALI fails a whole batch when one sample is bad and a pipeline whose
``run()`` raised is not reusable:

- a cheap screen first (``screen``: Pillow's header peek, no pixels), run by the caller of the
  classifier, not by the decode thread, so DALI is fed while the next batch is screened. It sends
  to Pillow what DALI would decode differently or not at all: GIF, alpha, CMYK, 16-bit, palette,
  truncated JPEGs (no end marker after the last scan; bytes *after* the end marker are fine and
  stay on the GPU), tiny images, and strips whose sides differ more than ``MAX_ASPECT`` times;
- the resize is capped (``max_size``), so a 65535 x 10 strip that slips past the screen cannot
  ask for a 1.7-megapixel-wide, gigabyte-sized intermediate; an out-of-bounds crop is padded;
- a batch that still fails: the pipeline is rebuilt, then the batch is split in halves (each
  failure rebuilds again) until only the bad samples remain; those get Pillow's verdict
  (normally ``decode_error``).

On this project's 2-core CPU machine the Pillow decoder (JPEG downscale-on-decode via ``draft``)
decodes faster than or as fast as DALI's CPU pipeline (benchmarks/RESULTS.md, "Classify: CPU
throughput"), so ``decoder="auto"`` uses DALI only on the GPU. The GPU branch (``device_id`` set)
has not run yet: no GPU was lent where it was written; its CPU twin is tested, and
benchmarks/gpu_smoke.py checks the GPU branch against the Pillow path where a GPU exists.
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
# Images whose longer side is more than this many times the shorter go to Pillow, and DALI's resize
# caps the longer side at ``resize * MAX_ASPECT`` (``max_size``).
MAX_ASPECT = 4.0


def dali_import_error() -> str | None:
    """None when ``nvidia.dali`` imports, else why not (for messages)."""
    try:
        import nvidia.dali  # noqa: F401
    except Exception as e:  # ImportError, or a broken CUDA library underneath
        return f"{type(e).__name__}: {e}"
    return None


def jpeg_complete(data: bytes) -> bool:
    """A complete JPEG has an end-of-image marker (FF D9) after its last start-of-scan (FF DA);
    entropy-coded data stuffs every FF byte, so neither appears inside a scan. Bytes after the
    end marker (trailers, appended metadata) do not make it incomplete."""
    sos = data.rfind(b"\xff\xda")
    return sos >= 0 and data.rfind(b"\xff\xd9") > sos


def screen(data: bytes, max_pixels: int) -> tuple[Header, bool]:
    """Cheap pre-screen (header only): the header, and whether DALI would decode this image the
    way the Pillow path does."""
    img, header = peek(data, max_pixels)
    if img is None or header.error is not None or header.has_alpha:
        return header, False
    if header.format not in DALI_FORMATS or header.mode not in DALI_MODES:
        return header, False
    if header.format == "JPEG" and not jpeg_complete(data):
        return header, False
    w, h = header.width or 0, header.height or 0
    # DALI's resize needs a few pixels; tiny images and extreme strips go the Pillow way.
    return header, min(w, h) >= 2 and max(w, h) <= MAX_ASPECT * min(w, h)


def build_pipeline(geometry: Geometry, batch_size: int, threads: int, device_id: int | None) -> Any:
    """The DALI pipeline (built). ``device_id=None`` = CPU only; else mixed decode on that GPU."""
    from nvidia.dali import fn, pipeline_def, types

    gpu = device_id is not None

    @pipeline_def(batch_size=batch_size, num_threads=threads, device_id=device_id, prefetch_queue_depth=1)
    def pipeline() -> Any:
        encoded = fn.external_source(name="encoded", dtype=types.UINT8, ndim=1)
        decoded = fn.decoders.image(encoded, device="mixed" if gpu else "cpu", output_type=types.RGB)
        images = fn.resize(
            decoded, resize_shorter=geometry.resize, max_size=geometry.resize * MAX_ASPECT,
            interp_type=types.INTERP_LINEAR, antialias=True,
        )
        crops = fn.crop_mirror_normalize(
            images,
            crop=(geometry.size, geometry.size),
            crop_pos_x=0.5,
            crop_pos_y=0.5,
            dtype=types.UINT8,
            output_layout="HWC",
            out_of_bounds_policy="pad",  # a capped strip is thinner than the crop: pad, do not fail
        )
        grey = fn.color_space_conversion(decoded, image_type=types.RGB, output_type=types.GRAY)
        picture = fn.resize(grey, size=(HASH_SIDE, HASH_SIDE), interp_type=types.INTERP_LINEAR, antialias=True)
        return crops, picture

    pipe = pipeline()
    pipe.build()
    return pipe


Plan = list[tuple[Header, bool]]  # per image: its header, and whether DALI decodes it


class DaliDecoder:
    """Decode with DALI (``device_id`` None: CPU pipeline; an int: that GPU), isolating bad images.

    ``decode`` is called from one thread at a time (the classifier's prefetch thread); ``screen``
    from the classifier's caller, so the decode thread only feeds DALI."""

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
        self.threads = threads
        self.device_id = device_id
        self.fallback = fallback
        self.device = "cpu" if device_id is None else f"cuda:{device_id}"
        self.name = "dali-cpu" if device_id is None else "dali-gpu (nvjpeg)"
        self.pipe = build_pipeline(geometry, batch_size, threads, device_id)
        self.isolated = 0  # samples that failed inside a DALI batch (for tests and logs)
        self.rebuilds = 0  # pipelines rebuilt after a failed run
        self._hashes: list[bytes] = []  # perceptual hashes of the last run's samples
        self._row_hashes: dict[int, bytes] = {}  # input row -> hashes, for the batch being decoded

    # -- one DALI run ------------------------------------------------------------------------
    def _rebuild(self) -> None:
        """A pipeline whose run() raised is not reusable (its queues may hold the failed batch)."""
        old, self.pipe = self.pipe, None
        del old
        self.pipe = build_pipeline(self.geometry, self.batch_size, self.threads, self.device_id)
        self.rebuilds += 1

    def _run(self, blobs: Sequence[np.ndarray]) -> Any:
        """Decode ``blobs`` (<= batch_size) in one DALI run: a torch uint8 N x S x S x 3 tensor of
        its own (a CPU copy, or a fresh tensor on the GPU)."""
        import torch

        self.pipe.feed_input("encoded", list(blobs))
        out, picture = self.pipe.run()
        pictures = (picture if self.device_id is None else picture.as_cpu()).as_array()
        self._hashes = [to_blob(picture_hashes(Image.fromarray(p[:, :, 0], "L"))) for p in pictures]
        if self.device_id is None:
            return torch.from_numpy(out.as_array())  # as_array copies out of DALI's buffer
        from nvidia.dali.plugin.pytorch import feed_ndarray

        s = self.geometry.size
        device = torch.device("cuda", self.device_id)
        target = torch.empty((len(blobs), s, s, 3), dtype=torch.uint8, device=device)
        # On the device's current stream, which the model uses too: ordered before its kernels.
        return feed_ndarray(out.as_tensor(), target, cuda_stream=torch.cuda.current_stream(device))

    def _run_isolating(self, rows: list[int], blobs: Sequence[np.ndarray]) -> tuple[list[int], list[Any], list[int]]:
        """Run; when DALI fails the batch, rebuild the pipeline and bisect. Returns (rows decoded,
        tensors, rows failed); the hashes of the rows decoded go into ``self._row_hashes``."""
        try:
            tensor = self._run(blobs)
            self._row_hashes.update(zip(rows, self._hashes, strict=True))
            return rows, [tensor], []
        except Exception as e:  # DALI raises RuntimeError for the whole batch
            self._rebuild()
            if len(rows) == 1:
                self.isolated += 1
                log.debug("DALI could not decode sample %d: %s", rows[0], str(e).splitlines()[0] if str(e) else e)
                return [], [], rows
        mid = len(rows) // 2
        ok_a, t_a, bad_a = self._run_isolating(rows[:mid], blobs[:mid])
        ok_b, t_b, bad_b = self._run_isolating(rows[mid:], blobs[mid:])
        return ok_a + ok_b, t_a + t_b, bad_a + bad_b

    # -- the decoder interface ---------------------------------------------------------------
    def screen(self, blobs: Sequence[bytes]) -> Plan:
        """Header and route of every image (cheap; runs in the caller's thread)."""
        return [screen(data, self.max_pixels) for data in blobs]

    def decode(self, blobs: Sequence[bytes], plan: Plan | None = None) -> DecodedBatch:
        import torch

        plan = plan if plan is not None else self.screen(blobs)
        n = len(blobs)
        sizes: list[tuple[int, int] | None] = [None] * n
        errors: list[str | None] = [None] * n
        dali_rows: list[int] = []
        pillow_rows: list[int] = []
        self._row_hashes = {}
        for i, (header, to_dali) in enumerate(plan):
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
