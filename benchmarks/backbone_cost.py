"""CPU cost per image of each offline backbone, and of the exterior head on top.

The carcrawl classifier end to end (Pillow decode, network, policy, verdicts, embeddings) on every
photo of ../shared/images, modes alternating inside each round (a shared machine slows them alike),
median of ``--rounds``: images/s and images per CPU-second of this process. ``lite0 policy mass``
vs ``lite0 policy head`` is what the head costs; lite1/lite2 vs lite0 what a bigger backbone costs.

    .venv/bin/python benchmarks/backbone_cost.py [--rounds 3] [--models efficientnet_lite0,...]

Writes benchmarks/results/backbone_cost.json.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from benchmarks._common import write_result  # noqa: E402
from benchmarks.classify_cpu import DEFAULT_IMAGES, load_photos  # noqa: E402


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--images", type=Path, default=DEFAULT_IMAGES)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--batch", type=int, default=32)
    ap.add_argument("--models", default="efficientnet_lite0,efficientnet_lite1,efficientnet_lite2")
    args = ap.parse_args()

    from carcrawl.classify import ClassifySettings, load_classifier

    photos, _ = load_photos(args.images)
    items = [(str(i), b) for i, b in enumerate(photos)]
    batches = [items[i : i + args.batch] for i in range(0, len(items), args.batch)]
    modes = {}
    for model in args.models.split(","):
        policies = ("mass", "head") if model == "efficientnet_lite0" else ("head",)
        for policy in policies:
            s = ClassifySettings(model=model, device="cpu", decoder="pillow", batch_size=args.batch, policy=policy)
            modes[f"{model} policy {policy}"] = load_classifier(s)
    for clf in modes.values():  # warm-up
        list(clf.classify_batches(batches[:2]))
    rates: dict[str, list[float]] = {m: [] for m in modes}
    per_cpu: dict[str, list[float]] = {m: [] for m in modes}
    for r in range(args.rounds):
        for mode, clf in modes.items():
            started, cpu = time.perf_counter(), time.process_time()
            for _ in clf.classify_batches(batches):
                pass
            rates[mode].append(len(items) / (time.perf_counter() - started))
            per_cpu[mode].append(len(items) / (time.process_time() - cpu))
        print(f"round {r + 1}/{args.rounds} done", file=sys.stderr)
    base = statistics.median(per_cpu[next(iter(modes))])
    table = []
    print(f"\n{len(items)} photos, batch {args.batch}, {modes[next(iter(modes))].describe()}")
    print(f"{'mode':<36} {'images/s':>9} {'img/CPU-s':>10} {'CPU cost x lite0 mass':>22}")
    for mode in modes:
        v, c = statistics.median(rates[mode]), statistics.median(per_cpu[mode])
        table.append({"mode": mode, "images_per_s": round(v, 1), "images_per_cpu_second": round(c, 1),
                      "cpu_cost_vs_first": round(base / c, 2), "all_rounds_per_cpu_s": [round(x, 1) for x in per_cpu[mode]]})
        print(f"{mode:<36} {v:9.1f} {c:10.1f} {base / c:22.2f}")
    out = write_result("backbone_cost", {"command": "benchmarks/backbone_cost.py " + " ".join(sys.argv[1:]),
                                         "photos": len(items), "rounds": args.rounds, "table": table})
    print(f"wrote {out}")
    for clf in modes.values():
        clf.close()


if __name__ == "__main__":
    main()
