"""DALI's CPU pipeline (device_id=None): same keep/reject as the Pillow path on real photos, and
one corrupt image in a batch costs only itself. Skipped where DALI is not installed."""

from __future__ import annotations

import io
from collections.abc import Iterator
from pathlib import Path

import pytest
from PIL import Image
from test_classify import OTHERS, VEHICLES

from carcrawl.classify import ClassifySettings, load_classifier
from carcrawl.classify.dali import dali_import_error, screen

_why = dali_import_error()
pytestmark = pytest.mark.skipif(_why is not None, reason=f"nvidia.dali does not import here: {_why}")


@pytest.fixture(scope="module")
def classifiers() -> Iterator[tuple[object, object]]:
    base = {"model": "efficientnet_lite0", "device": "cpu", "batch_size": 16}
    dali = load_classifier(ClassifySettings(decoder="dali", **base))  # type: ignore[arg-type]
    pillow = load_classifier(ClassifySettings(decoder="pillow", **base))  # type: ignore[arg-type]
    yield dali, pillow
    dali.close()  # type: ignore[attr-defined]
    pillow.close()  # type: ignore[attr-defined]


def photos(shared: Path) -> list[tuple[str, bytes]]:
    """The hand-checked photos plus every 6th photo of the set (all formats, hard negatives)."""
    images = shared / "images"
    chosen = [images / "vehicle" / n for n in VEHICLES] + [images / "other" / n for n in OTHERS]
    rest = sorted(p for p in images.glob("*/*") if p.suffix.lower() in {".jpg", ".jpeg", ".png", ".webp"})
    chosen += [p for p in rest[::6] if p not in chosen]
    return [(f"{p.parent.name}/{p.name}", p.read_bytes()) for p in chosen]


def test_dali_cpu_agrees_with_pillow_on_keep(classifiers: tuple[object, object], shared: Path) -> None:
    dali, pillow = classifiers
    assert dali.decoder == "dali-cpu"  # type: ignore[attr-defined]
    batch = photos(shared)
    a = dali.classify(batch)  # type: ignore[attr-defined]
    b = pillow.classify(batch)  # type: ignore[attr-defined]
    assert [v.keep for v in a] == [v.keep for v in b], [
        (x.sha256, x.reason, y.reason) for x, y in zip(a, b, strict=True) if x.keep != y.keep
    ]
    assert sum(v.keep for v in a) >= len(VEHICLES)
    assert [(v.width, v.height) for v in a] == [(v.width, v.height) for v in b]


def test_a_corrupt_image_inside_a_dali_batch_is_isolated(classifiers: tuple[object, object], shared: Path) -> None:
    dali, _ = classifiers
    good = photos(shared)[:7]
    jpeg = (shared / "images" / "vehicle" / VEHICLES[1]).read_bytes()
    corrupt = jpeg[: jpeg.index(b"\xff\xda")] + b"\xff\xd9"  # all headers, no scan, an end marker
    assert screen(corrupt, 50_000_000)[1], "the corrupt sample must reach DALI for this test to mean anything"
    batch = good[:3] + [("corrupt", corrupt)] + good[3:]
    before = dali._decoder.isolated  # type: ignore[attr-defined]
    verdicts = dali.classify(batch)  # type: ignore[attr-defined]
    assert dali._decoder.isolated == before + 1  # type: ignore[attr-defined]
    assert [v.reason for v in verdicts][3] == "decode_error"
    alone = dali.classify(good)  # type: ignore[attr-defined]
    assert [v.keep for v in verdicts[:3] + verdicts[4:]] == [v.keep for v in alone]
    assert all(v.top5 for v in verdicts[:3] + verdicts[4:])


def test_formats_dali_does_not_decode_go_to_pillow(classifiers: tuple[object, object], shared: Path) -> None:
    dali, _ = classifiers
    with Image.open(shared / "images" / "vehicle" / VEHICLES[1]) as im:
        rgb = im.convert("RGB")
    gif, rgba = io.BytesIO(), io.BytesIO()
    rgb.convert("P").save(gif, "GIF")
    rgb.convert("RGBA").save(rgba, "PNG")
    assert not screen(gif.getvalue(), 50_000_000)[1] and not screen(rgba.getvalue(), 50_000_000)[1]
    verdicts = dali.classify([("gif", gif.getvalue()), ("rgba", rgba.getvalue())])  # type: ignore[attr-defined]
    assert [v.keep for v in verdicts] == [True, True], [v.reason for v in verdicts]
