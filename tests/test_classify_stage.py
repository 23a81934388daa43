"""The classify stage as the pipeline drives it: a real model on real photos from the bounded
queue, batches in flight concurrently (the GPU's decode/inference overlap, exercised here on the
CPU), duplicates never judged twice, the same verdicts as one batch at a time."""

from __future__ import annotations

import asyncio
import hashlib
import sqlite3
from pathlib import Path

import pytest
from helpers import IMAGES

from carcrawl.classify_stage import ClassifyStage
from carcrawl.config import ClassifyConfig
from carcrawl.download import ClassifyItem
from carcrawl.filestore import ImageFiles
from carcrawl.stats import Stats
from carcrawl.store import Store

pytestmark = pytest.mark.usefixtures("shared")


async def _run(tmp: Path, items: list[ClassifyItem], depth: int) -> dict[str, tuple[int, str]]:
    store = await Store.open(tmp / "checkpoint.sqlite", commit_rows=50, commit_interval=0.2)
    queue: asyncio.Queue[ClassifyItem | None] = asyncio.Queue(16)
    cfg = ClassifyConfig(device="cpu", batch_size=6, batch_timeout=0.05)
    stage = ClassifyStage(store, ImageFiles(tmp), cfg, Stats(), queue, depth=depth)

    async def feed() -> None:
        for it in items:
            await queue.put(it)
        await queue.put(None)

    await asyncio.gather(stage.run(), feed())
    await store.close()
    con = sqlite3.connect(tmp / "checkpoint.sqlite")
    return {sha: (keep, reason) for sha, keep, reason in con.execute("SELECT sha256, keep, reason FROM verdicts")}


async def test_batches_in_flight_give_the_same_verdicts_and_judge_duplicates_once(tmp_path: Path) -> None:
    photos = sorted(p for p in IMAGES.rglob("*.jpg"))[::4][:30]  # interiors, others and vehicles
    items = []
    for p in photos:
        body = p.read_bytes()
        items.append(ClassifyItem(hashlib.sha256(body).hexdigest(), body))
    items += items[:10]  # the same images again, arriving while their first copies are in flight
    items.append(ClassifyItem("0" * 64, b"\xff\xd8\xff\xe0 not really a jpeg"))
    (tmp_path / "a").mkdir()
    (tmp_path / "b").mkdir()
    serial = await _run(tmp_path / "a", items, depth=1)
    overlapped = await _run(tmp_path / "b", items, depth=2)
    assert len(serial) == len({it.sha256 for it in items})
    assert overlapped == serial
    assert serial["0" * 64] == (0, "decode_error")
    assert sum(keep for keep, _ in serial.values()) > 0
