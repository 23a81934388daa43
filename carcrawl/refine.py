"""``carcrawl refine``: a small probe trained on the reviewer's marks.

An L2-regularised logistic regression (numpy, full-batch gradient descent on standardised
features) learns "right" vs "wrong" from the stored classifier embeddings of the marked images,
reports its k-fold cross-validated accuracy, and scores every image that has an embedding. The
scores go into the checkpoint; ``carcrawl export --refined`` lets them decide (>= 0.5 kept)
instead of the classifier's verdicts, and reviewer marks still win over both.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from carcrawl.errors import CarcrawlError
from carcrawl.store.dataset import DatasetDB

MIN_PER_CLASS = 3
L2 = 1.0
STEPS = 400
LR = 0.5


@dataclass(frozen=True, slots=True)
class RefineResult:
    marks: int
    right: int
    wrong: int
    folds: int
    cv_accuracy: float
    baseline_accuracy: float  # always answering the majority mark
    scored: int
    kept: int
    model: str

    def __str__(self) -> str:
        return (f"probe trained on {self.marks} marks ({self.right} right, {self.wrong} wrong) from {self.model} "
                f"embeddings\n  {self.folds}-fold cross-validated accuracy {self.cv_accuracy:.1%} "
                f"(majority baseline {self.baseline_accuracy:.1%})\n"
                f"  re-scored {self.scored} images: {self.kept} at or above 0.5; "
                "use `carcrawl export --refined` to let these scores decide")


def _fit(x: np.ndarray, y: np.ndarray, l2: float = L2, steps: int = STEPS) -> tuple[np.ndarray, float]:
    """Logistic regression weights and bias; classes weighted equally (marks are often lopsided)."""
    n, d = x.shape
    w = np.zeros(d, dtype=np.float64)
    b = 0.0
    pos = max(1, int(y.sum()))
    neg = max(1, n - pos)
    sw = np.where(y > 0, n / (2 * pos), n / (2 * neg))
    for _ in range(steps):
        p = 1 / (1 + np.exp(-(x @ w + b)))
        g = sw * (p - y)
        w -= LR * (x.T @ g / n + l2 * w / n)
        b -= LR * float(g.mean())
    return w, b


def _predict(x: np.ndarray, w: np.ndarray, b: float) -> np.ndarray:
    return 1 / (1 + np.exp(-np.clip(x @ w + b, -50, 50)))


def _standardise(x: np.ndarray, mean: np.ndarray, std: np.ndarray) -> np.ndarray:
    return (x - mean) / std


def cross_validate(x: np.ndarray, y: np.ndarray, folds: int, seed: int = 0) -> float:
    """Stratified k-fold accuracy (standardisation fitted on each training fold only)."""
    rng = np.random.default_rng(seed)
    fold_of = np.empty(len(y), dtype=int)
    for cls in (0, 1):
        idx = np.flatnonzero(y == cls)
        rng.shuffle(idx)
        fold_of[idx] = np.arange(len(idx)) % folds
    correct = 0
    for k in range(folds):
        tr, te = fold_of != k, fold_of == k
        mean, std = x[tr].mean(0), x[tr].std(0) + 1e-6
        w, b = _fit(_standardise(x[tr], mean, std), y[tr])
        correct += int(((_predict(_standardise(x[te], mean, std), w, b) >= 0.5) == (y[te] > 0)).sum())
    return correct / len(y)


def refine(target: str | Path) -> RefineResult:
    with DatasetDB.open(target) as db:
        marks = db.reviews()
        rows = list(db.embeddings())
        if not rows:
            raise CarcrawlError(f"{db.path}: no stored embeddings (was the crawl classified?); nothing to train on")
        sizes: dict[tuple[str, int], int] = {}
        for _s, emb, model in rows:
            sizes[(model, len(emb))] = sizes.get((model, len(emb)), 0) + 1
        model, size = max(sizes, key=lambda k: (sizes[k], k))
        rows = [r for r in rows if r[2] == model and len(r[1]) == size]
        shas = [r[0] for r in rows]
        x_all = np.stack([np.frombuffer(r[1], dtype="<f2").astype(np.float64) for r in rows])
        index = {s: i for i, s in enumerate(shas)}
        marked = [(index[s], 1.0 if m == "right" else 0.0) for s, m in sorted(marks.items()) if s in index]
        y = np.array([m for _i, m in marked])
        right, wrong = int(y.sum()), int(len(y) - y.sum())
        if right < MIN_PER_CLASS or wrong < MIN_PER_CLASS:
            raise CarcrawlError(
                f"refine needs at least {MIN_PER_CLASS} 'right' and {MIN_PER_CLASS} 'wrong' marks on images with "
                f"embeddings; have {right} right and {wrong} wrong. Mark more in the report "
                "(`carcrawl report`), save, and `carcrawl review import marks.json`."
            )
        x = x_all[[i for i, _m in marked]]
        folds = min(5, right, wrong)
        cv = cross_validate(x, y, folds)
        mean, std = x.mean(0), x.std(0) + 1e-6
        w, b = _fit(_standardise(x, mean, std), y)
        scores = np.empty(len(shas))
        for start in range(0, len(shas), 4096):  # bounded memory on big crawls
            scores[start:start + 4096] = _predict(_standardise(x_all[start:start + 4096], mean, std), w, b)
        probe = json.dumps({"model": model, "marks": len(y), "cv_accuracy": round(cv, 4), "folds": folds})
        db.save_refined(list(zip(shas, scores.tolist(), strict=True)), probe)
        db.set_meta("refine.probe", probe)
    return RefineResult(
        marks=len(y), right=right, wrong=wrong, folds=folds, cv_accuracy=cv,
        baseline_accuracy=max(right, wrong) / len(y), scored=len(shas), kept=int((scores >= 0.5).sum()), model=model,
    )
