"""The streamed dataset side writes the same dataset as the code before it (kept as the oracle in
``export_oracle.py``), and its memory does not grow with the checkpoint beyond the split state.

Equality is judged from the outside: the files each format writes (names and bytes; the marker's
timestamp aside), the Parquet manifest's rows, the splits remembered in the checkpoint."""

from __future__ import annotations

import asyncio
import hashlib
import json
import os
import shutil
import signal
import sqlite3
import subprocess
import sys
import time
import tracemalloc
from pathlib import Path

import export_oracle as oracle
import pyarrow.parquet as pq
import pytest
from test_export_helpers import Shot, build_crawl, copies, vehicle_photos

from carcrawl.errors import CarcrawlError, ConfigError
from carcrawl.export import export, forked
from carcrawl.export.dedup import find_near_duplicates, hash_never_classified
from carcrawl.export.formats import MARKER
from carcrawl.export.plan import build_plan
from carcrawl.models import Candidate, Labels, Prediction, Query, Verdict
from carcrawl.report import write_report
from carcrawl.review import import_marks
from carcrawl.store import Store, StoredImage
from carcrawl.store.dataset import DatasetDB

pytestmark = pytest.mark.usefixtures("shared")

LABELS = [Labels("ford", "mustang", "red"), Labels("toyota", "camry", "blue"), Labels("honda", "civic", "white"),
          Labels("bmw", "x5", "black")]


@pytest.fixture(scope="module")
def crawl(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """40 real photos over four classes (listings of 1-3 photos), engine copies of three of them
    (near-duplicate clusters), a photo found under two labels, rejected images, reviewer marks."""
    out = tmp_path_factory.mktemp("streamed") / "out"
    photos = vehicle_photos(40)
    shots = [Shot(f"http://h{i % 5}.example/{i}.jpg", LABELS[i % 4], p.read_bytes(),
                  page_url=f"http://site.example/listing/{i // 3}" if i % 7 else None, title=f"photo {i}",
                  source=("bing", "openverse", "wikimedia")[i % 3], license="CC BY 4.0" if i % 3 else None,
                  keep=i % 11 != 5, reason="vehicle:sports car" if i % 11 != 5 else "not_vehicle:dog")
             for i, p in enumerate(photos)]
    for n in (0, 1, 2):
        for kind, body in copies(photos[n]).items():
            shots.append(Shot(f"http://copies{n}.example/{kind}.jpg", LABELS[n % 4], body, source="bing"))
    shots.append(Shot("http://mirror.example/same.jpg", LABELS[2], photos[3].read_bytes(), source="bing"))
    shots.append(Shot("http://dead.example/x.jpg", LABELS[0], None))
    build_crawl(out, shots, bodytype_hits={("ford", "mustang", "coupe"): 900, ("toyota", "camry", "sedan"): 500})
    find_near_duplicates(out)
    marks = out.parent / "marks.json"
    sha = lambda b: hashlib.sha256(b).hexdigest()  # noqa: E731
    marks.write_text(json.dumps({sha(photos[4].read_bytes()): "wrong", sha(photos[5].read_bytes()): "right"}))
    import_marks(out, marks)
    return out


def _tree(root: Path) -> dict[str, bytes]:
    files = {}
    for p in sorted(root.rglob("*")):
        if p.is_file():
            data = p.read_bytes()
            if p.name == MARKER:
                info = json.loads(data)
                info.pop("written_at")
                data = json.dumps(info, sort_keys=True).encode()
            files[str(p.relative_to(root))] = data
    return files


def _old_export(out: Path, fmt: str, to: Path, **kw: object) -> None:
    with DatasetDB.open(out) as db:
        plan = oracle.build_plan(db, **kw)  # type: ignore[arg-type]
    oracle.WRITERS[fmt](plan, to)


def _splits(out: Path) -> list[tuple[str, str, str]]:
    con = sqlite3.connect(out / "checkpoint.sqlite")
    try:
        return sorted(con.execute("SELECT plan, sha256, split FROM splits"))
    finally:
        con.close()


@pytest.mark.parametrize("options", [
    {},
    {"scheme": "make_model_color", "seed": 3, "ratios": (0.5, 0.25, 0.25)},
    {"scheme": "body_type", "min_count": 3},
    {"merge_map": {"honda_civic": "japanese", "toyota_camry": "japanese", "bmw_x5": None}, "seed": 1},
    {"labels": ["ford_mustang", "bmw_x5"]},
])
def test_streamed_export_writes_what_the_old_code_wrote(crawl: Path, tmp_path: Path, options: dict) -> None:
    old_crawl, new_crawl = tmp_path / "old" / "out", tmp_path / "new" / "out"
    shutil.copytree(crawl, old_crawl)
    shutil.copytree(crawl, new_crawl)
    for fmt in ("imagefolder", "hf", "webdataset", "parquet"):
        _old_export(old_crawl, fmt, tmp_path / "old" / fmt, **options)
        export(new_crawl, fmt, tmp_path / "new" / fmt, **options)
        if fmt == "parquet":
            old_rows = pq.read_table(tmp_path / "old" / fmt / "manifest.parquet").to_pylist()
            new_rows = pq.read_table(tmp_path / "new" / fmt / "manifest.parquet").to_pylist()
            assert len(new_rows) == len(old_rows) > 40
            assert new_rows == old_rows
            assert sum(r["in_dataset"] for r in new_rows) > 10
        else:
            old_files, new_files = _tree(tmp_path / "old" / fmt), _tree(tmp_path / "new" / fmt)
            assert sorted(new_files) == sorted(old_files)
            for name in old_files:
                assert new_files[name] == old_files[name], f"{fmt}: {name} differs"
    assert _splits(new_crawl) == _splits(old_crawl) and _splits(new_crawl)


def test_remembered_splits_are_kept_like_before(crawl: Path, tmp_path: Path) -> None:
    """A second export after a reviewer mark starts from the splits the first one remembered."""
    old_crawl, new_crawl = tmp_path / "old" / "out", tmp_path / "new" / "out"
    shutil.copytree(crawl, old_crawl)
    shutil.copytree(crawl, new_crawl)
    _old_export(old_crawl, "parquet", old_crawl.parent / "1", seed=5)
    export(new_crawl, "parquet", new_crawl.parent / "1", seed=5)
    photo = vehicle_photos(12)[11].read_bytes()
    marks = tmp_path / "m.json"
    marks.write_text(json.dumps({hashlib.sha256(photo).hexdigest(): "wrong"}))
    for out in (old_crawl, new_crawl):
        import_marks(out, marks)
    _old_export(old_crawl, "parquet", old_crawl.parent / "2", seed=5, ratios=(0.6, 0.2, 0.2))
    export(new_crawl, "parquet", new_crawl.parent / "2", seed=5, ratios=(0.6, 0.2, 0.2))
    _old_export(old_crawl, "parquet", old_crawl.parent / "3", seed=5)
    export(new_crawl, "parquet", new_crawl.parent / "3", seed=5)
    for name in ("1", "2", "3"):
        assert (pq.read_table(new_crawl.parent / name / "manifest.parquet").to_pylist()
                == pq.read_table(old_crawl.parent / name / "manifest.parquet").to_pylist())
    assert _splits(new_crawl) == _splits(old_crawl)


def _cli_export(out: Path, fmt: str, to: Path, *args: str) -> str:
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[1])}
    done = subprocess.run([sys.executable, "-m", "carcrawl.cli", "export", str(out), "--format", fmt, "--to", str(to),
                           "--no-dedup", *args], capture_output=True, text=True, timeout=300, env=env)
    assert done.returncode == 0, done.stderr[-3000:]
    return done.stdout


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="the plan's pass forks only on Linux")
@pytest.mark.parametrize("cli_options, options", [
    ((), {}),
    (("--scheme", "body_type", "--min-count", "3", "--seed", "2"), {"scheme": "body_type", "min_count": 3, "seed": 2}),
])
def test_a_plan_split_over_processes_exports_what_one_process_exports(
        crawl: Path, tmp_path: Path, cli_options: tuple[str, ...], options: dict) -> None:
    """Three forked processes, each a range of sha256 (about 15 images each here), then a second
    export after a reviewer mark (the remembered splits read per range): files, manifest rows and
    remembered splits as one process writes them."""
    one, many = tmp_path / "one" / "out", tmp_path / "many" / "out"
    shutil.copytree(crawl, one)
    shutil.copytree(crawl, many)
    photo = vehicle_photos(12)[11].read_bytes()
    marks = tmp_path / "m.json"
    marks.write_text(json.dumps({hashlib.sha256(photo).hexdigest(): "wrong"}))
    for round_ in (1, 2):
        for fmt in ("imagefolder", "hf", "webdataset", "parquet"):
            export(one, fmt, one.parent / f"{fmt}{round_}", workers=1, **options)
            said = _cli_export(many, fmt, many.parent / f"{fmt}{round_}", "--workers", "3", *cli_options)
            assert "planned by 3 processes" in said, said
            if fmt == "parquet":
                rows = pq.read_table(many.parent / f"{fmt}{round_}" / "manifest.parquet").to_pylist()
                assert len(rows) > 40 and sum(r["in_dataset"] for r in rows) > 10
                assert rows == pq.read_table(one.parent / f"{fmt}{round_}" / "manifest.parquet").to_pylist()
            else:
                digests = [{k: hashlib.sha256(v).hexdigest()[:16] for k, v in _tree(out.parent / f"{fmt}{round_}").items()}
                           for out in (many, one)]
                assert digests[0] == digests[1], fmt
        assert not list(many.parent.glob("**/*.arrow")), "a part's temporary file was left behind"
        for out in (one, many):
            import_marks(out, marks)
    assert _splits(many) == _splits(one) and _splits(one)


def test_workers_below_one_is_a_clear_error(crawl: Path, tmp_path: Path) -> None:
    out = tmp_path / "out"
    shutil.copytree(crawl, out)
    with pytest.raises(ConfigError, match="--workers: expected 1 or more, got 0"):
        export(out, "parquet", tmp_path / "p", workers=0)
    assert not (tmp_path / "p").exists() and not list(tmp_path.glob(".p*"))


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="forks only on Linux")
def test_a_forked_part_hands_back_its_result_its_error_or_its_death() -> None:
    assert forked.Child(lambda: {"images": 3}).result() == {"images": 3}

    def bad_option() -> None:
        raise ConfigError("--scheme: expected one of ...")

    with pytest.raises(ConfigError, match="--scheme"):
        forked.Child(bad_option).result()
    with pytest.raises(CarcrawlError, match="died"):
        forked.Child(lambda: os._exit(9)).result()


def test_report_still_shows_the_plan(crawl: Path, tmp_path: Path) -> None:
    page = write_report(crawl, tmp_path / "r.html").read_text()
    with DatasetDB.open(crawl) as db:
        plan = oracle.build_plan(db, remember_splits=False)
    for label, c in plan.split_counts().items():
        assert f"<td>{label}</td><td>{c['train']}</td><td>{c['val']}</td><td>{c['test']}</td>" in page
    assert f"<td>in the dataset</td><td>{len(plan.exported)}</td>" in page


# -- memory ------------------------------------------------------------------------------------


def synthetic_checkpoint(out: Path, n: int) -> None:
    """``n`` stored images (rows only, no files) from 1 000 queries, two URLs for every tenth
    image, listings of three, verdicts with top-5: the shape of a crawl, built through Store."""
    asyncio.run(_synthetic(out, n))


async def _synthetic(out: Path, n: int) -> None:
    store = await Store.open(out / "checkpoint.sqlite", commit_rows=5000)
    queries = [Query(f"q{k}", Labels(f"make{k % 50}", f"model{k}", "red")) for k in range(1000)]
    await store.add_queries(queries, ["bing"], 1000)
    tasks = await store.next_searches("bing", 0, 10_000)
    per = -(-n // len(tasks))
    for t_i, task in enumerate(tasks):
        cands = []
        for r in range(per):
            k = t_i * per + r
            if k >= n:
                break
            url = f"http://h{k % 64}.example/{k}.jpg"
            cands.append((r, Candidate(url=url, source="bing", page_url=f"http://site.example/{k // 3}",
                                       title=f"photo {k} of a {task.labels.model}"), url))
            if k % 10 == 0:
                cands.append((r, Candidate(url=url + "?m", source="bing"), url + "?m"))
        store.record_search_page(task, page=0, candidates=cands, next_cursor=None, found=len(cands),
                                 total_hits=None, done=True)
    await store.flush()
    after = 0
    verdicts = []
    while True:
        batch = await store.next_candidates(after, 5000)
        if not batch:
            break
        after = batch[-1].candidate_id
        for t in batch:
            k = int(t.url.rsplit("/", 1)[1].split(".")[0])
            sha = hashlib.sha256(str(k).encode()).hexdigest()
            store.record_fetched(t.candidate_id, sha256=sha, final_url=t.url, attempts=1,
                                 image=StoredImage(sha, f"images/{sha[:2]}/{sha[2:4]}/{sha}.jpg", "jpeg"), size=9000)
            if not t.url.endswith("?m"):
                verdicts.append(Verdict(sha256=sha, keep=k % 9 != 0, reason="vehicle:car",
                                        top5=tuple(Prediction(f"label{j}", 0.5 / (j + 1), j) for j in range(5)),
                                        width=240, height=180, model="test-model"))
        await store.flush()
        store.record_verdicts(verdicts)
        verdicts = []
        await store.flush()
    await store.close()


def _peak(out: Path, to: Path) -> int:
    tracemalloc.start()
    try:
        with DatasetDB.open(out) as db:
            plan = build_plan(db)
            assert plan.exported_count > 0
            from carcrawl.export.formats import write_parquet

            write_parquet(plan, to)
        return tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()


@pytest.fixture(scope="module")
def checkpoint_50k(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("synthetic") / "50k"
    synthetic_checkpoint(out, 50_000)
    return out


def test_dataset_side_memory_does_not_grow_with_the_checkpoint(tmp_path: Path, checkpoint_50k: Path) -> None:
    small, large = tmp_path / "10k", checkpoint_50k
    synthetic_checkpoint(small, 10_000)
    p_small = _peak(small, tmp_path / "s.parquet")
    p_large = _peak(large, tmp_path / "l.parquet")
    assert pq.read_metadata(tmp_path / "l.parquet").num_rows == 50_000
    per_image = (p_large - p_small) / 40_000
    # the splitter's compact state (~50 B per image, see carcrawl.export.splits) and nothing else:
    # the code before streaming held every record (~3 KB per image here)
    assert per_image < 200, f"{per_image:.0f} bytes per extra image (peaks {p_small} and {p_large})"


def _hashing_peak(out: Path) -> tuple[int, tuple[int, int]]:
    tracemalloc.start()
    try:
        result = hash_never_classified(out)
        return tracemalloc.get_traced_memory()[1], result
    finally:
        tracemalloc.stop()


def test_hashing_never_classified_images_holds_a_page_not_the_crawl(tmp_path: Path, checkpoint_50k: Path) -> None:
    """Export hashes the images a crawl without the classifier stored, a page at a time: its memory
    must not grow with the crawl (at the mission's 765 000 images, 2 KB each would be 1.5 GB). The
    synthetic checkpoints have no image files, so every image goes through the loop as an
    unreadable one (recorded, never decoded again)."""
    small, large = tmp_path / "10k", tmp_path / "50k"
    synthetic_checkpoint(small, 10_000)
    shutil.copytree(checkpoint_50k, large)
    p_small, (hashed_small, bad_small) = _hashing_peak(small)
    p_large, (hashed_large, bad_large) = _hashing_peak(large)
    assert hashed_small == bad_small > 8_000 and hashed_large == bad_large > 40_000
    assert hash_never_classified(large) == (0, 0)  # every image has its row: nothing to do again
    per_image = (p_large - p_small) / (hashed_large - hashed_small)
    assert per_image < 50, f"{per_image:.0f} bytes per extra image (peaks {p_small} and {p_large})"


ORPHAN_SCRIPT = """
import sys, time
from carcrawl.export import forked
child = forked.Child(lambda: time.sleep(120))
print(child.pid, flush=True)
time.sleep(120)
"""


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="forks only on Linux")
def test_a_forked_part_dies_with_its_parent() -> None:
    """A SIGKILLed export (nothing of it runs to clean up) leaves no worker reading on."""
    parent = subprocess.Popen([sys.executable, "-c", ORPHAN_SCRIPT], stdout=subprocess.PIPE, text=True)
    try:
        assert parent.stdout is not None
        child = int(parent.stdout.readline())
        os.kill(child, 0)  # running
    finally:
        parent.kill()
        parent.wait(30)
    for _ in range(200):  # the kernel's signal is immediate; the child is reaped by init
        try:
            os.kill(child, 0)
        except ProcessLookupError:
            break
        with open(f"/proc/{child}/stat") as f:
            if f.read().split(") ", 1)[1].startswith("Z"):
                break  # killed, waiting for init to reap it
        time.sleep(0.05)
    else:
        pytest.fail(f"the forked part {child} outlived its parent")


def _children(pid: int) -> list[int]:
    with open(f"/proc/{pid}/task/{pid}/children") as f:
        return [int(c) for c in f.read().split()]


def _gone(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().split(") ", 1)[1].startswith("Z")
    except FileNotFoundError:
        return True


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="forks only on Linux")
def test_sigterm_during_an_export_leaves_no_file_and_no_worker(checkpoint_50k: Path, tmp_path: Path) -> None:
    """SIGTERM while the forked workers write their first-pass files: the export ends as after
    Ctrl-C, its temporary files removed and its workers ended, and the checkpoint is untouched."""
    to = tmp_path / "p.parquet"
    before = sqlite3.connect(checkpoint_50k / "checkpoint.sqlite").execute("SELECT count(*) FROM images").fetchone()
    proc = subprocess.Popen(
        [sys.executable, "-m", "carcrawl.cli", "export", str(checkpoint_50k), "--format", "parquet", "--no-dedup",
         "--to", str(to), "--workers", "2"], stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    try:
        for _ in range(6000):
            if list(tmp_path.glob(".p.parquet.pass1-*")) or proc.poll() is not None:
                break
            time.sleep(0.01)
        workers = _children(proc.pid)
        assert proc.poll() is None and workers, "the export ended before its first pass was seen"
        proc.send_signal(signal.SIGTERM)
        proc.wait(60)
    finally:
        proc.kill()
    assert proc.returncode == 128 + signal.SIGTERM, proc.stderr.read().decode()[-2000:]  # type: ignore[union-attr]
    assert list(tmp_path.iterdir()) == []
    for w in workers:
        for _ in range(200):
            if _gone(w):
                break
            time.sleep(0.05)
        else:
            pytest.fail(f"worker {w} outlived the export")
    after = sqlite3.connect(checkpoint_50k / "checkpoint.sqlite").execute("SELECT count(*) FROM images").fetchone()
    assert after == before


def test_the_compact_splitter_deals_as_the_old_code() -> None:
    """Random crawls (shared listings, skewed labels, remembered splits, ratios like 0.7/0.2/0.1
    whose deficits coincide but for float error), split by :class:`Splitter` and by the old
    in-memory code: the same split for every image."""
    import random

    from carcrawl.export.splits import SPLITS, Splitter

    for trial in range(36):
        rng = random.Random(trial)
        n = (60, 400, 3000)[trial % 3]
        names = [f"label{k}" for k in range((1, 4, 15)[trial % 4 % 3])]
        items = []
        for _ in range(n):
            sha = f"{rng.getrandbits(256):064x}"
            keys = tuple(f"page{rng.randrange(n // 3 + 1)}" for _ in range(rng.choice((0, 1, 1, 2))))
            items.append(oracle.SplitItem(sha, rng.choice(names), (*keys, sha)))
        ratios = ((0.7, 0.15, 0.15), (0.7, 0.2, 0.1), (0.5, 0.5, 0), (1, 1, 1), (0.6, 0.3, 0.1), (0, 1, 0))[trial % 6]
        previous = {it.sha256: rng.choice(SPLITS) for it in items if rng.random() < 0.2} if trial % 4 == 1 else {}
        want = oracle.assign_splits(items, ratios, trial, previous)

        ids = {name: i for i, name in enumerate(names)}
        splitter = Splitter()
        ordered = sorted(items, key=lambda it: it.sha256)
        for it in ordered:
            splitter.add(it.sha256, ids[it.label], it.group_keys, previous.get(it.sha256))
        got = splitter.assign(ratios, trial, names)
        assert {it.sha256: SPLITS[got[i]] for i, it in enumerate(ordered)} == want, (trial, ratios)
