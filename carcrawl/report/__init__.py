"""``carcrawl report``: one static HTML page (plus a ``<name>_assets/`` folder of thumbnails) that
opens from disk, no network: what the crawl found, what it threw away and why, where the images
came from under which licences, how fast it went, and a spot-check gallery the reviewer marks
right/wrong and saves as ``marks.json`` for ``carcrawl review import``.

Everything the web supplied (titles, URLs, labels) is HTML-escaped; only http(s) URLs become
links; the page's Content-Security-Policy lets only its own nonce-tagged script run.
"""

from __future__ import annotations

import hashlib
import html
import os
import random
import re
import secrets
import time
from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from importlib import resources
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from carcrawl.export.plan import MARKED_WRONG, REJECTED_BY_MODEL, Entry, build_plan
from carcrawl.store.dataset import DatasetDB

PER_CLASS = 8
REJECTED_SAMPLE = 24
THUMB_PX = 256


def _static(name: str) -> str:
    return (resources.files("carcrawl.report") / "static" / name).read_text(encoding="utf-8")


def esc(value: object) -> str:
    return html.escape("" if value is None else str(value), quote=True)


def link(url: str | None, text: str | None = None) -> str:
    """An ``<a>`` for http(s) URLs only (a ``javascript:`` URL becomes plain escaped text)."""
    if not url:
        return ""
    label = esc(text if text is not None else url)
    try:
        parts = urlsplit(url)
    except ValueError:
        return label
    if parts.scheme.lower() not in ("http", "https") or not parts.netloc:
        return label
    return f'<a href="{esc(url)}" rel="noopener noreferrer nofollow" target="_blank">{label}</a>'


def _table(head: list[str], rows: list[list[Any]]) -> str:
    th = "".join(f"<th>{esc(h)}</th>" for h in head)
    body = "".join("<tr>" + "".join(f"<td>{esc(c)}</td>" for c in r) + "</tr>" for r in rows)
    return f"<table><thead><tr>{th}</tr></thead><tbody>{body}</tbody></table>"


def throughput_svg(samples: list[tuple[float, int, int, int, int, int]], width: int = 720, height: int = 220) -> str:
    """URLs finished and images classified per second over the crawl's wall-clock time, as inline
    SVG (one polyline each; runs after a resume continue on the same time axis)."""
    points: list[tuple[float, float, float]] = []  # (t, urls/s, classified/s)
    prev: dict[int, tuple[float, int, int]] = {}
    for ts, run, fetched, failed, classified, _bytes in samples:
        if run in prev:
            t0, done0, cls0 = prev[run]
            dt = ts - t0
            if dt > 0:
                points.append((ts, (fetched + failed - done0) / dt, (classified - cls0) / dt))
        prev[run] = (ts, fetched + failed, classified)
    if len(points) < 2:
        return '<p class="muted">Not enough progress samples for a throughput plot.</p>'
    t_min, t_max = points[0][0], points[-1][0]
    y_max = max(max(p[1], p[2]) for p in points) or 1.0
    pad_l, pad_b, pad_t, pad_r = 50, 30, 10, 10
    w, h = width - pad_l - pad_r, height - pad_b - pad_t

    def xy(t: float, v: float) -> str:
        x = pad_l + (t - t_min) / max(t_max - t_min, 1e-9) * w
        y = pad_t + h - v / y_max * h
        return f"{x:.1f},{y:.1f}"

    urls = " ".join(xy(t, u) for t, u, _c in points)
    cls = " ".join(xy(t, c) for t, _u, c in points)
    span = t_max - t_min
    return (
        f'<svg id="throughput" width="{width}" height="{height}" viewBox="0 0 {width} {height}" role="img">'
        f'<title>throughput over time</title>'
        f'<line x1="{pad_l}" y1="{pad_t + h}" x2="{pad_l + w}" y2="{pad_t + h}" stroke="#999"/>'
        f'<line x1="{pad_l}" y1="{pad_t}" x2="{pad_l}" y2="{pad_t + h}" stroke="#999"/>'
        f'<text x="{pad_l - 4}" y="{pad_t + 10}" text-anchor="end">{y_max:.1f}/s</text>'
        f'<text x="{pad_l - 4}" y="{pad_t + h}" text-anchor="end">0</text>'
        f'<text x="{pad_l}" y="{height - 8}">0 s</text>'
        f'<text x="{pad_l + w}" y="{height - 8}" text-anchor="end">{span:.0f} s</text>'
        f'<polyline points="{urls}" fill="none" stroke="#37a" stroke-width="1.5"/>'
        f'<polyline points="{cls}" fill="none" stroke="#d73" stroke-width="1.5"/>'
        f'<text x="{pad_l + 10}" y="{pad_t + 12}" fill="#37a">URLs finished/s</text>'
        f'<text x="{pad_l + 130}" y="{pad_t + 12}" fill="#d73">images classified/s</text>'
        "</svg>"
    )


def _thumbnail(src: Path, dst: Path) -> bool:
    if dst.exists():
        return True
    from PIL import Image, ImageOps

    try:
        with Image.open(src) as im:
            im.draft("RGB", (THUMB_PX, THUMB_PX))
            im = ImageOps.exif_transpose(im)
            im.thumbnail((THUMB_PX, THUMB_PX))
            tmp = dst.with_suffix(".part")
            im.convert("RGB").save(tmp, "JPEG", quality=80)
            os.replace(tmp, dst)
        return True
    except Exception:  # noqa: BLE001 - a broken image shows as a missing thumbnail, never a crash
        return False


def _card(e: Entry, thumb: str | None, original: str) -> str:
    r, c = e.record, e.candidate
    top = ", ".join(f"{esc(label)} {score:.2f}" for label, score in r.top5[:3])
    verdict = "kept" if r.keep else ("rejected" if r.keep is False else "not classified")
    img = f'<img src="{esc(thumb)}" alt="{esc(e.label or "")}" loading="lazy">' if thumb else '<p class="muted">no thumbnail</p>'
    source = ""
    if c is not None:
        source = f"{esc(c.source)}: {link(c.page_url, 'page') or ''} {link(c.url, 'image')}"
        if c.title:
            source += f'<br><span class="muted">{esc(c.title[:160])}</span>'
        if c.license:
            source += f"<br>licence: {link(c.license_url, c.license) or esc(c.license)}"
    extra = f"<br>refined score {r.refined_score:.2f}" if r.refined_score is not None else ""
    return (
        f'<div class="card" data-sha="{esc(r.sha256)}" data-mark="{esc(r.mark or "")}">'
        f'<a href="{esc(original)}" target="_blank">{img}</a>'
        f'<div class="label">{esc(e.label or "(no label)")}</div>'
        f'<div>{esc(verdict)}: {esc(r.verdict_reason or r.reason or "")}{extra}</div>'
        f'<div class="muted">top: {top}</div>'
        f"<div>{source}</div>"
        f'<div class="muted">{esc(r.sha256[:12])} · {esc(r.width)}×{esc(r.height)} · split {esc(e.split or "-")}</div>'
        '<div class="marks"><button type="button" data-mark="right">right</button>'
        '<button type="button" data-mark="wrong">wrong</button></div></div>'
    )


def _pick_scheme(db: DatasetDB) -> str:
    """The first scheme of make_model, category, body_type under which some image has a label
    (counted in SQL, so the plan is built once)."""
    present = db.label_presence()
    return next((s for s in ("make_model", "category", "body_type") if present[s]), "make_model")


def write_report(target: str | Path, to: str | Path | None = None, *, per_class: int = PER_CLASS,
                 seed: int = 0, scheme: str | None = None) -> Path:
    """Write the report; returns the HTML file's path (default ``<target>/report.html``).

    The plan is built once (one pass over the checkpoint); the gallery samples from its 4-byte
    indices per class and per flag, and only the sampled images' records are fetched again."""
    out = Path(to) if to is not None else Path(target) / "report.html"
    out.parent.mkdir(parents=True, exist_ok=True)
    assets = out.parent / f"{out.stem}_assets"
    (assets / "thumbs").mkdir(parents=True, exist_ok=True)
    with DatasetDB.open(target) as db:
        scheme = scheme or _pick_scheme(db)
        plan = build_plan(db, scheme=scheme, remember_splits=False)
        by_class = plan.class_indices()
        rejected_ix = plan.flagged(REJECTED_BY_MODEL)
        marked_wrong = list(plan.entries_at(plan.flagged(MARKED_WRONG)[:REJECTED_SAMPLE]))
        rng = random.Random(seed)
        sample_ix = {label: rng.sample(ix, min(per_class, len(ix))) for label, ix in sorted(by_class.items())}
        rejected_pick = rng.sample(rejected_ix, min(REJECTED_SAMPLE, len(rejected_ix)))
        wanted = [i for ix in sample_ix.values() for i in ix] + rejected_pick
        fetched = {e.record.sha256: e for e in plan.entries_at(wanted)}
        sample = {label: [fetched[plan.sha(i)] for i in ix if plan.sha(i) in fetched] for label, ix in sample_ix.items()}
        rejected_sample = [fetched[plan.sha(i)] for i in rejected_pick if plan.sha(i) in fetched]
        class_sizes = {label: len(ix) for label, ix in by_class.items()}
        n_rejected = len(rejected_ix)
        del by_class, rejected_ix
        status = db.status()
        sources = db.sources()
        licences = db.licences()
        progress = db.progress()
        report_id = hashlib.sha256(str(db.path.resolve()).encode()).hexdigest()[:16]
    shown = [e for es in sample.values() for e in es] + rejected_sample + marked_wrong

    def thumb(e: Entry) -> tuple[str, str | None]:
        dst = assets / "thumbs" / f"{e.record.sha256}.jpg"
        ok = _thumbnail(plan.out_dir / e.record.path, dst)
        return e.record.sha256, (f"{assets.name}/thumbs/{dst.name}" if ok else None)

    with ThreadPoolExecutor(max(1, min(8, os.cpu_count() or 1))) as pool:
        thumbs = dict(pool.map(thumb, shown))

    def original(e: Entry) -> str:
        return Path(os.path.relpath((plan.out_dir / e.record.path).resolve(), out.parent.resolve())).as_posix()

    per_class_counts = plan.split_counts()
    excluded = plan.excluded_counts()
    cand = status.get("candidates", {}).get("by_state", {})
    src_rows: dict[str, Counter[str]] = {}
    for source, state, n in sources:
        src_rows.setdefault(source, Counter())[state] += n
    parts: list[str] = [
        f"<h1>carcrawl report</h1><p class='muted'>{esc(plan.out_dir)} · written {esc(time.strftime('%Y-%m-%d %H:%M'))}"
        f" · labels: {esc(scheme)}</p>",
        '<div id="toolbar"><button type="button" id="save-marks">save marks</button> '
        '<button type="button" id="clear-marks">clear marks</button> <span id="mark-count"></span> '
        '<span class="muted">then: <code>carcrawl review import marks.json --out DIR</code></span></div>',
        "<h2>Summary</h2>",
        _table(["", "count"], [
            ["queries", status.get("queries", 0)],
            ["candidate URLs", sum(cand.values())],
            ["downloaded", cand.get("done", 0)],
            ["failed or rejected URLs", cand.get("failed", 0) + cand.get("rejected", 0)],
            ["kept by the classifier", status.get("kept", 0)],
            ["rejected by the classifier", status.get("rejected_by_classifier", 0)],
            ["in the dataset", plan.exported_count],
            ["classes", len(per_class_counts)],
        ]),
        "<h2>Classes and splits</h2>",
        _table(["class", "train", "val", "test", "total"],
               [[label, c["train"], c["val"], c["test"], sum(c.values())] for label, c in per_class_counts.items()]),
        "<h2>Why images are not in the dataset</h2><div class='cols'>",
        _table(["reason (dataset)", "images"], [[k, v] for k, v in excluded.items()]),
        _table(["reason (URLs and images)", "count"], [[k, v] for k, v in list(status.get("reasons", {}).items())[:30]]),
        "</div><h2>Sources and licences</h2><div class='cols'>",
        _table(["source", "URLs", "downloaded", "failed", "rejected", "pending"],
               [[s, sum(c.values()), c["done"], c["failed"], c["rejected"], c["pending"] + c["in_flight"]]
                for s, c in sorted(src_rows.items())]),
        _table(["licence", "downloaded"], [[lic, n] for lic, n in licences]),
        "</div><h2>Throughput</h2>",
        throughput_svg(progress),
        f"<h2>Spot check</h2><p class='muted'>A random sample of up to {per_class} images per class (seed {seed}). "
        "Mark what is wrong (and what is right); marks win over the model in every later export and train "
        "<code>carcrawl refine</code>.</p>",
    ]
    for label, entries in sample.items():
        parts.append(f"<h3>{esc(label)} <span class='muted'>({class_sizes[label]} images)</span></h3>")
        parts.append('<div class="gallery">' + "".join(_card(e, thumbs[e.record.sha256], original(e)) for e in entries)
                     + "</div>")
    if rejected_sample:
        parts.append(f"<h3>Rejected by the model <span class='muted'>(sample of {len(rejected_sample)} of "
                     f"{n_rejected}; mark 'right' to put one back)</span></h3>")
        parts.append('<div class="gallery">' + "".join(_card(e, thumbs[e.record.sha256], original(e))
                                                       for e in rejected_sample) + "</div>")
    if marked_wrong:
        parts.append(f"<h3>Marked wrong by the reviewer <span class='muted'>({len(marked_wrong)} shown; "
                     "click 'wrong' again to clear)</span></h3>")
        parts.append('<div class="gallery">' + "".join(_card(e, thumbs[e.record.sha256], original(e))
                                                       for e in marked_wrong) + "</div>")
    nonce = secrets.token_urlsafe(16)
    values = {"css": _static("report.css"), "js": _static("report.js"), "nonce": nonce, "report_id": report_id,
              "title": esc(f"carcrawl report: {plan.out_dir.name}"), "body": "\n".join(parts)}
    # one pass: text inserted for one placeholder is never scanned for another
    page = re.sub(r"\{\{(\w+)\}\}", lambda m: values[m.group(1)], _static("template.html"))
    tmp = out.with_suffix(".html.part")
    tmp.write_text(page, encoding="utf-8")
    os.replace(tmp, out)
    return out
