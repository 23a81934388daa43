"""Train and measure the exterior head of one backbone; write carcrawl/data/heads/<model>.npz.

Photos: ../shared/images2 (exterior / interior / detail / other) and ../shared/images (vehicle ->
exterior, interior, other), both kept outside the project; SOURCES.csv names each photo's source
repository. Only numbers leave this script: the head file (weights) and a results JSON.

Measurement: leave-one-source-out cross-validation (every source repository is scored by a head
fitted without any photo from it; the L2 strength C is picked inside each training fold by a
grouped inner CV), then the metrics per photo set and per class, next to today's ImageNet ``mass``
policy on the same photos. Embeddings and ImageNet probabilities are cached under
benchmarks/_work/ (``--fresh`` recomputes).

    .venv/bin/python scripts/train_head.py --model efficientnet_lite0 [--write] [--fresh]
"""

from __future__ import annotations

import argparse
import csv
import hashlib
import sys
import time
import warnings
from pathlib import Path
from typing import Any

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
from benchmarks._common import WORK, write_result  # noqa: E402
from carcrawl.classify import ClassifySettings, load_classifier  # noqa: E402
from carcrawl.classify.head import CLASSES, ExteriorHead, evidence, features, head_path, load_head  # noqa: E402
from carcrawl.classify.policy import (  # noqa: E402
    CAR_RELATED_MASS,
    HEAD_OVERRIDE_MASS,
    PART_CLASSES,
    VEHICLE_CLASSES,
    decide,
)

SHARED = ROOT.parent / "shared"
C_GRID = (0.01, 0.03, 0.1, 0.3)
OVERRIDE_MASS = HEAD_OVERRIDE_MASS  # "head + ImageNet": an "other" with this much vehicle mass is kept
FOLDER_CLASS = {"vehicle": "exterior", "exterior": "exterior", "interior": "interior", "detail": "detail", "other": "other"}


def photo_sets(images: Path, images2: Path) -> list[tuple[str, Path, str, str]]:
    """(set name, file, class, source repository) for every photo listed in the SOURCES.csv files."""
    out = []
    for name, folder in (("images2", images2), ("images", images)):
        with open(folder / "SOURCES.csv", newline="", encoding="utf-8") as f:
            for row in csv.DictReader(f):
                if "label" in row:  # images2: file = "<label>/<name>"
                    rel, label = row["file"], row["label"]
                else:  # images: file = "<name>", folder = label
                    rel, label = f"{row['folder']}/{row['file']}", row["folder"]
                out.append((name, folder / rel, FOLDER_CLASS[label], row["repo"]))
    return out


def embed(photos: list[tuple[str, Path, str, str]], model: str, fresh: bool) -> dict[str, Any]:
    """Embeddings (float32) and ImageNet softmax of every photo, cached by model and file contents."""
    digest = hashlib.sha256(model.encode())
    blobs = []
    for _s, path, _c, _g in photos:
        data = path.read_bytes()
        blobs.append(data)
        digest.update(path.name.encode() + hashlib.sha256(data).digest())
    cache = WORK / f"head_features_{model}_{digest.hexdigest()[:16]}.npz"
    if cache.exists() and not fresh:
        with np.load(cache) as z:
            return {k: z[k] for k in z.files}
    clf = load_classifier(ClassifySettings(model=model, device="cpu", decoder="pillow"))
    started, cpu = time.perf_counter(), time.process_time()
    emb = np.zeros((len(blobs), clf.network.feature_dim), dtype=np.float32)
    probs = np.zeros((len(blobs), 1000), dtype=np.float32)
    for start in range(0, len(blobs), 32):
        batch, p, e = clf.embed(blobs[start : start + 32])
        for row, error in enumerate(batch.errors):
            if error:
                raise SystemExit(f"{photos[start + row][1]}: {error}")
        for j, row in enumerate(batch.rows):
            probs[start + row], emb[start + row] = p[j], e[j]
    out = {"emb": emb, "probs": probs, "seconds": np.array(time.perf_counter() - started),
           "cpu_seconds": np.array(time.process_time() - cpu), "described": np.array(clf.describe())}
    clf.close()
    WORK.mkdir(parents=True, exist_ok=True)
    np.savez_compressed(cache, **out)
    return out


def fit(x: np.ndarray, y: np.ndarray, groups: np.ndarray, c: float | None = None) -> tuple[Any, float]:
    """Standardise + multinomial logistic regression, classes weighted equally; C by grouped
    inner CV (balanced accuracy) unless given."""
    from sklearn.linear_model import LogisticRegression
    from sklearn.model_selection import GroupKFold, cross_val_score
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    def make(cc: float) -> Any:
        return make_pipeline(StandardScaler(), LogisticRegression(C=cc, class_weight="balanced", max_iter=3000))

    if c is None:
        folds = min(5, len(set(groups.tolist())))
        scores = {cc: cross_val_score(make(cc), x, y, groups=groups, cv=GroupKFold(folds),
                                      scoring="balanced_accuracy").mean() for cc in C_GRID}
        c = max(C_GRID, key=lambda cc: (round(scores[cc], 4), -cc))  # ties: the stronger penalty
    return make(c).fit(x, y), c


def cross_validated(x: np.ndarray, y: np.ndarray, groups: np.ndarray) -> tuple[np.ndarray, list[float]]:
    """Out-of-source class probabilities: each source repository scored by a head fitted without it."""
    out = np.zeros((len(y), len(CLASSES)))
    chosen = []
    for g in sorted(set(groups.tolist())):
        test = groups == g
        model, c = fit(x[~test], y[~test], groups[~test])
        chosen.append(c)
        p = model.predict_proba(x[test])
        for j, cls in enumerate(model.classes_):
            out[test, cls] = p[:, j]
    return out, chosen


def scores(keep: np.ndarray, truth_class: np.ndarray, predicted: np.ndarray | None) -> dict[str, Any]:
    """Binary exterior-vs-rest numbers, and per class: how many, and how many handled right
    (exteriors kept, the rest rejected); with a 4-class prediction also its precision/recall."""
    ext = truth_class == 0
    tp, fp = int((keep & ext).sum()), int((keep & ~ext).sum())
    fn, tn = int((~keep & ext).sum()), int((~keep & ~ext).sum())
    r: dict[str, Any] = {"n": len(keep), "tp": tp, "fp": fp, "fn": fn, "tn": tn,
                         "accuracy": (tp + tn) / len(keep), "precision": tp / (tp + fp) if tp + fp else 0.0,
                         "recall": tp / (tp + fn) if tp + fn else 0.0, "per_class": {}}
    for k, name in enumerate(CLASSES):
        mask = truth_class == k
        if not mask.any():
            continue
        right = keep[mask] if k == 0 else ~keep[mask]
        row: dict[str, Any] = {"n": int(mask.sum()), "handled_right": int(right.sum())}
        if predicted is not None:
            hit = int(((predicted == k) & mask).sum())
            said = int((predicted == k).sum())
            row["precision"] = hit / said if said else 0.0
            row["recall"] = hit / int(mask.sum())
        r["per_class"][name] = row
    return r


def rule(head_p: np.ndarray, probs: np.ndarray, threshold: float) -> dict[str, Any]:
    """The shipped ``head`` policy (``policy.decide_head``) on out-of-sample head probabilities:
    keep, and the 4-class call (kept = exterior, else the head's best other class)."""
    vehicle_mass = probs[:, sorted(VEHICLE_CLASSES)].sum(1)
    part_mass = probs[:, sorted(PART_CLASSES)].sum(1)
    other_best = head_p[:, 1:].argmax(1) + 1
    said_other = other_best == CLASSES.index("other")
    keep = (head_p[:, 0] >= threshold) | (said_other & (vehicle_mass >= OVERRIDE_MASS))
    car_related = said_other & (vehicle_mass + part_mass >= CAR_RELATED_MASS)
    named = np.where(car_related, np.where(head_p[:, 1] >= head_p[:, 2], 1, 2), other_best)
    return {"keep": keep, "pred": np.where(keep, 0, named), "p": head_p}


def fold_standardisation(model: Any, name: str, trained_on: str) -> ExteriorHead:
    """One Linear layer on raw features: w' = w / sd, b' = b - w' . mean (classes in CLASSES order)."""
    scaler, lr = model[0], model[1]
    w = lr.coef_ / scaler.scale_
    b = lr.intercept_ - w @ scaler.mean_
    order = [list(lr.classes_).index(k) for k in range(len(CLASSES))]
    return ExteriorHead(name, CLASSES, w[order].astype(np.float32), b[order].astype(np.float32), trained_on)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default="efficientnet_lite0")
    ap.add_argument("--images", type=Path, default=SHARED / "images")
    ap.add_argument("--images2", type=Path, default=SHARED / "images2")
    ap.add_argument("--threshold", type=float, default=0.5, help="keep when p(exterior) >= this")
    ap.add_argument("--fresh", action="store_true", help="recompute the cached embeddings")
    ap.add_argument("--write", action="store_true", help="fit on every photo and write the head file")
    args = ap.parse_args()
    warnings.filterwarnings("ignore", category=UserWarning, module="sklearn")

    photos = photo_sets(args.images, args.images2)
    sets = np.array([p[0] for p in photos])
    y = np.array([CLASSES.index(p[2]) for p in photos])
    groups = np.array([p[3] for p in photos])
    data = embed(photos, args.model, args.fresh)
    probs = data["probs"]
    print(f"{len(photos)} photos, {len(set(groups.tolist()))} source repositories; {data['described']}; "
          f"embedded in {float(data['seconds']):.1f} s ({float(data['cpu_seconds']):.1f} CPU-s)")

    # (an "embedding only" head scored exactly like embedding + evidence with lite0: not repeated)
    variants = {"embedding + ImageNet evidence": features(data["emb"], probs), "ImageNet evidence only": evidence(probs)}
    mass_keep = np.array([decide(p, "mass", threshold=0.5).keep for p in probs])
    results: dict[str, Any] = {"mass t=0.5 (ImageNet policy, no training)": {"keep": mass_keep, "pred": None}}
    cv_cache = WORK / f"head_cv_{args.model}_{len(y)}.npz"
    for name, x in variants.items():
        started = time.perf_counter()
        key = name.split()[0]
        if cv_cache.exists() and not args.fresh and key in np.load(cv_cache).files:
            p, chosen = np.load(cv_cache)[key], []
        else:
            p, chosen = cross_validated(x, y, groups)
            saved = dict(np.load(cv_cache)) if cv_cache.exists() else {}
            np.savez(cv_cache, **{**saved, key: p})
        results[f"head: {name}"] = {"keep": p[:, 0] >= args.threshold, "pred": p.argmax(1), "p": p, "C": chosen}
        print(f"  cross-validated {name} in {time.perf_counter() - started:.0f} s (C chosen: {sorted(set(chosen))})")
    head_p = results["head: embedding + ImageNet evidence"]["p"]
    shipped_name = f"head + ImageNet (shipped: an 'other' with vehicle mass >= {OVERRIDE_MASS} kept)"
    results[shipped_name] = shipped = rule(head_p, probs, args.threshold)

    table: list[dict[str, Any]] = []
    print(f"\nleave-one-source-out, keep when p(exterior) >= {args.threshold}")
    print(f"{'method':<42} {'set':<8} {'acc':>6} {'prec':>6} {'recall':>6}  ext/int/det/oth handled right")
    for method, r in results.items():
        for set_name in ("images2", "images", "both"):
            m = np.ones(len(y), bool) if set_name == "both" else sets == set_name
            s = scores(r["keep"][m], y[m], None if r["pred"] is None else r["pred"][m])
            table.append({"method": method, "set": set_name, **s})
            per = " ".join(f"{v['handled_right']}/{v['n']}" for v in s["per_class"].values())
            print(f"{method:<42} {set_name:<8} {s['accuracy']:6.3f} {s['precision']:6.3f} {s['recall']:6.3f}  {per}")
    sweep = []
    for t in (0.3, 0.4, 0.5, 0.6, 0.7, 0.8):
        for set_name in ("images2", "images"):
            m = sets == set_name
            s = scores(rule(head_p, probs, t)["keep"][m], y[m], None)
            sweep.append({"threshold": t, "set": set_name, **{k: s[k] for k in ("accuracy", "precision", "recall", "fp", "fn")}})
    print("\nthreshold sweep (shipped rule): " + "; ".join(
        f"{r['set']} t={r['threshold']}: acc {r['accuracy']:.3f} prec {r['precision']:.3f} rec {r['recall']:.3f}" for r in sweep))
    wrong = [{"file": f"{photos[i][0]}/{photos[i][1].parent.name}/{photos[i][1].name}", "p_exterior": round(float(shipped["p"][i, 0]), 3),
              "predicted": CLASSES[int(shipped["pred"][i])]}
             for i in range(len(y)) if bool(shipped["keep"][i]) != (y[i] == 0)]
    print("\nwrong calls (shipped rule):\n  " + "\n  ".join(f"{w['file']} p_ext={w['p_exterior']} as {w['predicted']}" for w in wrong))

    out: dict[str, Any] = {"command": "scripts/train_head.py " + " ".join(sys.argv[1:]), "model": str(data["described"]),
                           "photos": len(photos), "sources": len(set(groups.tolist())),
                           "embed_seconds": float(data["seconds"]), "embed_cpu_seconds": float(data["cpu_seconds"]),
                           "threshold": args.threshold, "table": table, "sweep": sweep, "wrong": wrong}
    if args.write:
        x = variants["embedding + ImageNet evidence"]
        model, c = fit(x, y, groups)
        trained_on = f"{len(photos)} photos of {len(set(groups.tolist()))} sources, C={c}"
        head = fold_standardisation(model, args.model, trained_on)
        path = head_path(args.model)
        head.save(path)
        loaded = load_head(args.model, data["emb"].shape[1], path)  # float16 weights, as shipped
        assert loaded is not None
        check = loaded.probabilities(data["emb"], probs)
        gap = float(np.abs(check - model.predict_proba(x)[:, np.argsort(model.classes_)]).max())
        print(f"\nwrote {path.relative_to(ROOT)} ({path.stat().st_size} bytes, {trained_on}); "
              f"max |p(file) - p(sklearn)| = {gap:.2e}")
        out["written"] = {"path": str(path.relative_to(ROOT)), "bytes": path.stat().st_size, "C": c, "max_gap": gap}
    res = write_result(f"head_{args.model}", out)
    print(f"wrote {res.relative_to(ROOT)}")


if __name__ == "__main__":
    main()
