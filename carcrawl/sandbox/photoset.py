"""Build the small photo set the project ships for the sandbox (``carcrawl/data/sandbox_photos``).

Run once by a maintainer, not at run time::

    python -m carcrawl.sandbox.photoset SHARED_IMAGES_DIR carcrawl/data/sandbox_photos

It copies only the files listed in :data:`SELECTION` (all from repositories whose licence allows
redistribution: MIT, Apache-2.0, BSD, public-domain-style), re-encodes them to JPEG of at most
~150 KB, keeps the ground-truth folder as a file-name prefix (``vehicle__<name>.jpg``) and writes
CREDITS.md from the source's SOURCES.csv. Kept here so the set can be rebuilt and audited.
"""

from __future__ import annotations

import csv
import io
import sys
from pathlib import Path

#: licences whose files may be shipped (prefix match on SOURCES.csv's ``license_of_repo``)
ALLOWED_LICENCES = ("MIT", "Apache-2.0", "BSD", "Unlicense", "YOLO License", "CC0", "Public domain")

#: (folder, file) picked by hand: mixed vehicles (incl. watermark-free marketplace-style shots,
#: vans, an ambulance, dense traffic) and hard negatives (traffic cameras, dashcam, signs, animals,
#: documents, a chart). Watermarked stock photos and photos of identifiable public figures are left out.
SELECTION: tuple[tuple[str, str], ...] = (
    ("vehicle", "CarRecog__03198.jpg"),
    ("vehicle", "CarRecog__05509.jpg"),
    ("vehicle", "CarRecog__07647.jpg"),
    ("vehicle", "CarRecog__0_out.png"),
    ("vehicle", "CarRecog__1_out.png"),
    ("vehicle", "CarRecog__3_out.png"),
    ("vehicle", "CarRecog__4_out.png"),
    ("vehicle", "CarRecog__6_out.png"),
    ("vehicle", "CarRecog__8_out.png"),
    ("vehicle", "car_vs_ambulance__0a1cfb999655af56.jpg"),
    ("vehicle", "car_vs_ambulance__car2.jpg"),
    ("vehicle", "car_vs_ambulance__embulance1.jpeg"),
    ("vehicle", "car_vs_ambulance__embulance2.jpg"),
    ("vehicle", "VehicleClassification__martin.jpg"),
    ("vehicle", "VehicleClassification__mazda.jpg"),
    ("vehicle", "VehicleClassification__ram.jpg"),
    ("vehicle", "VehicleClassification__vehiculos.webp"),
    ("other", "VehicleClassification__camiones.jpg"),
    ("other", "VehicleClassification__carretera.jpg"),
    ("other", "VehicleClassification__furgonetas.jpg"),
    ("other", "CarND-VD__test1.jpg"),
    ("other", "darknet__dog.jpg"),
    ("other", "darknet__horses.jpg"),
    ("other", "darknet__person.jpg"),
    ("other", "darknet__eagle.jpg"),
    ("other", "skimage__chelsea.png"),
    ("other", "skimage__coffee.png"),
    ("other", "skimage__astronaut.png"),
    ("other", "skimage__rocket.jpg"),
    ("other", "EasyOCR__french.jpg"),
    ("other", "EasyOCR__thai.jpg"),
    ("other", "donut__sample_image_cord_test_receipt_00004.png"),
    ("other", "CarRecog__confusion_matrix.jpg"),
)

MAX_BYTES = 150 * 1024
MAX_SIDE = 1024  # long side; the short side stays >= 256 px where the source has it


def encode_small(data: bytes, max_bytes: int = MAX_BYTES) -> tuple[bytes, tuple[int, int]]:
    """Re-encode an image to a JPEG of at most ``max_bytes``: lower the quality first, then the size."""
    from PIL import Image

    with Image.open(io.BytesIO(data)) as src:
        im = src.convert("RGB")
    im.thumbnail((MAX_SIDE, MAX_SIDE))
    while True:
        for quality in (90, 85, 80, 75, 70, 65):
            buf = io.BytesIO()
            im.save(buf, "JPEG", quality=quality, optimize=True, progressive=False)
            if buf.tell() <= max_bytes:
                return buf.getvalue(), im.size
        if min(im.size) <= 256:
            return buf.getvalue(), im.size
        im = im.resize((max(1, im.width * 85 // 100), max(1, im.height * 85 // 100)))


def build(src: Path, dest: Path) -> list[dict[str, str]]:
    """Write the selection from ``src`` (a folder with vehicle/, other/, SOURCES.csv) into ``dest``."""
    with (src / "SOURCES.csv").open(newline="") as f:
        sources = {row["file"]: row for row in csv.DictReader(f)}
    dest.mkdir(parents=True, exist_ok=True)
    for old in dest.glob("*.jpg"):
        old.unlink()
    credits: list[dict[str, str]] = []
    for folder, name in SELECTION:
        row = sources[name]
        licence = row["license_of_repo"]
        if not licence.startswith(ALLOWED_LICENCES) or row["folder"] != folder:
            raise SystemExit(f"{name}: licence {licence!r} / folder {row['folder']!r} not allowed")
        body, (w, h) = encode_small((src / folder / name).read_bytes())
        out_name = f"{folder}__{Path(name).stem}.jpg"
        (dest / out_name).write_bytes(body)
        credits.append(
            {"file": out_name, "repo": row["repo"], "path": row["path"], "licence": licence, "size": f"{w}x{h}"}
        )
    lines = [
        "# Credits for the sandbox photo set",
        "",
        "These photos are served by carcrawl's local sandbox web (`carcrawl sandbox`, the demo, the",
        "tests). Each one comes from a public repository whose licence allows redistribution; each was",
        "re-encoded to a JPEG of at most 150 KB (resized to at most 1024 px on the long side). The file",
        "name starts with its ground-truth label (`vehicle__`, `other__`). Photos inside a repository",
        "may carry their own attribution (noted in the upstream repository); the licence column is the",
        "repository's licence. Rebuild with `python -m carcrawl.sandbox.photoset`.",
        "",
        "| file | origin repository | path in repository | licence | size |",
        "|---|---|---|---|---|",
    ]
    for c in credits:
        lines.append(
            f"| {c['file']} | https://github.com/{c['repo']} | `{c['path']}` | {c['licence']} | {c['size']} |"
        )
    (dest / "CREDITS.md").write_text("\n".join(lines) + "\n")
    return credits


if __name__ == "__main__":  # pragma: no cover - maintainer tool
    if len(sys.argv) != 3:
        raise SystemExit("usage: python -m carcrawl.sandbox.photoset SRC_IMAGES_DIR DEST_DIR")
    done = build(Path(sys.argv[1]), Path(sys.argv[2]))
    print(f"wrote {len(done)} photos to {sys.argv[2]}")
