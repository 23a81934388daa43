"""The exterior head: a small multinomial logistic regression on a backbone's embedding.

It answers what the ImageNet classes cannot: is this a photo *of a vehicle's exterior*, an
interior, a close-up of a part, or something else? ImageNet has no "car interior" class (cabins
come out as "convertible" or "minivan") and calls spoilers "sports car". The head is trained by
``scripts/train_head.py`` on hand-labelled photos kept outside the project and ships as numbers
only: ``carcrawl/data/heads/<model>.npz`` (a few KB: float16 weights with the standardisation
folded in, the class names, the features it expects). One file per backbone, because an
embedding means nothing to another network; a backbone without a file falls back to the ImageNet
``mass`` policy, and the classifier says so.

Features (``features()``): the embedding, plus the log of the ImageNet vehicle and part
probability mass (the backbone's own evidence, learned on 1.2M images).

Pure numpy: no torch, so policies can be re-applied to stored numbers cheaply.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np

from carcrawl.classify.policy import PART_CLASSES, VEHICLE_CLASSES

CLASSES = ("exterior", "interior", "detail", "other")
HEADS = Path(__file__).resolve().parents[1] / "data" / "heads"
_VEHICLE = np.array(sorted(VEHICLE_CLASSES))
_PARTS = np.array(sorted(PART_CLASSES))


def evidence(imagenet_probs: np.ndarray) -> np.ndarray:
    """N x 2: log ImageNet vehicle mass and log part mass (the policy's evidence, as features)."""
    p = np.asarray(imagenet_probs, dtype=np.float32)
    vehicle = p[:, _VEHICLE].sum(1)
    parts = p[:, _PARTS].sum(1)
    return np.log(np.stack([vehicle, parts], axis=1) + 1e-4).astype(np.float32)


def features(embeddings: np.ndarray, imagenet_probs: np.ndarray) -> np.ndarray:
    """The head's input: N x (d + 2) float32."""
    return np.concatenate([np.asarray(embeddings, dtype=np.float32), evidence(imagenet_probs)], axis=1)


@dataclass(frozen=True, slots=True)
class ExteriorHead:
    """``weights`` (classes x features) and ``bias`` act on raw ``features()`` (standardisation
    folded in); ``classes[0]`` is exterior."""

    model: str
    classes: tuple[str, ...]
    weights: np.ndarray
    bias: np.ndarray
    trained_on: str  # what it was fitted on, for describe()

    def probabilities(self, embeddings: np.ndarray, imagenet_probs: np.ndarray) -> np.ndarray:
        """N x len(classes) softmax probabilities."""
        z = features(embeddings, imagenet_probs) @ self.weights.T.astype(np.float32) + self.bias.astype(np.float32)
        z -= z.max(axis=1, keepdims=True)
        e = np.exp(z)
        return e / e.sum(axis=1, keepdims=True)

    def save(self, path: Path) -> None:
        path.parent.mkdir(parents=True, exist_ok=True)
        with open(path, "wb") as f:
            np.savez_compressed(
                f, model=np.array(self.model), classes=np.array(self.classes), weights=self.weights.astype(np.float16),
                bias=self.bias.astype(np.float32), trained_on=np.array(self.trained_on),
            )


def head_path(model: str) -> Path:
    return HEADS / f"{model}.npz"


def load_head(model: str, feature_dim: int, path: Path | None = None) -> ExteriorHead | None:
    """The shipped head of ``model`` (or the file at ``path``), or None when there is none.
    A file for another backbone or embedding size is refused with a clear error."""
    path = path or head_path(model)
    if not path.is_file():
        return None
    try:
        with np.load(path, allow_pickle=False) as z:
            head = ExteriorHead(
                model=str(z["model"]), classes=tuple(str(c) for c in z["classes"]),
                weights=z["weights"].astype(np.float32), bias=z["bias"].astype(np.float32),
                trained_on=str(z["trained_on"]),
            )
    except Exception as e:
        raise ValueError(f"{path}: not an exterior head file ({type(e).__name__}: {e})") from e
    if head.model != model or head.weights.shape[1] != feature_dim + 2 or head.classes[0] != "exterior":
        raise ValueError(
            f"{path}: a head for {head.model} ({head.weights.shape[1] - 2}-d embeddings), not for {model} "
            f"({feature_dim}-d); retrain it with scripts/train_head.py --model {model}"
        )
    return head
