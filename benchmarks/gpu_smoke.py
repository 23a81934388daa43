"""GPU smoke test: the DALI GPU decoder against the Pillow path, on the inputs that break decoders.

Needs a CUDA GPU and nvidia.dali; without either it stops at once with one line saying which.

    .venv/bin/python benchmarks/gpu_smoke.py [--device cuda:0] [--images DIR]

``--device cpu`` runs the same checks with DALI's CPU pipeline (the script's own dry run on a
machine without a GPU; it proves nothing about the GPU branch).

Checks (each prints ok/FAILED; the exit status is the number that failed):

1. verdicts: every real photo of ``--images`` (default ../shared/images, else the shipped sandbox
   photos) plus the awkward inputs below, classified with decoder=dali (nvJPEG) and with
   decoder=pillow, both on the GPU: same keep and same reason class for every image.
2. a corrupt JPEG inside a batch (headers, an empty scan, an end marker: passes the screen, fails
   DALI): only it gets ``decode_error``; the pipeline was rebuilt after the failed run and the
   batch's other images keep their verdicts.
3. a 65000 x 10 strip: routed to Pillow by the screen; fed to the pipeline directly anyway, the
   capped resize returns one 224 x 224 crop.
4. CMYK and progressive JPEGs, a JPEG with bytes after its end marker (stays on DALI), a
   truncated JPEG (goes to Pillow): their verdicts match Pillow's (part of 1).
5. two batches in flight from two threads at once (what the classify stage does on a GPU): the
   same verdicts as one after the other.
6. the device index is honoured: the pixels and the network are on ``--device``.

Writes benchmarks/results/gpu_smoke.json.
"""

from __future__ import annotations

import argparse
import io
import sys
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from benchmarks._common import ROOT, write_result  # noqa: E402

SHARED_IMAGES = ROOT.parent / "shared" / "images"
SHIPPED_PHOTOS = ROOT / "carcrawl" / "data" / "sandbox_photos"


def awkward_inputs(jpeg: bytes) -> dict[str, bytes]:
    """The inputs decoders get wrong, made from one real JPEG."""
    from PIL import Image

    with Image.open(io.BytesIO(jpeg)) as im:
        rgb = im.convert("RGB")
    out: dict[str, bytes] = {}
    for name, kwargs, mode in (("cmyk.jpg", {}, "CMYK"), ("progressive.jpg", {"progressive": True}, "RGB")):
        buf = io.BytesIO()
        rgb.convert(mode).save(buf, "JPEG", quality=90, **kwargs)
        out[name] = buf.getvalue()
    buf = io.BytesIO()
    Image.new("RGB", (65000, 10), (200, 30, 30)).save(buf, "JPEG")
    out["strip_65000x10.jpg"] = buf.getvalue()
    out["trailing_bytes.jpg"] = jpeg + b"/img/123.jpg?size=large" * 4
    out["truncated.jpg"] = jpeg[: len(jpeg) * 2 // 3]
    buf = io.BytesIO()
    rgb.convert("RGBA").save(buf, "PNG")
    out["alpha.png"] = buf.getvalue()
    return out


def corrupt(jpeg: bytes) -> bytes:
    """The headers, an empty (bogus) scan, an end marker; the last start-of-scan of a baseline
    JPEG is the picture's (an EXIF thumbnail's comes earlier)."""
    return jpeg[: jpeg.rindex(b"\xff\xda")] + b"\xff\xda\x00\x02\xff\xd9"


def kind(reason: str) -> str:
    return reason.split(":", 1)[0]


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--device", default="cuda:0")
    ap.add_argument("--images", type=Path, default=SHARED_IMAGES if SHARED_IMAGES.exists() else SHIPPED_PHOTOS)
    ap.add_argument("--batch", type=int, default=64)
    args = ap.parse_args()

    import torch

    from carcrawl.classify import ClassifySettings, load_classifier
    from carcrawl.classify.dali import dali_import_error, screen

    if args.device != "cpu" and not torch.cuda.is_available():
        raise SystemExit("gpu_smoke.py needs a CUDA GPU (torch.cuda.is_available() is False); nothing was checked")
    why = dali_import_error()
    if why is not None:
        raise SystemExit(f"gpu_smoke.py needs nvidia.dali ({why}); pip install nvidia-dali-cuda130")

    files = sorted(p for p in args.images.rglob("*") if p.suffix.lower() in {".jpg", ".jpeg", ".png", ".webp"})
    photos = {f"{p.parent.name}/{p.name}": p.read_bytes() for p in files}
    jpegs = [(name, b) for name, b in photos.items() if b[:3] == b"\xff\xd8\xff" and b"\xff\xda" in b]
    jpeg = next((b for name, b in jpegs if name.split("/")[0] in ("vehicle", "exterior")), jpegs[0][1])  # a keeper
    odd = awkward_inputs(jpeg)
    photos.update(odd)
    items = list(photos.items())
    base: dict[str, Any] = {"device": args.device, "batch_size": args.batch}
    dali = load_classifier(ClassifySettings(decoder="dali", **base))
    pillow = load_classifier(ClassifySettings(decoder="pillow", **base))
    gpu = torch.cuda.get_device_name(torch.device(args.device)) if args.device != "cpu" else "cpu (dry run)"
    print(f"{gpu}: {dali.describe()}; {len(items)} inputs", flush=True)
    checks: dict[str, tuple[bool, str]] = {}

    # 1 + 4: verdicts against the Pillow path
    a = [v for i in range(0, len(items), args.batch) for v in dali.classify(items[i : i + args.batch])]
    b = [v for i in range(0, len(items), args.batch) for v in pillow.classify(items[i : i + args.batch])]
    differ = [(x.sha256, x.reason, y.reason) for x, y in zip(a, b, strict=True)
              if (x.keep, kind(x.reason)) != (y.keep, kind(y.reason))]
    top1 = sum(bool(x.top5 and y.top5 and x.top5[0].index == y.top5[0].index) for x, y in zip(a, b, strict=True))
    checks["verdicts equal Pillow's"] = (not differ, f"{len(items) - len(differ)}/{len(items)} equal, top-1 class equal "
                                         f"for {top1}; differ: {differ[:10]}")
    awkward = {v.sha256: (v.keep, v.reason) for v in a if v.sha256 in odd}
    routed = {name: screen(photos[name], 50_000_000)[1] for name in awkward}
    checks["awkward inputs routed as designed"] = (
        routed == {"cmyk.jpg": False, "progressive.jpg": True, "strip_65000x10.jpg": False, "trailing_bytes.jpg": True,
                   "truncated.jpg": False, "alpha.png": False}, f"to DALI: {routed}; verdicts: {awkward}")

    # 2: a corrupt JPEG inside a batch
    decoder = dali._decoder
    batch = items[:7] + [("corrupt", corrupt(jpeg))] + items[7:15]
    rebuilt, isolated = decoder.rebuilds, decoder.isolated
    got = dali.classify(batch)
    alone = dali.classify(batch[:7] + batch[8:])
    ok = (screen(batch[7][1], 50_000_000)[1] and got[7].reason == "decode_error" and decoder.isolated == isolated + 1 and decoder.rebuilds > rebuilt
          and [v.reason for v in got[:7] + got[8:]] == [v.reason for v in alone])
    checks["corrupt JPEG isolated, pipeline rebuilt"] = (ok, f"reason {got[7].reason}, isolated "
                                                         f"{decoder.isolated - isolated}, rebuilds {decoder.rebuilds - rebuilt}")

    # 3: the strip straight into the pipeline
    import numpy as np

    decoder.pipe.feed_input("encoded", [np.frombuffer(photos["strip_65000x10.jpg"], np.uint8)])
    shape = tuple(decoder.pipe.run()[0].as_tensor().shape())
    checks["strip through the capped resize"] = (shape == (1, 224, 224, 3), f"output {shape}")

    # 5: two batches in flight
    halves = [items[i : i + args.batch] for i in range(0, min(len(items), 4 * args.batch), args.batch)]
    serial = [[(v.keep, v.reason) for v in dali.classify(h)] for h in halves]
    with ThreadPoolExecutor(2) as pool:
        parallel = [[(v.keep, v.reason) for v in vs] for vs in pool.map(dali.classify, halves)]
    checks["two batches in flight"] = (parallel == serial, f"{len(halves)} batches of <= {args.batch}")

    # 6: the device index
    want = torch.device(args.device)
    pixels = decoder.decode([jpeg]).pixels
    on = (pixels.device if pixels is not None else None, next(dali.network.body.parameters()).device)
    checks["device index honoured"] = (all(d is not None and d.type == want.type and (d.index or 0) == (want.index or 0) for d in on),
                                       f"pixels on {on[0]}, network on {on[1]}")

    failed = 0
    for name, (passed, detail) in checks.items():
        failed += not passed
        print(f"{'ok    ' if passed else 'FAILED'} {name}: {detail}")
    out = write_result("gpu_smoke", {"command": "benchmarks/gpu_smoke.py " + " ".join(sys.argv[1:]),
                                     "gpu": gpu, "inputs": len(items),
                                     "checks": {k: {"ok": v[0], "detail": v[1]} for k, v in checks.items()}})
    print(f"wrote {out}")
    dali.close()
    pillow.close()
    return failed


if __name__ == "__main__":
    sys.exit(main())
