"""GPU classify throughput: decode only and decode + ResNet-50 at batch 64/128/256, vs a naive baseline.

Run on a machine with a CUDA GPU (the project's `device` tool lends an H100 to some sessions):

    .venv/bin/python benchmarks/classify_gpu.py [--device cuda:0] [--model resnet50] [--images DIR] [--images-per-pass 2048] [--batches 64,128,256]

Workload: the real photos of ../shared/images when present, else the photo set the project ships
(carcrawl/data/sandbox_photos), repeated to ``--images-per-pass`` encoded images. Modes
(images/s, median of ``--rounds``; modes alternate inside each round):

- ``model only``: ResNet-50 on a uint8 batch already on the GPU (fp16 autocast, channels_last):
  the ceiling for everything below.
- ``decode dali-gpu``: carcrawl's DALI pipeline (nvJPEG/hardware decoder, resize, crop) when
  nvidia.dali imports; ``decode torchvision-gpu``: ``torchvision.io.decode_jpeg(device="cuda")`` on
  the batch's JPEGs + resize/crop on the GPU (JPEG only); ``decode pillow``: carcrawl's Pillow
  decoder on all CPU cores.
- ``classify carcrawl <decoder>``: the carcrawl classifier end to end (verdicts, top-5,
  embeddings), batch N+1 decoding while batch N is inferred.
- ``classify torchvision-gpu``: GPU JPEG decode + the same network, for comparison.
- ``classify naive``: per image ``Image.open`` + torchvision transforms + one fp32 model call.

ResNet-50 weights: the torch hub cache when present, else random weights of the same
architecture (same FLOPs; throughput does not depend on the values) — the JSON says which.
Writes benchmarks/results/classify_gpu.json.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from benchmarks._common import ROOT, write_result  # noqa: E402

SHARED_IMAGES = ROOT.parent / "shared" / "images"
SHIPPED_PHOTOS = ROOT / "carcrawl" / "data" / "sandbox_photos"


def load_photos(folder: Path) -> list[bytes]:
    files = sorted(p for p in folder.rglob("*") if p.suffix.lower() in {".jpg", ".jpeg", ".png", ".webp"})
    return [p.read_bytes() for p in files]


def resnet_weights(tmp: Path) -> tuple[str | None, str]:
    """A ResNet-50 state_dict file for the classifier: the cache's, else random weights."""
    import torch
    from torchvision.models import resnet50

    from carcrawl.classify.networks import cached_resnet50

    cached = cached_resnet50()
    if cached is not None:
        return str(cached), f"torch hub cache ({cached.name})"
    path = tmp / "resnet50-random.pth"
    torch.save(resnet50(weights=None).state_dict(), path)
    return str(path), "random (no cached weights on this machine; same FLOPs)"


def run_batch(batch: int, args: argparse.Namespace, workload: list[bytes], jpegs: list[bytes], weights: str | None,
              dali_ok: bool) -> list[dict[str, Any]]:
    """All modes at one batch size; prints the table and returns its rows."""
    import torch
    from torchvision import transforms as T
    from torchvision.io import ImageReadMode, decode_jpeg
    from torchvision.transforms.v2 import functional as F

    from carcrawl.classify import ClassifySettings, load_classifier

    results: list[dict[str, Any]] = []
    base = {"model": args.model, "weights": weights if args.model == "resnet50" else None, "device": args.device,
            "batch_size": batch}
    classifiers = {"pillow": load_classifier(ClassifySettings(decoder="pillow", **base))}  # type: ignore[arg-type]
    if dali_ok:
        classifiers["dali-gpu"] = load_classifier(ClassifySettings(decoder="dali", **base))  # type: ignore[arg-type]
    net = classifiers["pillow"].network
    if args.compile:
        net.compile()
    geometry = net.geometry
    items = [(str(i), b) for i, b in enumerate(workload)]
    batches = [items[i : i + batch] for i in range(0, len(items), batch)]
    jpeg_batches = [jpegs[i : i + batch] for i in range(0, len(jpegs), batch)]
    naive_tf = T.Compose([T.Resize(geometry.resize), T.CenterCrop(geometry.size), T.ToTensor(),
                          T.Normalize([0.485, 0.456, 0.406], [0.229, 0.224, 0.225])])
    synthetic = torch.randint(0, 255, (batch, geometry.size, geometry.size, 3), dtype=torch.uint8, device="cuda")

    def sync() -> None:
        torch.cuda.synchronize()

    def model_only() -> int:
        for _ in batches:
            net.forward(synthetic)
        sync()
        return len(batches) * batch

    def tv_decode(blobs: list[bytes]) -> Any:
        data = [torch.frombuffer(bytearray(b), dtype=torch.uint8) for b in blobs]
        images = decode_jpeg(data, mode=ImageReadMode.RGB, device="cuda")
        out = []
        for im in images:
            im = F.resize(im, [geometry.resize], antialias=True)
            out.append(F.center_crop(im, [geometry.size, geometry.size]))
        return torch.stack(out).permute(0, 2, 3, 1)  # N x H x W x 3 uint8, like the decoders

    def decode_tv() -> int:
        for b in jpeg_batches:
            tv_decode(b)
        sync()
        return len(jpegs)

    def classify_tv() -> int:
        for b in jpeg_batches:
            logits, _ = net.forward(tv_decode(b))
            logits.argmax(1).cpu()
        return len(jpegs)

    def decode_with(clf: Any) -> Callable[[], int]:
        def run() -> int:
            for b in batches:
                clf._decoder.decode([body for _, body in b])
            sync()
            return len(workload)

        return run

    def classify_with(clf: Any) -> Callable[[], int]:
        def run() -> int:
            for _ in clf.classify_batches(batches):
                pass
            return len(workload)

        return run

    def classify_naive() -> int:
        from io import BytesIO

        from PIL import Image

        with torch.inference_mode():
            for b in workload[: args.naive_images]:
                with Image.open(BytesIO(b)) as im:
                    x = naive_tf(im.convert("RGB")).unsqueeze(0).cuda()
                net.head(net.body(x)).argmax(1).cpu()
        return min(len(workload), args.naive_images)

    modes: dict[str, Callable[[], int]] = {"model only (uint8 on GPU, fp16)": model_only}
    for clf in classifiers.values():
        modes[f"decode carcrawl {clf.decoder}"] = decode_with(clf)
    modes["decode torchvision-gpu (JPEG only)"] = decode_tv
    for clf in classifiers.values():
        modes[f"classify carcrawl {clf.decoder}"] = classify_with(clf)
    modes["classify torchvision-gpu decode + same net (JPEG only)"] = classify_tv
    modes["classify naive (per image, fp32)"] = classify_naive

    for f in modes.values():  # warm-up (cuDNN autotune, nvJPEG buffers, allocator)
        f()
    rates: dict[str, list[float]] = {m: [] for m in modes}
    for _ in range(args.rounds):
        for mode, f in modes.items():
            sync()
            started = time.perf_counter()
            count = f()
            sync()
            rates[mode].append(count / (time.perf_counter() - started))
    naive = statistics.median(rates["classify naive (per image, fp32)"])
    print(f"\nbatch {batch}")
    print(f"{'mode':<58} {'images/s':>9} {'x naive':>8}")
    for mode, v in rates.items():
        med = statistics.median(v)
        results.append({"batch": batch, "mode": mode, "images_per_s": round(med, 1),
                        "vs_naive_classify": round(med / naive, 2)})
        print(f"{mode:<58} {med:9.1f} {med / naive:8.2f}", flush=True)
    for clf in classifiers.values():
        clf.close()

    return results


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--images", type=Path, default=SHARED_IMAGES if SHARED_IMAGES.exists() else SHIPPED_PHOTOS)
    ap.add_argument("--images-per-pass", type=int, default=2048)
    ap.add_argument("--batches", default="64,128,256")
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--naive-images", type=int, default=256, help="images per naive pass (it is slow)")
    ap.add_argument("--compile", action="store_true", help="torch.compile the network body (slow start)")
    ap.add_argument("--device", default="cuda:0", help="the GPU to measure (cuda:N)")
    ap.add_argument("--model", default="resnet50", help="resnet50 (random weights when none are cached) or efficientnet_lite0")
    args = ap.parse_args()

    import torch
    import torchvision

    from carcrawl.classify.dali import dali_import_error

    if not torch.cuda.is_available():
        raise SystemExit("classify_gpu.py needs a CUDA GPU (torch.cuda.is_available() is False)")
    torch.cuda.set_device(torch.device(args.device))  # "cuda" below (synthetic input, torchvision) = that GPU
    photos = load_photos(args.images)
    if not photos:
        raise SystemExit(f"no photos under {args.images}")
    workload = (photos * (args.images_per_pass // len(photos) + 1))[: args.images_per_pass]
    jpegs = [b for b in workload if b[:3] == b"\xff\xd8\xff"]
    gpu = torch.cuda.get_device_name()
    tmp = Path(tempfile.mkdtemp())
    weights, weights_note = resnet_weights(tmp)
    dali_ok = dali_import_error() is None
    print(f"{gpu}; torch {torch.__version__}, torchvision {torchvision.__version__}; DALI: "
          f"{'yes' if dali_ok else 'not installed'}; {len(photos)} photos from {args.images} -> "
          f"{len(workload)} per pass ({len(jpegs)} JPEG); ResNet-50 weights: {weights_note}", flush=True)

    results: list[dict[str, Any]] = []
    for batch in [int(b) for b in args.batches.split(",")]:
        results += run_batch(batch, args, workload, jpegs, weights, dali_ok)

    out = write_result("classify_gpu", {"command": "benchmarks/classify_gpu.py " + " ".join(sys.argv[1:]),
                                        "gpu": gpu, "torch": torch.__version__, "dali": dali_ok,
                                        "photos": len(photos), "images_per_pass": len(workload),
                                        "weights": weights_note, "results": results})
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
