"""CPU classify throughput on the real photos: decode only, and decode + inference, vs a naive baseline.

Workload: every photo in ../shared/images (164 real photos, JPEG/PNG/WebP, 96 px to 3840 px).
Modes (images/s, median over ``--rounds`` rounds; the modes alternate inside each round so a
busy machine slows them alike — compare ratios within one run; images per CPU-second of this
process is the steadier number on a shared machine):

- decode only: ``naive`` (per image: ``Image.open`` + ``convert("RGB")`` + torchvision
  ``Resize(256)``/``CenterCrop(224)``/``ToTensor``/``Normalize``), carcrawl's Pillow decoder
  (JPEG ``draft``, one fused crop+resize, thread pool, batch), DALI's CPU pipeline.
- decode + inference (the offline EfficientNet-Lite0, same weights everywhere): ``naive`` (the
  per-image decode above, then one call per image of the model as its package builds it, on
  one torch thread, its faster setting here), the carcrawl classifier with Pillow
  (prefetch overlap on and off) and with DALI-CPU, at ``--batch`` images per batch.

Pillow vs Pillow-SIMD: the script measures whichever PIL it imports and files the run under that
name in benchmarks/results/classify_cpu.json (runs of the other variant are kept), so run it once
in a venv with Pillow and once with Pillow-SIMD (scripts/install-pillow-simd.sh), or put a
Pillow-SIMD build first on PYTHONPATH.

    .venv/bin/python benchmarks/classify_cpu.py [--rounds 3] [--batch 32] [--images DIR]
"""

from __future__ import annotations

import argparse
import io
import json
import os
import statistics
import sys
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from benchmarks._common import RESULTS, write_result  # noqa: E402

DEFAULT_IMAGES = Path(__file__).resolve().parents[2] / "shared" / "images"


def load_photos(images: Path) -> tuple[list[bytes], list[str]]:
    """The photos this PIL build can open (a Pillow-SIMD built without libwebp cannot open WebP),
    and the names of those it cannot."""
    from PIL import Image

    files = sorted(p for p in images.glob("*/*") if p.suffix.lower() in {".jpg", ".jpeg", ".png", ".webp", ".gif"})
    ok, skipped = [], []
    for p in files:
        try:
            with Image.open(p):
                ok.append(p.read_bytes())
        except Exception:
            skipped.append(p.name)
    return ok, skipped


def naive_transform() -> Callable[[bytes], Any]:
    from PIL import Image
    from torchvision import transforms as T

    tf = T.Compose([T.Resize(256), T.CenterCrop(224), T.ToTensor(), T.Normalize([127 / 255] * 3, [128 / 255] * 3)])

    def one(data: bytes) -> Any:
        with Image.open(io.BytesIO(data)) as im:
            return tf(im.convert("RGB"))

    return one


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--images", type=Path, default=DEFAULT_IMAGES)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--batch", type=int, default=32)
    ap.add_argument("--skip-inference", action="store_true")
    args = ap.parse_args()

    import PIL
    import torch

    from carcrawl.classify import ClassifySettings, load_classifier
    from carcrawl.classify.dali import DaliDecoder, dali_import_error
    from carcrawl.classify.decode import PillowDecoder
    from carcrawl.classify.networks import _efficientnet_lite

    pil = ("pillow-simd " if ".post" in PIL.__version__ else "pillow ") + PIL.__version__
    photos, skipped = load_photos(args.images)
    n = len(photos)
    base = {"model": "efficientnet_lite0", "device": "cpu", "batch_size": args.batch, "embeddings": True}
    pillow = load_classifier(ClassifySettings(decoder="pillow", **base))  # type: ignore[arg-type]
    threads = pillow.threads
    pool = ThreadPoolExecutor(threads)
    pillow_decoder = PillowDecoder(pillow.network.geometry, 50_000_000, pool)  # decode only: every core
    dali = load_classifier(ClassifySettings(decoder="dali", **base)) if dali_import_error() is None else None  # type: ignore[arg-type]
    naive = naive_transform()
    items = [(str(i), b) for i, b in enumerate(photos)]
    batches = [items[i : i + args.batch] for i in range(0, n, args.batch)]

    def decode_naive() -> None:
        for b in photos:
            naive(b)

    def decode_with(decoder: Any) -> Callable[[], None]:
        return lambda: [decoder.decode([b for _, b in batch]) for batch in batches]

    # The naive baseline's model: the same weights as the package ships them (no batch-norm
    # folding, default memory format), on ONE torch thread: with torch's default (every core)
    # it ran 3-5 images/s here, one image per call spinning two threads on a shared machine.
    naive_body, naive_head, _ = _efficientnet_lite("efficientnet_lite0", None)
    naive_body.eval()

    def classify_naive(torch_threads: int = 1) -> None:
        ours = torch.get_num_threads()
        torch.set_num_threads(torch_threads)
        try:
            with torch.inference_mode():
                for b in photos:
                    x = naive(b).unsqueeze(0)
                    naive_head(naive_body(x))
        finally:
            torch.set_num_threads(ours)

    def classify_with(clf: Any, overlap: bool) -> Callable[[], None]:
        def run() -> None:
            clf.overlap = overlap
            for _ in clf.classify_batches(batches):
                pass

        return run

    modes: dict[str, Callable[[], None]] = {
        "decode naive (PIL + torchvision transforms, per image)": decode_naive,
        f"decode carcrawl {pillow.decoder} (draft, {threads} threads)": decode_with(pillow_decoder),
    }
    if dali is not None:
        dali_decoder = DaliDecoder(pillow.network.geometry, 50_000_000, args.batch, threads, None, pillow_decoder)
        modes[f"decode carcrawl dali-cpu ({threads} threads)"] = decode_with(dali_decoder)
    if not args.skip_inference:
        modes["classify naive (per-image decode + model call, 1 thread)"] = classify_naive
        modes[f"classify naive, torch default ({threads} threads)"] = lambda: classify_naive(threads)
        modes[f"classify carcrawl {pillow.decoder}, overlap"] = classify_with(pillow, True)
        modes[f"classify carcrawl {pillow.decoder}, sequential"] = classify_with(pillow, False)
        if dali is not None:
            modes["classify carcrawl dali-cpu, overlap"] = classify_with(dali, True)

    for m, f in modes.items():  # warm-up: model, allocator, file cache
        if not m.startswith("classify naive"):
            f()
    load_before = os.getloadavg()[0]
    rates: dict[str, list[float]] = {m: [] for m in modes}
    per_cpu_s: dict[str, list[float]] = {m: [] for m in modes}  # images per CPU-second of this process
    for r in range(args.rounds):
        for mode, f in modes.items():
            started, cpu = time.perf_counter(), time.process_time()
            f()
            rates[mode].append(n / (time.perf_counter() - started))
            per_cpu_s[mode].append(n / (time.process_time() - cpu))
        print(f"round {r + 1}/{args.rounds} done", file=sys.stderr)
    load_after = os.getloadavg()[0]

    med = {m: statistics.median(v) for m, v in rates.items()}
    naive_decode = med["decode naive (PIL + torchvision transforms, per image)"]
    naive_classify = med.get("classify naive (per-image decode + model call, 1 thread)")
    table = []
    if skipped:
        print(f"skipped {len(skipped)} photos this PIL cannot open: {', '.join(skipped)}")
    print(f"\n{n} photos, batch {args.batch}, {pil}, torch {torch.__version__}; {pillow.describe()}, "
          f"load average {load_before:.1f} -> {load_after:.1f}")
    print(f"{'mode':<62} {'images/s':>9} {'x naive':>8} {'img/CPU-s':>10}")
    for m, v in med.items():
        ref = naive_decode if m.startswith("decode") else naive_classify
        ratio = v / ref if ref else None
        cpu_rate = statistics.median(per_cpu_s[m])
        table.append({"mode": m, "images_per_s": round(v, 1), "all_rounds": [round(x, 1) for x in rates[m]],
                      "vs_naive": round(ratio, 2) if ratio else None, "images_per_cpu_second": round(cpu_rate, 1)})
        print(f"{m:<62} {v:9.1f} {ratio:8.2f} {cpu_rate:10.1f}")

    previous: dict[str, Any] = {}
    path = RESULTS / "classify_cpu.json"
    if path.exists():
        previous = json.loads(path.read_text()).get("runs", {})
    previous[pil] = {"photos": n, "skipped_unreadable_by_this_pil": skipped, "classifier": pillow.describe(), "batch": args.batch, "threads": threads, "rounds": args.rounds,
                     "load_average": [round(load_before, 2), round(load_after, 2)], "table": table}
    out = write_result("classify_cpu", {"command": "benchmarks/classify_cpu.py " + " ".join(sys.argv[1:]), "runs": previous})
    print(f"wrote {out}")
    pillow.close()
    if dali is not None:
        dali.close()


if __name__ == "__main__":
    main()
