"""The vehicle policy: which ImageNet predictions make an image a keeper.

Index-based on purpose: class names differ between label files (torchvision's short names vs the
WordNet synonym lists), the 1000 indices do not. Pure Python (no torch, no numpy needed), so the
policy can be evaluated, tested and re-applied to stored predictions cheaply.

Policies (``ClassifySettings.policy``):

- ``topk``: the seed project's rule, a vehicle class anywhere in the top ``k`` (k=4). High recall,
  but it keeps dashcam frames, traffic scenes and interiors whose 3rd/4th guess is "cab".
- ``top1``: the top-1 class is a vehicle class.
- ``mass``: the summed probability of all vehicle classes is at least ``threshold`` *and* exceeds
  the summed probability of the part/interior classes (negative evidence: a close-up of a wheel,
  grille, mirror, seat belt or dashboard is not a picture of the car).
- ``mass_raw``: ``mass`` without the part check (kept to show what the negative evidence buys).
- ``head`` (the default): the exterior head (``head.py``), trained on hand-labelled exteriors,
  interiors and close-ups, decides from the embedding plus the vehicle/part mass; p(exterior) >=
  ``threshold`` keeps. Backbones without a head file fall back to ``mass``.

Reasons say what the image is: kept ``vehicle:<class>``; rejected ``interior``, ``vehicle_detail``
(a close-up of a part) or ``not_vehicle:<top ImageNet class>``.

``benchmarks/policy_eval.py`` and ``scripts/train_head.py`` measure them on the real photos.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from functools import cache
from pathlib import Path

# Road vehicles whose photo is a picture of "a car/van/bus/truck": the things the dataset is about.
VEHICLE_CLASSES: dict[int, str] = {
    407: "ambulance",
    436: "beach wagon",  # station wagon / estate car
    468: "cab",
    511: "convertible",
    555: "fire engine",
    569: "garbage truck",
    609: "jeep",
    627: "limousine",
    654: "minibus",
    656: "minivan",
    661: "Model T",
    675: "moving van",
    717: "pickup",
    734: "police van",
    751: "racer",  # race car
    757: "recreational vehicle",
    779: "school bus",
    817: "sports car",
    864: "tow truck",
    867: "trailer truck",
    874: "trolleybus",
}
"""Deliberately left out: go-kart (573) and golfcart (575) are not road cars and soak up dashcam
frames; passenger car (705) is a railway carriage; streetcar (829), half track (586), tank (847),
tractor (866), forklift (561), snowplow (803), amphibian (408), moped/scooter are not the subject
of a car dataset."""

# Parts and interior details: strong evidence of a close-up rather than a vehicle photo.
PART_CLASSES: dict[int, str] = {
    475: "car mirror",
    479: "car wheel",
    535: "disk brake",
    581: "grille",
    685: "odometer",
    785: "seat belt",
}
# The part classes seen from inside the car: their reason is ``interior``, the others' ``vehicle_detail``.
INTERIOR_CLASSES = frozenset({685, 785})

POLICIES: tuple[str, ...] = ("head", "mass", "mass_raw", "top1", "topk")
HEAD_OVERRIDE_MASS = 0.8  # see decide_head; both chosen by scripts/train_head.py's cross-validation
CAR_RELATED_MASS = 0.5
INTERIOR = "interior"
VEHICLE_DETAIL = "vehicle_detail"


@cache
def imagenet_labels() -> tuple[str, ...]:
    """The 1000 ImageNet class names (torchvision's short names), index = class id."""
    path = Path(__file__).resolve().parents[1] / "data" / "imagenet_classes.txt"
    labels = tuple(line.strip() for line in path.read_text(encoding="utf-8").splitlines() if line.strip())
    if len(labels) != 1000:
        raise RuntimeError(f"{path} must list 1000 ImageNet classes, found {len(labels)}")
    return labels


@dataclass(frozen=True, slots=True)
class Decision:
    """What the policy says about one image: keep or not, and the reason string stored with it."""

    keep: bool
    reason: str


def _label(index: int) -> str:
    return imagenet_labels()[index]


def _top_of(probs: Sequence[float], classes: dict[int, str]) -> int:
    return max(classes, key=lambda i: probs[i])


def decide(
    probs: Sequence[float],
    policy: str = "mass",
    *,
    top_k: int = 4,
    threshold: float = 0.5,
    ranking: Sequence[int] | None = None,
) -> Decision:
    """Apply ``policy`` to one softmax vector (1000 floats). ``ranking`` (class ids, best first)
    may be passed when the caller already sorted; only its first ``top_k`` entries are used."""
    if len(probs) != 1000:
        raise ValueError(f"expected 1000 ImageNet probabilities, got {len(probs)}")
    if ranking is None or len(ranking) < max(top_k, 1):
        ranking = sorted(range(1000), key=lambda i: probs[i], reverse=True)[: max(top_k, 1)]
    top1 = ranking[0]

    def rejected() -> Decision:
        return _part_reason(top1) if top1 in PART_CLASSES else Decision(False, f"not_vehicle:{_label(top1)}")

    if policy == "top1":
        return Decision(True, f"vehicle:{_label(top1)}") if top1 in VEHICLE_CLASSES else rejected()
    if policy == "topk":
        for i in ranking[:top_k]:
            if i in VEHICLE_CLASSES:
                return Decision(True, f"vehicle:{_label(i)}")
        return rejected()
    if policy in ("mass", "mass_raw"):
        vehicle_mass = sum(probs[i] for i in VEHICLE_CLASSES)
        part_mass = sum(probs[i] for i in PART_CLASSES)
        if policy == "mass" and part_mass >= vehicle_mass and part_mass >= threshold * 0.5:
            return _part_reason(_top_of(probs, PART_CLASSES))
        if vehicle_mass >= threshold and (policy == "mass_raw" or vehicle_mass > part_mass):
            return Decision(True, f"vehicle:{_label(_top_of(probs, VEHICLE_CLASSES))}")
        return rejected()
    if policy == "head":
        raise ValueError("the head policy needs the head's probabilities: use decide_head()")
    raise ValueError(f"unknown vehicle policy {policy!r}; choose one of {', '.join(POLICIES)}")


def _part_reason(index: int) -> Decision:
    return Decision(False, INTERIOR if index in INTERIOR_CLASSES else VEHICLE_DETAIL)


def decide_head(
    head_probs: Sequence[float], classes: Sequence[str], probs: Sequence[float], threshold: float = 0.5,
    ranking: Sequence[int] | None = None,
) -> Decision:
    """The ``head`` policy for one image: ``head_probs`` over ``classes`` (exterior first) and the
    ImageNet softmax ``probs``. Kept when p(exterior) >= ``threshold``, or when the head's best
    other guess is "other" (not a car part or interior) while the ImageNet vehicle mass is at least
    ``HEAD_OVERRIDE_MASS``: a bus or an ambulance the head's car photos never showed it. A reject
    the head calls "other" while vehicle + part mass >= ``CAR_RELATED_MASS`` is named ``interior``
    or ``vehicle_detail`` (whichever the head finds likelier), not ``not_vehicle``."""
    best = max(range(1, len(classes)), key=lambda k: head_probs[k])
    vehicle_mass = sum(probs[i] for i in VEHICLE_CLASSES)
    if head_probs[0] >= threshold or (classes[best] == "other" and vehicle_mass >= HEAD_OVERRIDE_MASS):
        return Decision(True, f"vehicle:{_label(_top_of(probs, VEHICLE_CLASSES))}")
    if classes[best] == "other" and vehicle_mass + sum(probs[i] for i in PART_CLASSES) >= CAR_RELATED_MASS:
        # ImageNet sees a car (or its parts) that the head will not keep: an interior or a
        # close-up from a kind of photo the head never saw; name it by the likelier of the two
        best = max((k for k in range(1, len(classes)) if classes[k] in ("interior", "detail")), key=lambda k: head_probs[k])
    if classes[best] == "interior":
        return Decision(False, INTERIOR)
    if classes[best] == "detail":
        return Decision(False, VEHICLE_DETAIL)
    # what it is: the best ImageNet guess that is not a vehicle class (the head overrode those)
    ranked = list(ranking or ()) or sorted(range(1000), key=lambda i: probs[i], reverse=True)[:5]
    other = next((i for i in ranked if i not in VEHICLE_CLASSES), None)
    if other is None:
        other = max((i for i in range(1000) if i not in VEHICLE_CLASSES), key=lambda i: probs[i])
    return Decision(False, f"not_vehicle:{_label(other)}")
