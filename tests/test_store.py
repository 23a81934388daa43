"""The checkpoint on a real SQLite file: idempotent loading, batched commits, recovery, status."""

from __future__ import annotations

import sqlite3
from pathlib import Path

import pytest

from carcrawl.catalog import image_queries
from carcrawl.errors import CheckpointError
from carcrawl.models import Candidate, Labels, Query, Verdict
from carcrawl.store import Store, StoredImage, open_readonly, status_counts


async def test_queries_load_lazily_and_idempotently(tmp_path: Path) -> None:
    store = await Store.open(tmp_path / "c.sqlite")
    qs = image_queries()  # the full shipped catalogue: 1 046 x 10, generated lazily
    assert await store.add_queries(qs, ["bing", "openverse"], 50) == 10_460
    assert await store.add_queries(image_queries(), ["bing", "openverse"], 50) == 0
    tasks = await store.next_searches("bing", 0, 5)
    assert [t.text for t in tasks][:2] == ["white acura cl", "black acura cl"]
    assert tasks[0].labels == Labels(make="acura", model="cl", color="white")
    await store.close()
    con = open_readonly(tmp_path / "c.sqlite")
    st = status_counts(con)
    assert st["queries"] == 10_460
    # next_searches marked five in flight (committed on close)
    assert st["searches"]["by_state"] == {"pending": 20_915, "in_flight": 5}
    con.close()


async def test_batched_writes_commit_once_and_recover_in_flight(tmp_path: Path) -> None:
    path = tmp_path / "c.sqlite"
    store = await Store.open(path, commit_rows=10_000)
    await store.add_queries([Query("red ford mustang", Labels("ford", "mustang", "red"))], ["bing"], 10)
    (task,) = await store.next_searches("bing", 0, 10)
    cands = [(i, Candidate(url=f"http://h{i % 3}.example/{i}.jpg", source="bing", title=f"t{i}"), f"k{i}") for i in range(5)]
    store.record_search_page(task, page=0, candidates=cands, next_cursor="35", found=5, total_hits=None, done=False)
    # nothing is visible to another connection before the batch commits
    con = sqlite3.connect(path)
    assert con.execute("SELECT count(*) FROM candidates").fetchone()[0] == 0
    await store.flush()
    assert con.execute("SELECT count(*) FROM candidates").fetchone()[0] == 5
    todo = await store.next_candidates(0, 3)
    assert [t.url for t in todo] == [f"http://h{i % 3}.example/{i}.jpg" for i in range(3)]
    sha = "ab" * 32
    store.record_fetched(todo[0].candidate_id, sha256=sha, final_url=todo[0].url, attempts=1,
                         image=StoredImage(sha, "images/ab/ab/x.jpg", "jpeg"), size=1234)
    store.record_failure(todo[1].candidate_id, "http_404", 1)
    await store.flush()
    # simulate a kill: close the connection without finishing the run
    await store._db.close()

    store = await Store.open(path)
    recovered = await store.recover()
    assert recovered == {"searches": 1, "candidates": 1}  # one search and one candidate were in flight
    rows = dict(con.execute("SELECT url, state FROM candidates").fetchall())
    assert rows["http://h0.example/0.jpg"] == "done"
    assert rows["http://h1.example/1.jpg"] == "failed"
    assert rows["http://h2.example/2.jpg"] == "pending"
    (again,) = await store.next_searches("bing", 0, 10)
    assert again.cursor == "35" and again.pages == 1 and again.found == 5  # resumes at its page
    assert [v for v in await store.images_awaiting_verdict("", 10)] == [StoredImage(sha, "images/ab/ab/x.jpg", "jpeg")]
    store.record_verdicts([Verdict(sha256=sha, keep=True, reason="vehicle:sports car", model="m")])
    await store.close()
    st = status_counts(open_readonly(path))
    assert st["kept"] == 1 and st["reasons"] == {"http_404": 1}
    assert con.execute("PRAGMA integrity_check").fetchone()[0] == "ok"


async def test_duplicate_urls_are_stored_once(tmp_path: Path) -> None:
    store = await Store.open(tmp_path / "c.sqlite")
    for i in range(3):
        store.add_url_candidate(f"http://x.example/a.jpg?{i % 2}", f"key{i % 2}", Labels(category="cat"))
    await store.flush()
    assert len(await store.next_candidates(0, 10)) == 2
    assert store.new_candidates == 2  # what the download bar's total counts: distinct URLs
    await store.close()


async def test_foreign_sqlite_file_is_refused(tmp_path: Path) -> None:
    p = tmp_path / "other.sqlite"
    con = sqlite3.connect(p)
    con.execute("PRAGMA application_id=42")
    con.execute("CREATE TABLE t(x)")
    con.commit()
    con.close()
    with pytest.raises(CheckpointError, match="not a carcrawl checkpoint"):
        await Store.open(p)
    garbage = tmp_path / "garbage.sqlite"
    garbage.write_bytes(b"this is not a database at all" * 100)
    with pytest.raises(CheckpointError, match="not an SQLite database"):
        await Store.open(garbage)


async def test_status_counters_follow_every_change_and_an_old_checkpoint_is_counted_once(tmp_path: Path) -> None:
    """status reads counters the triggers keep: they must equal a count of the rows after inserts,
    state changes, a verdict changing its mind about a near-duplicate copy, deletes; and a
    checkpoint written before the counters existed gets them on its next open."""
    from helpers import assert_status_counters_match_rows

    from carcrawl.store.dataset import DatasetDB

    path = tmp_path / "c.sqlite"
    store = await Store.open(path)
    for i in range(6):
        store.add_url_candidate(f"http://h.example/{i}.jpg", f"k{i}", Labels(category="cat"))
    await store.flush()
    tasks = await store.next_candidates(0, 10)
    shas = [f"{i:02x}" * 32 for i in range(4)]
    for t, sha in zip(tasks, shas, strict=False):
        store.record_fetched(t.candidate_id, sha256=sha, final_url=t.url, attempts=1,
                             image=StoredImage(sha, f"images/{sha[:2]}/{sha}.jpg", "jpeg"), size=1000)
    store.record_failure(tasks[4].candidate_id, "http_404", 1)
    store.record_verdicts([Verdict(shas[0], True, "vehicle:sports car", model="m"),
                           Verdict(shas[1], True, "vehicle:sports car", model="m"),
                           Verdict(shas[2], False, "not_vehicle:tabby", model="m")])
    await store.close()
    assert_status_counters_match_rows(path)
    with DatasetDB.open(path) as db:  # the dataset side marks shas[1] a copy of shas[0]
        db.replace_near_duplicates([(shas[0], shas[0], shas[0], 0), (shas[1], shas[0], shas[0], 5)])
    st = status_counts(open_readonly(path))
    assert (st["kept"], st["kept_duplicates"], st["rejected_by_classifier"]) == (1, 1, 1)
    assert_status_counters_match_rows(path)

    store = await Store.open(path)  # a verdict is written again (a re-run), now rejecting the copy
    store.record_verdicts([Verdict(shas[1], False, "interior", model="m")])
    await store.close()
    assert status_counts(open_readonly(path))["kept_duplicates"] == 0
    assert_status_counters_match_rows(path)
    con = sqlite3.connect(path)
    con.execute("DELETE FROM verdicts WHERE sha256 = ?", (shas[0],))
    con.execute("DELETE FROM images WHERE sha256 = ?", (shas[3],))
    con.execute("DELETE FROM candidates WHERE url_key = 'k5'")
    con.commit()
    assert_status_counters_match_rows(path)

    # a checkpoint from before the counters: no table, no triggers, no mark
    for (name,) in con.execute("SELECT name FROM sqlite_master WHERE type = 'trigger'").fetchall():
        con.execute(f'DROP TRIGGER "{name}"')
    con.execute("DROP TABLE state_counts")
    con.execute("DELETE FROM meta WHERE key = 'state_counts'")
    con.commit()
    before = status_counts(open_readonly(path))  # read-only: counted from the rows
    await (await Store.open(path)).close()  # the next writer counts once, then keeps counting
    assert_status_counters_match_rows(path)
    assert status_counts(open_readonly(path)) == before


async def test_unclassified_images_are_written_in_their_final_state(tmp_path: Path) -> None:
    """Classification off: the image row is ``done``/``classify_disabled`` at once; an image an
    earlier run left waiting for a verdict is marked so too; one that has its verdict keeps it."""
    path = tmp_path / "c.sqlite"
    store = await Store.open(path)
    for i in range(4):
        store.add_url_candidate(f"http://x.example/{i}.jpg", f"k{i}", Labels(category="cat"))
    await store.flush()
    todo = await store.next_candidates(0, 10)
    new, waiting, judged = "a1" * 32, "b2" * 32, "c3" * 32
    # an earlier run (classification on) stored two images: one got its verdict, one did not
    for t, sha in ((todo[0], waiting), (todo[1], judged)):
        store.record_fetched(t.candidate_id, sha256=sha, final_url=t.url, attempts=1,
                             image=StoredImage(sha, f"images/{sha[:2]}/{sha[2:4]}/{sha}.jpg", "jpeg"), size=10)
    store.record_verdicts([Verdict(sha256=judged, keep=False, reason="not_vehicle", model="m")])
    await store.flush()
    # this run fetches a new image and the same bytes as both earlier ones, classification off
    for t, sha in ((todo[2], new), (todo[3], waiting), (todo[3], judged)):
        store.record_fetched(t.candidate_id, sha256=sha, final_url=t.url, attempts=1,
                             image=StoredImage(sha, f"images/{sha[:2]}/{sha[2:4]}/{sha}.jpg", "jpeg"), size=10,
                             unclassified="classify_disabled")
    await store.close()
    con = sqlite3.connect(path)
    rows = {sha: (state, reason) for sha, state, reason in con.execute("SELECT sha256, state, reason FROM images")}
    assert rows == {new: ("done", "classify_disabled"), waiting: ("done", "classify_disabled"),
                    judged: ("rejected", "not_vehicle")}
    assert con.execute("SELECT count(*) FROM candidates WHERE state='done'").fetchone()[0] == 4
    con.close()
