"""Export on real checkpoints with real photos: near-duplicates, exact duplicates, splits, label
schemes, merge maps, path safety, and each format loaded back with the library its users use."""

from __future__ import annotations

import json
import sqlite3
import subprocess
import tarfile
from pathlib import Path

import pytest
from helpers import carcrawl_cmd
from test_export_helpers import Shot, build_crawl, copies, pixel_embedding, vehicle_photos

from carcrawl.errors import CarcrawlError, ConfigError, InputFileError
from carcrawl.export import export
from carcrawl.export.dedup import find_near_duplicates
from carcrawl.export.labels import read_merge_map, safe_name
from carcrawl.export.splits import SplitItem, assign_splits
from carcrawl.models import Labels

pytestmark = pytest.mark.usefixtures("shared")

MUSTANG = Labels("ford", "mustang", "red")
CAMRY = Labels("toyota", "camry", "blue")
CIVIC = Labels("honda", "civic", "white")


def sha(body: bytes) -> str:
    import hashlib

    return hashlib.sha256(body).hexdigest()


@pytest.fixture(scope="module")
def crawl(tmp_path_factory: pytest.TempPathFactory) -> dict[str, object]:
    """18 real photos over three classes, the four engine-style copies of two of them, one photo
    delivered by two URLs under different labels, one failed URL, body-type hit counts."""
    out = tmp_path_factory.mktemp("crawl")
    photos = vehicle_photos(18)
    labels = [MUSTANG, CAMRY, CIVIC]
    shots = [Shot(f"http://h{i % 4}.example/{i}.jpg", labels[i % 3], p.read_bytes(), page_url=f"http://site.example/listing/{i // 2}",
                  title=f"photo {i}", source="bing") for i, p in enumerate(photos)]
    originals = [photos[0], photos[1]]
    for n, p in enumerate(originals):
        shots[n] = Shot(shots[n].url, shots[n].labels, p.read_bytes(), source="wikimedia", license="CC BY-SA 4.0",
                        page_url=f"http://commons.example/File:{n}")
        for kind, body in copies(p).items():
            shots.append(Shot(f"http://copies{n}.example/{kind}.jpg", shots[n].labels, body, source="bing"))
    shots.append(Shot("http://mirror.example/same.jpg", CAMRY, photos[3].read_bytes(), source="bing"))
    shots.append(Shot("http://dead.example/x.jpg", CIVIC, None))
    build_crawl(out, shots, bodytype_hits={("ford", "mustang", "coupe"): 900, ("ford", "mustang", "sedan"): 100,
                                            ("toyota", "camry", "sedan"): 500})
    dedup = find_near_duplicates(out)
    return {"out": out, "photos": photos, "originals": originals, "dedup": dedup, "shots": shots}


def test_near_duplicate_copies_cluster_and_different_photos_do_not(crawl: dict) -> None:
    out = crawl["out"]
    con = sqlite3.connect(out / "checkpoint.sqlite")
    clusters: dict[str, set[str]] = {}
    for member, cluster in con.execute("SELECT sha256, cluster FROM near_duplicates"):
        clusters.setdefault(cluster, set()).add(member)
    for n, original in enumerate(crawl["originals"]):
        want = {sha(original.read_bytes())} | {sha(b) for b in copies(original).values()}
        # the licensed Wikimedia original has the most pixels (ties with q40/watermark go to the licence)
        assert clusters.get(sha(original.read_bytes())) == want, f"copies of photo {n} not in one cluster"
        for member in want - {sha(original.read_bytes())}:
            state, reason = con.execute("SELECT state, reason FROM images WHERE sha256=?", (member,)).fetchone()
            assert (state, reason) == ("rejected", f"near_duplicate_of:{sha(original.read_bytes())}")
    assert len(clusters) == 2, "different photos were clustered together"
    assert crawl["dedup"].duplicates == 8 and crawl["dedup"].clusters == 2
    # a second pass re-uses the stored hashes and finds the same
    again = find_near_duplicates(out)
    assert again.hashed == 0 and again.duplicates == 8


def test_embeddings_confirm_and_veto(tmp_path: Path) -> None:
    """Embeddings here are stand-ins (an 8x8 grey thumbnail, see pixel_embedding): copies get close
    vectors and so stay clustered; a copy given the opposite vector is vetoed out of the cluster."""
    original = vehicle_photos(1)[0]
    cps = copies(original)
    shots = [Shot("http://a.example/o.jpg", MUSTANG, original.read_bytes(), embedding=pixel_embedding(original.read_bytes()))]
    for kind, body in cps.items():
        emb = pixel_embedding(body)
        if kind == "q40":
            import numpy as np

            emb = (-np.frombuffer(emb, dtype="<f2")).astype("<f2").tobytes()
        shots.append(Shot(f"http://b.example/{kind}.jpg", MUSTANG, body, embedding=emb))
    build_crawl(tmp_path, shots)
    result = find_near_duplicates(tmp_path)
    con = sqlite3.connect(tmp_path / "checkpoint.sqlite")
    members = {r[0] for r in con.execute("SELECT sha256 FROM near_duplicates")}
    assert sha(cps["q40"]) not in members
    assert members == {sha(original.read_bytes())} | {sha(b) for k, b in cps.items() if k != "q40"}
    assert result.clusters == 1


def test_exact_duplicate_is_one_image_with_its_label_conflict_recorded(crawl: dict, tmp_path: Path) -> None:
    import pyarrow.parquet as pq

    export(crawl["out"], "parquet", tmp_path / "m")
    rows = {r["sha256"]: r for r in pq.read_table(tmp_path / "m" / "manifest.parquet").to_pylist()}
    dup = rows[sha(crawl["photos"][3].read_bytes())]
    assert sorted(dup["urls"]) == ["http://h3.example/3.jpg", "http://mirror.example/same.jpg"]
    assert dup["label"] == "ford_mustang"  # photo 3 is a mustang; equal votes, the first URL found wins
    assert dup["label_conflict"] == "toyota/camry/blue"
    assert len(rows) == 18 + 8  # one row per stored image, the failed URL has none


def test_splits_group_pages_and_clusters_stratify_and_stay(crawl: dict) -> None:
    items = [SplitItem(f"{i:064x}", "a" if i < 60 else "b", (f"page:{i // 3}",)) for i in range(100)]
    s1 = assign_splits(items, (0.7, 0.15, 0.15), seed=1)
    assert s1 == assign_splits(list(reversed(items)), (0.7, 0.15, 0.15), seed=1)  # order-independent
    for g in range(34):  # the three images of a page share a split
        assert len({s1[f"{i:064x}"] for i in range(100) if i // 3 == g}) == 1
    for label, lo, hi in (("a", 0, 60), ("b", 60, 100)):
        counts = [sum(1 for i in range(lo, hi) if s1[f"{i:064x}"] == s) for s in ("train", "val", "test")]
        n = hi - lo
        assert abs(counts[0] - 0.7 * n) <= 3 and abs(counts[1] - 0.15 * n) <= 3, (label, counts)
    assert assign_splits(items, (0.7, 0.15, 0.15), seed=2) != s1
    # an earlier assignment is kept: test images stay in test when the crawl grows
    grown = items + [SplitItem(f"{i:064x}", "a", (f"page:{i // 3}",)) for i in range(100, 130)]
    s2 = assign_splits(grown, (0.7, 0.15, 0.15), seed=1, previous=s1)
    assert all(s2[k] == v for k, v in s1.items())
    # and through export: the whole listing of a page is in one split
    summary = export(crawl["out"], "parquet", crawl["out"] / "export" / "p1", seed=3)
    import pyarrow.parquet as pq

    rows = [r for r in pq.read_table(crawl["out"] / "export" / "p1" / "manifest.parquet").to_pylist() if r["in_dataset"]]
    by_page: dict[str, set[str]] = {}
    for r in rows:
        by_page.setdefault(r["page_url"], set()).add(r["split"])
    assert all(len(v) == 1 for v in by_page.values())
    assert summary.images == len(rows) == 18  # the mirror URL delivered photo 3 again; the copies are out


def test_merge_map_min_count_and_label_subset(crawl: dict, tmp_path: Path) -> None:
    csv_map = tmp_path / "merge.csv"
    csv_map.write_text("from,to\nhonda_civic,japanese\ntoyota_camry,japanese\n")
    s = export(crawl["out"], "parquet", tmp_path / "a", merge_map=csv_map)
    assert set(s.per_class) == {"ford_mustang", "japanese"} and s.per_class["japanese"]["train"] > 0
    json_map = tmp_path / "merge.json"
    json_map.write_text(json.dumps({"honda_civic": None, "toyota_camry": "ford_mustang"}))
    s = export(crawl["out"], "parquet", tmp_path / "b", merge_map=json_map, min_count=7)
    assert set(s.per_class) == {"ford_mustang"} and s.images == 12  # 6 mustangs + 6 camrys merged in
    assert s.excluded["merge_map:dropped"] == 6
    s = export(crawl["out"], "parquet", tmp_path / "b2", merge_map=csv_map, min_count=7)
    assert set(s.per_class) == {"japanese"} and s.excluded["below_min_count"] == 6
    s = export(crawl["out"], "parquet", tmp_path / "c", labels=["toyota_camry"])
    assert set(s.per_class) == {"toyota_camry"}
    with pytest.raises(ConfigError, match="bmw_x5"):
        export(crawl["out"], "parquet", tmp_path / "d", labels=["bmw_x5"])
    bad = tmp_path / "bad.csv"
    bad.write_text("from,to\na,b\nc,d,e\n")
    with pytest.raises(InputFileError, match=r"bad.csv: line 3"):
        read_merge_map(bad)
    bad.with_suffix(".json").write_text('{"a": 3}')
    with pytest.raises(InputFileError, match=r"key 'a'"):
        read_merge_map(bad.with_suffix(".json"))


def test_label_schemes(crawl: dict, tmp_path: Path) -> None:
    s = export(crawl["out"], "parquet", tmp_path / "a", scheme="make_model_color")
    assert set(s.per_class) == {"ford_mustang_red", "toyota_camry_blue", "honda_civic_white"}
    s = export(crawl["out"], "parquet", tmp_path / "b", scheme="body_type")
    assert set(s.per_class) == {"coupe", "sedan"}  # the argmax of the hit counts per make/model
    assert s.excluded["no_label:body_type"] == 6  # civics: no body-type counts
    import pyarrow.parquet as pq

    row = next(r for r in pq.read_table(tmp_path / "b" / "manifest.parquet").to_pylist() if r["make"] == "ford")
    assert dict(row["body_type_vector"]) == pytest.approx({"coupe": 0.9, "sedan": 0.1})
    with pytest.raises(ConfigError, match="--scheme"):
        export(crawl["out"], "parquet", tmp_path / "c", scheme="colour")


def test_hostile_label_names_never_leave_the_export(tmp_path: Path) -> None:
    photos = vehicle_photos(8)
    names = ["../../etc", "/etc/passwd", "a\x00b", "x" * 300, "CON", ".hidden", "..", "ok/../../up"]
    shots = [Shot(f"http://h.example/{i}.jpg", Labels(category=n), photos[i].read_bytes(), source="urls")
             for i, n in enumerate(names)]
    out = tmp_path / "crawl"
    build_crawl(out, shots)
    dest = tmp_path / "exp" / "if"
    s = export(out, "imagefolder", dest, scheme="category")
    assert s.images == 8
    files = [p for p in tmp_path.rglob("*") if p.is_file() and "exp" in p.parts]
    assert len([f for f in files if f.suffix in (".jpg", ".png")]) == 8
    for f in files:
        assert dest.resolve() in f.resolve().parents
        assert len(f.parent.name.encode()) <= 120 and "\x00" not in str(f)
    assert not (tmp_path / "etc").exists() and not (tmp_path / "exp" / "etc").exists()
    assert safe_name("../../etc") == "etc" and safe_name("CON") == "_CON" and safe_name("..") == "_"
    classes = json.loads((dest / "classes.json").read_text())
    assert len({c["folder"] for c in classes}) == len(classes) == 8


def test_imagefolder_loads_with_torchvision(crawl: dict, tmp_path: Path) -> None:
    out = crawl["out"]
    s_if = export(out, "imagefolder", tmp_path / "if")
    from torchvision.datasets import ImageFolder

    train = ImageFolder(str(tmp_path / "if" / "train"))
    classes = json.loads((tmp_path / "if" / "classes.json").read_text())
    assert train.classes == [c["folder"] for c in classes] == ["ford_mustang", "honda_civic", "toyota_camry"]
    assert len(train) == s_if.splits["train"]
    img, idx = train[0]
    assert img.size[0] > 0 and 0 <= idx < 3


def test_hf_imagefolder_loads_with_datasets(crawl: dict, tmp_path: Path) -> None:
    datasets = pytest.importorskip("datasets", reason="the test extra installs datasets")
    out = crawl["out"]
    s_hf = export(out, "hf", tmp_path / "hf")

    ds = datasets.load_dataset("imagefolder", data_dir=str(tmp_path / "hf"), cache_dir=str(tmp_path / "hfcache"))
    assert ds["train"].num_rows == s_hf.splits["train"]
    assert ds["validation"].num_rows == s_hf.splits["val"]
    row = ds["train"][0]
    assert row["label"] in {"ford_mustang", "honda_civic", "toyota_camry"} and row["image"].size[0] > 0
    assert row["url"].startswith("http://") and len(row["sha256"]) == 64


def test_webdataset_shards_load_with_webdataset(crawl: dict, tmp_path: Path) -> None:
    wds = pytest.importorskip("webdataset", reason="the test extra installs webdataset")
    out = crawl["out"]
    s_wds = export(out, "webdataset", tmp_path / "wds")

    shards = sorted(str(p) for p in (tmp_path / "wds").glob("train-*.tar"))
    samples = list(wds.WebDataset(shards, shardshuffle=False).decode("pil").to_tuple("__key__", "jpg;png;webp", "json", "cls"))
    assert len(samples) == s_wds.splits["train"]
    key, image, meta, cls = samples[0]
    assert key == meta["sha256"] and image.size[0] > 0
    assert json.loads((tmp_path / "wds" / "classes.json").read_text())[cls]["label"] == meta["label"]
    with tarfile.open(shards[0]) as tar:
        assert all(m.uid == 0 and m.mtime == 0 for m in tar.getmembers())  # reproducible shards


def test_parquet_manifest_has_every_column(crawl: dict, tmp_path: Path) -> None:
    out = crawl["out"]
    s = export(out, "parquet", tmp_path / "pq")
    import pyarrow.parquet as pq

    table = pq.read_table(tmp_path / "pq" / "manifest.parquet")
    for column in ("url", "source", "query", "page_url", "license", "creator", "attribution", "sha256", "bytes",
                   "format", "make", "model", "color", "top_labels", "top_scores", "keep", "verdict_reason",
                   "excluded_reason", "body_type_vector", "split", "cluster", "label_conflict"):
        assert column in table.column_names
    rows = table.to_pylist()
    # paths are relative to the manifest's folder and point at real files
    assert all((tmp_path / "pq" / r["path"]).is_file() for r in rows)
    assert sum(r["in_dataset"] for r in rows) == s.images == 18
    lic = next(r for r in rows if r["license"])
    assert lic["license"] == "CC BY-SA 4.0" and lic["source"] == "wikimedia"


def test_export_refuses_to_overwrite_a_foreign_folder_and_replaces_its_own(crawl: dict, tmp_path: Path) -> None:
    foreign = tmp_path / "mine"
    foreign.mkdir()
    (foreign / "thesis.tex").write_text("precious")
    with pytest.raises(CarcrawlError, match="not an earlier carcrawl export"):
        export(crawl["out"], "imagefolder", foreign)
    assert (foreign / "thesis.tex").read_text() == "precious"
    export(crawl["out"], "imagefolder", tmp_path / "if")
    (tmp_path / "if" / "train" / "stale.txt").write_text("old")
    export(crawl["out"], "imagefolder", tmp_path / "if")
    assert not (tmp_path / "if" / "train" / "stale.txt").exists()
    assert not [p for p in tmp_path.iterdir() if ".tmp-" in p.name or ".old-" in p.name]


def test_cli_export_prints_summary_and_clear_errors(crawl: dict, tmp_path: Path) -> None:
    out = crawl["out"]
    r = subprocess.run([*carcrawl_cmd(), "export", str(out), "--format", "webdataset", "--to", str(tmp_path / "w"),
                        "--scheme", "make_model_color"], capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stderr
    assert "webdataset:" in r.stdout and "3 classes" in r.stdout and "near_duplicate 8" in r.stdout
    r = subprocess.run([*carcrawl_cmd(), "export", str(out), "--ratios", "0.7,0.3"], capture_output=True, text=True)
    assert r.returncode == 2 and "--ratios" in r.stderr and "Traceback" not in r.stderr
    r = subprocess.run([*carcrawl_cmd(), "export", str(tmp_path / "nothing"), "--format", "hf"], capture_output=True, text=True)
    assert r.returncode == 2 and "no checkpoint here" in r.stderr and "Traceback" not in r.stderr
    r = subprocess.run([*carcrawl_cmd(), "export", str(out), "--format", "zip"], capture_output=True, text=True)
    assert r.returncode == 2 and "--format" in r.stderr and "Traceback" not in r.stderr


def test_webdataset_shards_are_the_same_bytes_whether_the_kernel_copies_the_images_or_python_does(
        crawl: dict, tmp_path: Path) -> None:
    """Image members go to the tar by copy_file_range on the images' filesystem; to another
    filesystem (tmpfs) the kernel refuses (EXDEV) and they are read and written instead. Both
    shards are identical, and every image member is its stored file's bytes."""
    import os
    import shutil
    import uuid

    out = crawl["out"]
    shm = Path("/dev/shm")
    if not shm.is_dir() or shm.stat().st_dev == out.stat().st_dev:
        pytest.skip("needs /dev/shm on a filesystem other than the test's temporary folder")
    other = shm / f"carcrawl-test-{uuid.uuid4().hex[:8]}"
    try:
        summary = export(out, "webdataset", tmp_path / "same-fs")
        export(out, "webdataset", other / "wds")
        names = sorted(p.name for p in (tmp_path / "same-fs").glob("*.tar"))
        assert names and names == sorted(p.name for p in (other / "wds").glob("*.tar"))
        stored = {p.stem: p.read_bytes() for p in (out / "images").rglob("*.*") if p.is_file()}
        members = 0
        for name in names:
            a, b = (tmp_path / "same-fs" / name).read_bytes(), (other / "wds" / name).read_bytes()
            assert a == b
            with tarfile.open(tmp_path / "same-fs" / name) as tar:
                for m in tar.getmembers():
                    key, ext = m.name.split(".", 1)
                    if ext not in ("json", "cls"):
                        assert tar.extractfile(m).read() == stored[key]
                        members += 1
        assert members == sum(summary.splits.values()) > 0
        assert os.path.getsize(tmp_path / "same-fs" / names[0]) % 10240 == 0  # whole tar records
    finally:
        shutil.rmtree(other, ignore_errors=True)
