"""DALI's CPU pipeline (device_id=None): same keep/reject as the Pillow path on real photos, one
corrupt image in a batch costs only itself (the pipeline is rebuilt after the failed run), a thin
strip cannot blow up the resize, bytes after a JPEG's end marker stay on DALI. Skipped where DALI is
not installed."""

from __future__ import annotations

import io
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
from PIL import Image
from test_classify import OTHERS, VEHICLES

from carcrawl.classify import ClassifySettings, load_classifier
from carcrawl.classify.dali import dali_import_error, jpeg_complete, screen

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
    # all headers, an empty (bogus) start-of-scan, an end marker: passes the screen, fails DALI
    corrupt = jpeg[: jpeg.index(b"\xff\xda")] + b"\xff\xda\x00\x02\xff\xd9"
    assert screen(corrupt, 50_000_000)[1], "the corrupt sample must reach DALI for this test to mean anything"
    batch = good[:3] + [("corrupt", corrupt)] + good[3:]
    before = dali._decoder.isolated  # type: ignore[attr-defined]
    rebuilt = dali._decoder.rebuilds  # type: ignore[attr-defined]
    verdicts = dali.classify(batch)  # type: ignore[attr-defined]
    assert dali._decoder.isolated == before + 1  # type: ignore[attr-defined]
    # a DALI pipeline whose run() raised returns garbage after ("too many values"): every failed
    # run is followed by a fresh pipeline; bisecting 8 samples to one bad one fails 4 runs
    assert dali._decoder.rebuilds - rebuilt == 4  # type: ignore[attr-defined]
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


def test_a_thin_strip_goes_to_pillow_and_the_capped_resize_stays_small(classifiers: tuple[object, object]) -> None:
    dali, pillow = classifiers
    buf = io.BytesIO()
    Image.new("RGB", (65000, 10), (200, 30, 30)).save(buf, "JPEG")
    strip = buf.getvalue()
    assert not screen(strip, 50_000_000)[1]  # routed to Pillow, which crops before it resizes
    a, b = dali.classify([("strip", strip)]), pillow.classify([("strip", strip)])  # type: ignore[attr-defined]
    assert (a[0].reason, a[0].width, a[0].height) == (b[0].reason, 65000, 10)
    # Should one reach DALI anyway, the capped resize keeps it small: uncapped, resizing the
    # shorter side to 256 makes a 1.66-megapixel-wide strip and this process peaks at ~1.6 GB.
    code = (
        "import sys, numpy as np\n"
        "from carcrawl.classify.dali import build_pipeline\n"
        "from carcrawl.classify.decode import Geometry\n"
        "pipe = build_pipeline(Geometry(224, 256), 1, 1, None)\n"
        "pipe.feed_input('encoded', [np.frombuffer(sys.stdin.buffer.read(), np.uint8)])\n"
        "out = pipe.run()[0]\n"
        "hwm = [l for l in open('/proc/self/status') if l.startswith('VmHWM')][0].split()[1]\n"
        "print(out.as_array().shape, int(hwm) // 1024)\n"
    )
    proc = subprocess.run([sys.executable, "-c", code], input=strip, capture_output=True, timeout=120)
    assert proc.returncode == 0, proc.stderr.decode()[-2000:]
    shape, peak_mb = proc.stdout.decode().strip().rsplit(" ", 1)
    assert shape == "(1, 224, 224, 3)"
    assert int(peak_mb) < 800, f"peak RSS {peak_mb} MB decoding one strip"  # VmHWM: not inherited like ru_maxrss


def test_bytes_after_the_end_marker_stay_on_dali(classifiers: tuple[object, object], shared: Path) -> None:
    dali, pillow = classifiers
    jpeg = (shared / "images" / "vehicle" / VEHICLES[1]).read_bytes()
    trailed = jpeg + b"/img/123.jpg?size=large" * 4  # what some hosts (and our benchmarks) append
    truncated = jpeg[: len(jpeg) * 2 // 3]
    assert jpeg_complete(trailed) and not jpeg_complete(truncated)
    assert screen(trailed, 50_000_000)[1] and not screen(truncated, 50_000_000)[1]
    before = dali._decoder.isolated  # type: ignore[attr-defined]
    a = dali.classify([("plain", jpeg), ("trailed", trailed)])  # type: ignore[attr-defined]
    assert dali._decoder.isolated == before  # type: ignore[attr-defined]
    assert a[0].reason == a[1].reason and a[0].top5 == a[1].top5
    assert a[1].keep == pillow.classify([("trailed", trailed)])[0].keep  # type: ignore[attr-defined]
