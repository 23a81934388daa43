"""Classify images: decode (Pillow/Pillow-SIMD or DALI), an ImageNet network (ResNet-50 or the
offline EfficientNet-Lite0), and the vehicle policy, one call per batch.

Importing this package is cheap: torch, torchvision and DALI are imported when a classifier is
loaded, so ``import carcrawl.cli`` stays fast.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from carcrawl.classify.settings import ClassifySettings

if TYPE_CHECKING:
    from pathlib import Path

    from carcrawl.classify.classifier import Classifier

__all__ = ["ClassifySettings", "classify_paths", "load_classifier"]


def load_classifier(settings: ClassifySettings) -> Classifier:
    """Load the model and decoder ``settings`` ask for (see ``classifier.load_classifier``)."""
    from carcrawl.classify.classifier import load_classifier as _load

    return _load(settings)


def classify_paths(paths: list[str], settings: ClassifySettings, out_jsonl: Path) -> int:
    """``carcrawl classify``: one JSON line per input file; returns the number of lines."""
    from carcrawl.classify.files import classify_paths as _classify_paths

    return _classify_paths(paths, settings, out_jsonl)


def __getattr__(name: str) -> Any:
    if name == "Classifier":
        from carcrawl.classify.classifier import Classifier

        return Classifier
    raise AttributeError(name)
