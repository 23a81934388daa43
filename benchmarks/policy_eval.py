"""Which vehicle policy holds on real photos? Precision/recall/F1 of "vehicle" vs the rest.

Classifies every photo in ../shared/images (SOURCES.csv gives each file's class: vehicle,
interior, other) once with the offline model, caches the softmax vectors under
benchmarks/_work/, then applies every candidate policy to them (pure Python, milliseconds):
topk k=4 (the seed project's rule) and other k, top1, mass and mass_raw at several thresholds.

    .venv/bin/python benchmarks/policy_eval.py [--images DIR] [--model efficientnet_lite0] [--fresh]

Prints a table, writes benchmarks/results/policy_eval.json.
"""

from __future__ import annotations

import argparse
import csv
import hashlib
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from benchmarks._common import WORK, write_result  # noqa: E402
from carcrawl.classify import ClassifySettings, load_classifier  # noqa: E402
from carcrawl.classify.policy import decide  # noqa: E402

DEFAULT_IMAGES = Path(__file__).resolve().parents[2] / "shared" / "images"
CANDIDATES: list[tuple[str, dict[str, Any]]] = [
    ("topk", {"top_k": 4}),
    ("topk", {"top_k": 3}),
    ("topk", {"top_k": 2}),
    ("top1", {}),
    *[("mass", {"threshold": t}) for t in (0.2, 0.3, 0.4, 0.5, 0.6, 0.7)],
    *[("mass_raw", {"threshold": t}) for t in (0.2, 0.3, 0.4, 0.5, 0.6, 0.7)],
]


def read_sources(images: Path) -> list[tuple[str, str]]:
    """(relative path, class) for every photo listed in SOURCES.csv."""
    with open(images / "SOURCES.csv", newline="", encoding="utf-8") as f:
        return [(f"{row['folder']}/{row['file']}", row["folder"]) for row in csv.DictReader(f)]


def probabilities(images: Path, files: list[str], model: str, fresh: bool) -> tuple[np.ndarray, str, float]:
    """Softmax vectors (N x 1000) of ``files``, cached by model and file contents."""
    digest = hashlib.sha256(model.encode())
    blobs = []
    for rel in files:
        data = (images / rel).read_bytes()
        blobs.append((rel, data))
        digest.update(rel.encode() + hashlib.sha256(data).digest())
    cache = WORK / f"policy_probs_{digest.hexdigest()[:16]}.npz"
    if cache.exists() and not fresh:
        z = np.load(cache)
        return z["probs"], str(z["model"]), 0.0
    clf = load_classifier(ClassifySettings(model=model, device="cpu", decoder="pillow", embeddings=False))
    started = time.perf_counter()
    probs = np.zeros((len(files), 1000), dtype=np.float32)
    for start in range(0, len(blobs), 32):
        batch, p = clf.probabilities([data for _, data in blobs[start : start + 32]])
        for j, row in enumerate(batch.rows):
            probs[start + row] = p[j]
        for row, error in enumerate(batch.errors):
            if error:
                raise SystemExit(f"{files[start + row]}: {error}")
    seconds = time.perf_counter() - started
    WORK.mkdir(parents=True, exist_ok=True)
    np.savez_compressed(cache, probs=probs, model=np.array(clf.describe()))
    return probs, clf.describe(), seconds


def evaluate(probs: np.ndarray, truth: list[bool], policy: str, **kw: Any) -> dict[str, Any]:
    kept = [decide(p, policy, **kw).keep for p in probs]
    tp = sum(k and t for k, t in zip(kept, truth, strict=True))
    fp = sum(k and not t for k, t in zip(kept, truth, strict=True))
    fn = sum(t and not k for k, t in zip(kept, truth, strict=True))
    precision = tp / (tp + fp) if tp + fp else 0.0
    recall = tp / (tp + fn) if tp + fn else 0.0
    f1 = 2 * precision * recall / (precision + recall) if precision + recall else 0.0
    return {"tp": tp, "fp": fp, "fn": fn, "precision": precision, "recall": recall, "f1": f1, "kept": kept}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--images", type=Path, default=DEFAULT_IMAGES)
    ap.add_argument("--model", default="efficientnet_lite0")
    ap.add_argument("--fresh", action="store_true", help="ignore the cached probabilities")
    args = ap.parse_args()

    sources = read_sources(args.images)
    files = [rel for rel, _ in sources]
    classes = [cls for _, cls in sources]
    truth = [cls == "vehicle" for cls in classes]
    probs, described, seconds = probabilities(args.images, files, args.model, args.fresh)
    print(f"{len(files)} photos ({sum(truth)} vehicle, {classes.count('interior')} interior, "
          f"{classes.count('other')} other); model: {described}" + (f"; classified in {seconds:.1f} s" if seconds else " (cached)"))

    rows = []
    for policy, kw in CANDIDATES:
        r = evaluate(probs, truth, policy, **kw)
        label = policy + "".join(f" {k.replace('top_k', 'k')}={v}" for k, v in kw.items())
        interiors_kept = sum(k for k, c in zip(r["kept"], classes, strict=True) if c == "interior")
        rows.append({"policy": label, **{k: v for k, v in r.items() if k != "kept"}, "interior_kept": interiors_kept,
                     "false_keeps": [f for f, k, t in zip(files, r["kept"], truth, strict=True) if k and not t],
                     "misses": [f for f, k, t in zip(files, r["kept"], truth, strict=True) if t and not k]})

    print(f"\n{'policy':<22} {'prec':>6} {'recall':>6} {'F1':>6} {'TP':>4} {'FP':>4} {'FN':>4} {'interior kept':>14}")
    for r in rows:
        print(f"{r['policy']:<22} {r['precision']:6.3f} {r['recall']:6.3f} {r['f1']:6.3f} {r['tp']:4d} {r['fp']:4d} "
              f"{r['fn']:4d} {r['interior_kept']:>14}")
    # The default: the most precise policy within 0.01 F1 of the best (a wrong keep pollutes the
    # dataset; a miss costs one photo of a car the crawl will see many more of).
    top_f1 = max(r["f1"] for r in rows)
    best = max((r for r in rows if r["f1"] >= top_f1 - 0.01), key=lambda r: (r["precision"], r["f1"]))
    print(f"\nbest F1 {top_f1:.3f}; chosen (most precise within 0.01 F1): {best['policy']}")
    print("  kept but not vehicle:", ", ".join(best["false_keeps"]) or "-")
    print("  vehicle missed:", ", ".join(best["misses"]) or "-")
    path = write_result("policy_eval", {"command": "benchmarks/policy_eval.py", "model": described,
                                        "photos": len(files), "vehicle": sum(truth), "rows": rows, "best": best["policy"]})
    print(f"wrote {path}")


if __name__ == "__main__":
    main()
