"""Build real checkpoints for the dataset tests (no tests in here; imported by test_export*,
test_report*, test_review*, test_refine*).

Everything goes through our own code: queries and search pages through ``Store``, image bytes
(real photos from ../shared/images, or Pillow-made copies of them) through ``ImageFiles``,
verdicts as real ``Verdict`` records through ``Store.record_verdicts``. The classifier itself is
not run: verdicts and embeddings are given by the test (embeddings, where used, are a
deterministic function of the pixels, see :func:`pixel_embedding`).
"""

from __future__ import annotations

import asyncio
import hashlib
import io
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from helpers import IMAGES
from PIL import Image, ImageDraw

from carcrawl.filestore import ImageFiles
from carcrawl.magic import sniff_image
from carcrawl.models import Candidate, Labels, Prediction, Query, Verdict
from carcrawl.store import Store


@dataclass
class Shot:
    """One URL in the fake crawl and the image bytes it delivered (None = the download failed)."""

    url: str
    labels: Labels
    body: bytes | None
    source: str = "bing"
    page_url: str | None = None
    title: str | None = None
    license: str | None = None
    keep: bool = True
    reason: str = "vehicle:sports car"
    top5: tuple[tuple[str, float], ...] = (("sports car", 0.8), ("convertible", 0.1))
    embedding: bytes | None = None
    extra: dict[str, str] = field(default_factory=dict)


def vehicle_photos(n: int) -> list[Path]:
    return sorted(p for p in (IMAGES / "vehicle").iterdir() if p.suffix.lower() in (".jpg", ".jpeg", ".png"))[:n]


def other_photos(n: int) -> list[Path]:
    return sorted(p for p in (IMAGES / "other").iterdir() if p.suffix.lower() in (".jpg", ".jpeg", ".png"))[:n]


def jpeg(im: Image.Image, quality: int = 90) -> bytes:
    buf = io.BytesIO()
    im.convert("RGB").save(buf, "JPEG", quality=quality)
    return buf.getvalue()


def copies(path: Path) -> dict[str, bytes]:
    """The copies of one photo that search engines return: resized, recompressed at q=40, cropped
    by 10 %, watermarked with text."""
    im = Image.open(path).convert("RGB")
    w, h = im.size
    wm = im.copy()
    ImageDraw.Draw(wm).text((w * 0.1, h * 0.8), "(c) stock photos 2024", fill=(255, 255, 255), font_size=max(12, h // 12))
    return {
        "resized": jpeg(im.resize((w // 2, h // 2))),
        "q40": jpeg(im, 40),
        "cropped": jpeg(im.crop((int(w * 0.1), int(h * 0.1), w, h))),
        "watermarked": jpeg(wm),
    }


def pixel_embedding(body: bytes) -> bytes:
    """A stand-in embedding (float16, 48 values): the centred 16-bin histograms of R, G and B.
    Like a real network's it barely moves under resizing, recompression, a 10 % crop or a
    watermark; unlike one it knows nothing about what the picture shows."""
    im = Image.open(io.BytesIO(body)).convert("RGB").resize((128, 128))
    hist = np.asarray(im.histogram(), dtype=np.float32).reshape(3, 16, 16).sum(axis=2).ravel()
    hist = hist / hist.sum()
    return (hist - hist.mean()).astype("<f2").tobytes()


def build_crawl(out: Path, shots: list[Shot], *, bodytype_hits: dict[tuple[str, str, str], int] | None = None) -> Path:
    """Write a checkpoint + images for ``shots`` into ``out``; returns the checkpoint path."""
    asyncio.run(_build(out, shots, bodytype_hits or {}))
    return out / "checkpoint.sqlite"


async def _build(out: Path, shots: list[Shot], bodytype_hits: dict[tuple[str, str, str], int]) -> None:
    store = await Store.open(out / "checkpoint.sqlite")
    files = ImageFiles(out)
    files.prepare()
    run = await store.start_run("test", "{}")
    sources = sorted({s.source for s in shots})
    queries = {s.labels: Query(" ".join(x for x in (s.labels.color, s.labels.make, s.labels.model,
                                                     s.labels.category) if x) or "x", s.labels) for s in shots}
    await store.add_queries(queries.values(), sources, 1000)
    if bodytype_hits:
        await store.add_queries(
            [Query(f"{mk} {md} {bt}", Labels(make=mk, model=md, body_type=bt), kind="bodytype") for mk, md, bt in bodytype_hits],
            ["bing"], 0)
    for source in sources:
        for task in await store.next_searches(source, 0, 10_000):
            if task.kind == "bodytype":
                hits = bodytype_hits[(task.labels.make, task.labels.model, task.labels.body_type)]
                store.record_search_page(task, page=0, candidates=[], next_cursor=None, found=0, total_hits=hits, done=True)
                continue
            mine = [s for s in shots if s.source == source and s.labels == task.labels]
            cands = [(i + 1, Candidate(url=s.url, source=source, page_url=s.page_url, title=s.title, license=s.license),
                      s.url) for i, s in enumerate(mine)]
            store.record_search_page(task, page=0, candidates=cands, next_cursor=None, found=len(cands),
                                     total_hits=None, done=True)
    await store.flush()
    by_url = {s.url: s for s in shots}
    verdicts: dict[str, Verdict] = {}
    fetched = failed = 0
    for t in await store.next_candidates(0, 100_000):
        s = by_url[t.url]
        if s.body is None:
            store.record_failure(t.candidate_id, "http_404", 1)
            failed += 1
            continue
        sha = hashlib.sha256(s.body).hexdigest()
        fmt = sniff_image(s.body[:64]) or "jpeg"
        image = await files.write(sha, fmt, s.body)
        store.record_fetched(t.candidate_id, sha256=sha, final_url=t.url, attempts=1, image=image, size=len(s.body))
        fetched += 1
        if sha not in verdicts:
            with Image.open(io.BytesIO(s.body)) as im:
                w, h = im.size
            verdicts[sha] = Verdict(
                sha256=sha, keep=s.keep, reason=s.reason,
                top5=tuple(Prediction(label, score, i) for i, (label, score) in enumerate(s.top5)),
                width=w, height=h, embedding=s.embedding, model="test-model")
        store.record_progress(run, len(queries), fetched, failed, len(verdicts), 0)
    await store.flush()
    store.record_verdicts(verdicts.values())
    await store.finish_run(run, "finished")
    await store.close()
    await files.close()
