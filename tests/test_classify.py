"""The classifier end to end on real photos with the offline model (CPU, Pillow decoder), the
vehicle policy on probability vectors, and the errors a user can meet."""

from __future__ import annotations

import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
from helpers import ROOT, write_config
from test_classify_decode import png_claiming

from carcrawl.classify import ClassifySettings, load_classifier
from carcrawl.classify.head import CLASSES
from carcrawl.classify.policy import PART_CLASSES, VEHICLE_CLASSES, decide, decide_head
from carcrawl.classify.settings import parse_device
from carcrawl.config import load_settings
from carcrawl.errors import ConfigError, ModelUnavailableError
from carcrawl.models import Verdict

# Checked by hand and by benchmarks/policy_eval.py: vehicle mass > 0.85 / < 0.05 with the offline model.
VEHICLES = [
    "CarRecog__6_out.png",
    "CarRecog__03198.jpg",
    "grab_challenge__car2.jpg",
    "car_vs_ambulance__embulance2.jpg",
    "ANPR__t28.jpg",
    "VehicleClassification__ferrari.jpg",
]
OTHERS = [
    "darknet__dog.jpg",
    "skimage__coffee.png",
    "face_recognition__obama.jpg",
    "EasyOCR__english.png",
    "donut__bedroom_83.jpg",
    "ClassifyImages__night.evgeni-tcherkasski-Dz5yixbySoI-unsplash.jpg",
]


@pytest.fixture(scope="module")
def classifier() -> Iterator[object]:
    clf = load_classifier(ClassifySettings(model="efficientnet_lite0", device="cpu", decoder="pillow", batch_size=16))
    yield clf
    clf.close()


def items(folder: Path, names: list[str]) -> list[tuple[str, bytes]]:
    return [(name, (folder / name).read_bytes()) for name in names]


def test_describe_names_model_device_decoder(classifier: object) -> None:
    text = classifier.describe()  # type: ignore[attr-defined]
    assert text.startswith("efficientnet_lite0 (offline weights) on cpu, decoder pillow")
    assert "batch 16" in text and "policy head p(exterior) >= 0.5 (453 photos of 18 sources" in text
    assert (classifier.name, classifier.device) == ("efficientnet_lite0", "cpu")  # type: ignore[attr-defined]


def test_vehicles_kept_others_rejected(classifier: object, shared: Path) -> None:
    batch = items(shared / "images" / "vehicle", VEHICLES) + items(shared / "images" / "other", OTHERS)
    verdicts: list[Verdict] = classifier.classify(batch)  # type: ignore[attr-defined]
    assert [v.sha256 for v in verdicts] == [name for name, _ in batch]
    by_name = {v.sha256: v for v in verdicts}
    assert [n for n in VEHICLES if not by_name[n].keep] == []
    assert [n for n in OTHERS if by_name[n].keep] == []
    for n in VEHICLES:
        assert by_name[n].reason.startswith("vehicle:")
    for n in OTHERS:
        assert by_name[n].reason.startswith("not_vehicle:") or by_name[n].reason in ("interior", "vehicle_detail")
    v = by_name["darknet__dog.jpg"]
    assert len(v.top5) == 5 and v.top5[0].score >= v.top5[-1].score and v.model == "efficientnet_lite0"
    assert (v.width, v.height) == (768, 576)


def test_bad_images_get_reasons_and_the_rest_is_classified(classifier: object, shared: Path) -> None:
    good = items(shared / "images" / "vehicle", VEHICLES[:2])
    jpeg = good[1][1]
    batch = [
        good[0],
        ("truncated", jpeg[: len(jpeg) // 3]),
        ("bomb", png_claiming(50_000, 50_000)),
        ("html", b"<!doctype html><title>404</title>"),
        ("empty", b""),
        good[1],
    ]
    verdicts = classifier.classify(batch)  # type: ignore[attr-defined]
    assert [v.reason.split(":")[0] for v in verdicts] == [
        "vehicle", "decode_error", "too_many_pixels", "decode_error", "decode_error", "vehicle",
    ]
    assert verdicts[2].top5 == () and verdicts[2].embedding is None and not verdicts[2].keep


def test_embedding_is_float16_of_the_feature_dim(classifier: object, vehicle_jpeg: bytes) -> None:
    (v,) = classifier.classify([("a", vehicle_jpeg)])  # type: ignore[attr-defined]
    assert v.embedding is not None
    emb = np.frombuffer(v.embedding, dtype="<f2")
    assert emb.shape == (classifier.network.feature_dim,) == (1280,)  # type: ignore[attr-defined]
    assert np.isfinite(emb).all() and float(np.abs(emb).sum()) > 0


def test_empty_batch_and_batches_larger_than_batch_size(classifier: object, shared: Path) -> None:
    assert classifier.classify([]) == []  # type: ignore[attr-defined]
    many = items(shared / "images" / "other", OTHERS) * 3  # 18 > batch_size 16: two chunks, overlapped
    verdicts = classifier.classify(many)  # type: ignore[attr-defined]
    assert [v.sha256 for v in verdicts] == [n for n, _ in many]
    assert verdicts[0].top5 == verdicts[6].top5 == verdicts[12].top5


def _probs(**mass: float) -> list[float]:
    p = [0.0] * 1000
    for key, value in mass.items():
        p[int(key[1:])] = value
    return p


def test_policies_on_probability_vectors() -> None:
    sports_car, wheel, seat_belt, dog = 817, 479, 785, 207
    assert sports_car in VEHICLE_CLASSES and wheel in PART_CLASSES and seat_belt in PART_CLASSES
    car = _probs(c817=0.7, c479=0.1)
    close_up = _probs(c479=0.45, c785=0.2, c817=0.3)  # a wheel close-up with a car guess
    dash = _probs(c207=0.5, c817=0.1)  # a car 2nd: the seed rule keeps it
    assert decide(car, "mass", threshold=0.5).reason == "vehicle:sports car"
    assert decide(close_up, "mass", threshold=0.5).reason == "vehicle_detail"
    assert decide(_probs(c785=0.6, c817=0.2), "mass", threshold=0.5).reason == "interior"  # a seat belt
    assert not decide(close_up, "mass_raw", threshold=0.5).keep
    assert decide(close_up, "topk", top_k=4).keep  # the seed rule keeps close-ups
    assert decide(dash, "topk", top_k=4).keep and not decide(dash, "top1").keep
    assert dog not in VEHICLE_CLASSES
    assert decide(dash, "mass", threshold=0.5).reason == decide(dash, "top1").reason == "not_vehicle:golden retriever"
    with pytest.raises(ValueError, match="unknown vehicle policy"):
        decide(car, "nope")


def test_head_policy_reasons_say_what_the_image_is() -> None:
    car = _probs(c817=0.7, c479=0.1)
    bus = _probs(c779=0.9)  # a school bus: vehicle mass 0.9
    dog = _probs(c207=0.5, c817=0.3)
    assert CLASSES == ("exterior", "interior", "detail", "other")
    assert decide_head([0.9, 0.05, 0.03, 0.02], CLASSES, car) == decide(car, "mass")  # kept, vehicle:sports car
    assert decide_head([0.2, 0.7, 0.05, 0.05], CLASSES, car).reason == "interior"  # a cabin ImageNet calls a car
    assert decide_head([0.3, 0.1, 0.6, 0.0], CLASSES, car).reason == "vehicle_detail"
    # "other": named by the best ImageNet class that is not a vehicle (the head overruled those)
    assert decide_head([0.1, 0.1, 0.1, 0.7], CLASSES, dog, ranking=[207, 817]).reason == "not_vehicle:golden retriever"
    assert decide_head([0.1, 0.1, 0.1, 0.7], CLASSES, _probs(c207=0.5, c817=0.2)).reason == "not_vehicle:golden retriever"
    # ... unless ImageNet sees a car or its parts: then it is named an interior or a close-up
    assert decide_head([0.1, 0.2, 0.1, 0.6], CLASSES, car).reason == "interior"
    assert decide_head([0.1, 0.1, 0.2, 0.6], CLASSES, car).reason == "vehicle_detail"
    # a vehicle the head never saw (its best other guess is "other") with strong ImageNet evidence
    assert decide_head([0.3, 0.1, 0.1, 0.5], CLASSES, bus).reason == "vehicle:school bus"
    assert not decide_head([0.3, 0.5, 0.1, 0.1], CLASSES, bus).keep  # ... but not an interior


def test_a_backbone_without_a_head_falls_back_to_mass_and_says_so(tmp_path: Path) -> None:
    from carcrawl.classify.head import load_head

    assert load_head("resnet50", 2048) is None  # no ResNet-50 weights where the heads were trained
    wrong = tmp_path / "h.npz"
    import shutil

    shutil.copy(ROOT / "carcrawl" / "data" / "heads" / "efficientnet_lite0.npz", wrong)
    with pytest.raises(ValueError, match="a head for efficientnet_lite0.*not for resnet50.*train_head.py --model resnet50"):
        load_head("resnet50", 2048, wrong)


def test_device_names(tmp_path: Path) -> None:
    assert [parse_device(d) for d in ("auto", "cpu", "cuda", "cuda:0", "CUDA:3")] == [
        ("auto", None), ("cpu", None), ("cuda", None), ("cuda", 0), ("cuda", 3)]
    for bad in ("gpu", "cuda:", "cuda:x", "cpu:1", "cuda:-1"):
        with pytest.raises(ConfigError, match="not one of auto, cpu, cuda, cuda:N"):
            parse_device(bad)
    assert load_settings(write_config(tmp_path / "a.toml", '[classify]\ndevice = "cuda:1"\n')).classify.device == "cuda:1"
    with pytest.raises(ConfigError, match="classify.device: 'gpu:1' is not one of"):
        load_settings(write_config(tmp_path / "b.toml", '[classify]\ndevice = "gpu:1"\n'))


def test_cuda_without_a_gpu_is_a_clear_error() -> None:
    import torch

    if torch.cuda.is_available():
        pytest.skip("this machine has CUDA")
    with pytest.raises(ModelUnavailableError, match="torch sees no CUDA GPU.*--device cpu"):
        load_classifier(ClassifySettings(device="cuda"))
    with pytest.raises(ModelUnavailableError, match="device = cuda:1, but torch sees no CUDA GPU"):
        load_classifier(ClassifySettings(device="cuda:1"))


def test_missing_weights_file_is_a_clear_error(tmp_path: Path) -> None:
    with pytest.raises(ModelUnavailableError, match="does not exist"):
        load_classifier(ClassifySettings(model="resnet50", device="cpu", weights=str(tmp_path / "resnet50.pth")))
    junk = tmp_path / "junk.pth"
    junk.write_bytes(b"not a checkpoint")
    with pytest.raises(ModelUnavailableError, match="junk.pth"):
        load_classifier(ClassifySettings(model="efficientnet_lite0", device="cpu", weights=str(junk)))


def test_importing_the_package_does_not_import_torch() -> None:
    code = "import sys, carcrawl.classify; sys.exit(('torch' in sys.modules) + 2 * ('nvidia.dali' in sys.modules))"
    assert subprocess.run([sys.executable, "-c", code], cwd=ROOT).returncode == 0
