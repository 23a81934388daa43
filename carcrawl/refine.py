"""``carcrawl refine``: a small probe trained on the reviewer's marks.

scikit-learn's ``LogisticRegression`` (L2, classes weighted equally because marks are often
lopsided, on standardised features) learns "right" vs "wrong" from the stored classifier
embeddings of the marked images, reports its stratified k-fold cross-validated accuracy (near
duplicates of one another stay in one fold, so a copy never scores its twin), and scores every
image that has an embedding from the same model. Embeddings are read in pages as float32, so
memory does not grow with the crawl. The scores go into the checkpoint; ``carcrawl export
--refined`` lets them decide (>= 0.5 kept) instead of the classifier's verdicts, and reviewer marks
still win over both.
"""

from __future__ import annotations

import itertools
import json
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from carcrawl.errors import CarcrawlError
from carcrawl.store.dataset import DatasetDB

MIN_PER_CLASS = 3
C = 1.0  # inverse L2 strength on standardised features (sklearn's default)
PAGE = 4096  # embeddings scored per step


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


def _probe() -> Any:
    from sklearn.linear_model import LogisticRegression
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    return make_pipeline(StandardScaler(), LogisticRegression(C=C, class_weight="balanced", max_iter=2000))


def _vectors(rows: list[tuple[str, bytes, str]]) -> np.ndarray:
    return np.stack([np.frombuffer(emb, dtype="<f2") for _s, emb, _m in rows]).astype(np.float32)


def cross_validate(x: np.ndarray, y: np.ndarray, groups: np.ndarray, folds: int, seed: int = 0) -> float:
    """Stratified k-fold accuracy, each group (near-duplicate cluster) inside one fold; the
    standardisation is fitted on each training fold only (it is part of the pipeline)."""
    from sklearn.model_selection import StratifiedGroupKFold, cross_val_score

    cv = StratifiedGroupKFold(n_splits=folds, shuffle=True, random_state=seed)
    return float(cross_val_score(_probe(), x, y, groups=groups, cv=cv, scoring="accuracy").mean())


def refine(target: str | Path) -> RefineResult:
    with DatasetDB.open(target) as db:
        marks = db.reviews()
        marked_rows = sorted(db.embeddings(marks))
        if not marked_rows and next(db.embeddings(), None) is None:
            raise CarcrawlError(f"{db.path}: no stored embeddings (was the crawl classified?); nothing to train on")
        # the probe speaks the embedding of the model most marked images were judged by
        kinds = Counter((model, len(emb)) for _s, emb, model in marked_rows)
        model, size = max(kinds, key=lambda k: (kinds[k], k)) if kinds else ("", 0)
        marked_rows = [r for r in marked_rows if (r[2], len(r[1])) == (model, size)]
        y = np.array([1 if marks[s] == "right" else 0 for s, _e, _m in marked_rows])
        right, wrong = int(y.sum()), int(len(y) - y.sum())
        if right < MIN_PER_CLASS or wrong < MIN_PER_CLASS:
            raise CarcrawlError(
                f"refine needs at least {MIN_PER_CLASS} 'right' and {MIN_PER_CLASS} 'wrong' marks on images with "
                f"embeddings; have {right} right and {wrong} wrong. Mark more in the report "
                "(`carcrawl report`), save, and `carcrawl review import marks.json`."
            )
        x = _vectors(marked_rows)
        shas = [s for s, _e, _m in marked_rows]
        clusters = db.clusters_of(shas)
        groups = np.array([clusters.get(s, s) for s in shas])
        folds = min(5, right, wrong)
        cv = cross_validate(x, y, groups, folds)
        probe = _probe().fit(x, y)
        scores: list[tuple[str, float]] = []
        rows = db.embeddings()
        while raw := list(itertools.islice(rows, PAGE)):
            page = [r for r in raw if (r[2], len(r[1])) == (model, size)]
            if page:
                p = probe.predict_proba(_vectors(page))[:, list(probe.classes_).index(1)]
                scores += zip((s for s, _e, _m in page), p.tolist(), strict=True)
        note = json.dumps({"model": model, "marks": len(y), "cv_accuracy": round(cv, 4), "folds": folds})
        db.save_refined(scores, note)
        db.set_meta("refine.probe", note)
    return RefineResult(
        marks=len(y), right=right, wrong=wrong, folds=folds, cv_accuracy=cv, baseline_accuracy=max(right, wrong) / len(y),
        scored=len(scores), kept=sum(1 for _s, v in scores if v >= 0.5), model=model,
    )
