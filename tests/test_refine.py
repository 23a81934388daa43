"""The probe trained on reviewer marks: cross-validated accuracy, scores for every image, and
``export --refined`` letting them decide (marks still win).

The embeddings are stand-ins, not a network's: the colour histogram of the photo (see
``pixel_embedding``) plus, in the first two values, a direction that says vehicle (+) or not (-)
with noise. A working probe must find that direction; a broken one cannot."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import numpy as np
import pytest
from test_export_helpers import Shot, build_crawl, other_photos, pixel_embedding, vehicle_photos

from carcrawl.errors import CarcrawlError
from carcrawl.export import export
from carcrawl.models import Labels
from carcrawl.refine import refine
from carcrawl.review import import_marks

pytestmark = pytest.mark.usefixtures("shared")


def sha(body: bytes) -> str:
    return hashlib.sha256(body).hexdigest()


def embedding(body: bytes, vehicle: bool, rng: np.random.Generator) -> bytes:
    v = np.frombuffer(pixel_embedding(body), dtype="<f2").astype(np.float32).copy()
    v[:2] = (0.05 if vehicle else -0.05) + rng.normal(0, 0.03, 2)
    return v.astype("<f2").tobytes()


def test_refine_learns_from_marks_and_rescores_everything(tmp_path: Path) -> None:
    rng = np.random.default_rng(0)
    vehicles = [p.read_bytes() for p in vehicle_photos(30)]
    others = [p.read_bytes() for p in other_photos(20)]
    # the classifier kept everything, wrongly: the probe has to learn better from a few marks
    shots = [Shot(f"http://v.example/{i}.jpg", Labels("ford", "mustang"), b, embedding=embedding(b, True, rng))
             for i, b in enumerate(vehicles)]
    shots += [Shot(f"http://o.example/{i}.jpg", Labels("ford", "mustang"), b, embedding=embedding(b, False, rng))
              for i, b in enumerate(others)]
    out = tmp_path / "out"
    build_crawl(out, shots)
    with pytest.raises(CarcrawlError, match="at least 3 'right' and 3 'wrong'"):
        refine(out)
    marks = {sha(b): "right" for b in vehicles[:12]} | {sha(b): "wrong" for b in others[:10]}
    (tmp_path / "marks.json").write_text(json.dumps({"marks": marks}))
    import_marks(out, tmp_path / "marks.json")

    result = refine(out)
    assert result.marks == 22 and result.folds == 5 and result.scored == 50
    # 22 marks in 5 folds: one error moves a fold by ~0.2, so the fold draw alone moves the mean
    # between ~0.8 and ~0.95; what matters is far above the majority answer (0.55)
    assert result.cv_accuracy >= 0.8 and result.cv_accuracy >= result.baseline_accuracy + 0.25, result
    assert "cross-validated accuracy" in str(result)

    plain = export(out, "parquet", tmp_path / "plain")
    refined = export(out, "parquet", tmp_path / "refined", refined=True)
    assert plain.images == 40  # everything the classifier kept, minus the 10 marked wrong
    import pyarrow.parquet as pq

    rows = pq.read_table(tmp_path / "refined" / "manifest.parquet").to_pylist()
    unmarked = [r for r in rows if r["review_mark"] is None]
    correct = sum(r["in_dataset"] == (r["sha256"] in {sha(b) for b in vehicles}) for r in unmarked)
    assert correct / len(unmarked) >= 0.85  # the probe sorts the unreviewed images
    assert all(r["refined_score"] is not None for r in rows)
    assert all(r["in_dataset"] for r in rows if r["review_mark"] == "right")  # marks still win
    assert refined.images < plain.images
