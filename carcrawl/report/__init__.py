"""``carcrawl report``: one static HTML page (plus a ``<name>_assets/`` folder of thumbnails) that
opens from disk, no network: what the crawl found, what it threw away and why, where the images
came from under which licences, how fast it went, and a spot-check gallery the reviewer marks
right/wrong and saves as ``marks.json`` for ``carcrawl review import``.

The page is a jinja2 template (``static/report.html.j2``) rendered with autoescape on, so web text
(titles, URLs, labels) is escaped unless code says otherwise, and only our own CSS and script
are inserted as they are; only http(s) URLs become links; the page's Content-Security-Policy
lets only its own nonce-tagged script run.
"""

from __future__ import annotations

import hashlib
import os
import random
import re
import secrets
import time
from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from functools import lru_cache
from importlib import resources
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from markupsafe import Markup

from carcrawl.export.plan import MARKED_WRONG, REJECTED_BY_MODEL, Entry, build_plan
from carcrawl.store.dataset import DatasetDB

PER_CLASS = 8
REJECTED_SAMPLE = 24
THUMB_PX = 256


def _static(name: str) -> str:
    return (resources.files("carcrawl.report") / "static" / name).read_text(encoding="utf-8")


@lru_cache(maxsize=1)
def _env() -> Any:
    import jinja2

    env = jinja2.Environment(autoescape=True, undefined=jinja2.StrictUndefined, keep_trailing_newline=True)
    env.globals["is_web_url"] = is_web_url
    return env


def is_web_url(url: str | None) -> bool:
    """Whether ``url`` may become a link: http(s) with a host (never ``javascript:``, ``data:``...)."""
    if not url:
        return False
    try:
        parts = urlsplit(url)
    except ValueError:
        return False
    return parts.scheme.lower() in ("http", "https") and bool(parts.netloc)


def link(url: str | None, text: str | None = None) -> Markup:
    """An ``<a>`` for http(s) URLs only (a ``javascript:`` URL becomes plain escaped text)."""
    if not url:
        return Markup("")
    label = text if text is not None else url
    if not is_web_url(url):
        return Markup("{}").format(label)
    return Markup('<a href="{}" rel="noopener noreferrer nofollow" target="_blank">{}</a>').format(url, label)


def plural(n: int, word: str) -> str:
    """``1 image``, ``2 images``."""
    return f"{n} {word}" if n == 1 else f"{n} {word}s"


_CC = re.compile(r"^(?:cc\s+)?(by(?:\s+nc)?(?:\s+(?:nd|sa))?)(?:\s+(\d+(?:\.\d+)?))?$")
_CC0 = re.compile(r"^(?:cc\s*0|cc\s+zero|cc0)(?:\s+(?:1(?:\.0)?|universal))*$")
_PD = re.compile(r"^(?:public\s+domain(?:\s+mark)?|pdm|pd)(?:\s+1(?:\.0)?)?$")


def licence_name(raw: str) -> str:
    """One name per licence, whatever spelling the engine used: ``CC0`` and ``CC0 1.0`` are
    ``CC0 1.0``; ``Public domain`` and ``Public Domain Mark 1.0`` are ``Public domain``;
    ``cc-by-sa 4.0`` and ``CC BY-SA 4.0`` are ``CC BY-SA 4.0``. Anything else is kept as given."""
    key = " ".join(raw.replace("-", " ").replace("_", " ").lower().split())
    if _CC0.match(key):
        return "CC0 1.0"
    if _PD.match(key):
        return "Public domain"
    m = _CC.match(key)
    if m:
        name = "CC " + "-".join(m.group(1).upper().split())
        return f"{name} {m.group(2)}" if m.group(2) else name
    return raw.strip() or "unknown"


def merge_licences(rows: list[tuple[str, int]]) -> list[tuple[str, int]]:
    """Licence counts under :func:`licence_name`, most common first."""
    merged: Counter[str] = Counter()
    for raw, n in rows:
        merged[licence_name(raw)] += n
    return merged.most_common()


_SVG = """<svg id="throughput" width="{{ width }}" height="{{ height }}" viewBox="0 0 {{ width }} {{ height }}" role="img">\
<title>throughput over time</title>\
<line x1="{{ l }}" y1="{{ b }}" x2="{{ r }}" y2="{{ b }}" stroke="#999"/>\
<line x1="{{ l }}" y1="{{ t }}" x2="{{ l }}" y2="{{ b }}" stroke="#999"/>\
<text x="{{ l - 4 }}" y="{{ t + 10 }}" text-anchor="end">{{ "%.1f"|format(y_max) }}/s</text>\
<text x="{{ l - 4 }}" y="{{ b }}" text-anchor="end">0</text>\
{% for x, label in ticks %}<text x="{{ "%.1f"|format(x) }}" y="{{ height - 8 }}" text-anchor="middle">{{ label }}</text>{% endfor %}\
<polyline points="{{ urls }}" fill="none" stroke="#37a" stroke-width="1.5"/>\
<polyline points="{{ cls }}" fill="none" stroke="#d73" stroke-width="1.5"/>\
<text x="{{ l + 10 }}" y="{{ t + 12 }}" fill="#37a">URLs finished/s</text>\
<text x="{{ l + 130 }}" y="{{ t + 12 }}" fill="#d73">images classified/s</text>\
</svg>"""


def _tick_label(seconds: float) -> str:
    if seconds >= 7200:
        return f"{seconds / 3600:.1f} h"
    if seconds >= 600:
        return f"{seconds / 60:.0f} min"
    return f"{seconds:.1f} s" if seconds < 20 else f"{seconds:.0f} s"


def throughput_svg(samples: list[tuple[float, int, int, int, int, int]], width: int = 720, height: int = 220,
                   span: tuple[float, float] | None = None) -> Markup:
    """URLs finished and images classified per second over the crawl's wall-clock time, as inline
    SVG (one polyline each; runs after a resume continue on the same time axis). ``span`` is
    (first run's start, last run's end): the axis covers the whole crawl, not only its samples."""
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
        return Markup('<p class="muted">Not enough progress samples for a throughput plot.</p>')
    first_sample = min(ts for ts, *_ in samples)
    t_min = min(span[0], first_sample) if span else first_sample
    t_max = max(span[1], points[-1][0]) if span else points[-1][0]
    y_max = max(max(p[1], p[2]) for p in points) or 1.0
    pad_l, pad_b, pad_t, pad_r = 50, 30, 10, 10
    w, h = width - pad_l - pad_r, height - pad_b - pad_t
    total = max(t_max - t_min, 1e-9)

    def x_of(t: float) -> float:
        return pad_l + (t - t_min) / total * w

    def xy(t: float, v: float) -> str:
        return f"{x_of(t):.1f},{pad_t + h - v / y_max * h:.1f}"

    ticks = [(x_of(t_min + total * k / 4), _tick_label(total * k / 4)) for k in range(5)]
    return Markup(_env().from_string(_SVG).render(
        width=width, height=height, l=pad_l, r=pad_l + w, t=pad_t, b=pad_t + h, y_max=y_max, ticks=ticks,
        urls=" ".join(xy(t, u) for t, u, _c in points), cls=" ".join(xy(t, c) for t, _u, c in points)))


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


def _card(e: Entry, thumb: str | None, original: str) -> dict[str, Any]:
    """What one gallery card shows (plain values: the template escapes them)."""
    r, c = e.record, e.candidate
    return {
        "sha": r.sha256, "mark": r.mark or "", "thumb": thumb, "original": original, "label": e.label,
        "verdict": "kept" if r.keep else ("rejected" if r.keep is False else "not classified"),
        "reason": r.verdict_reason or r.reason or "", "refined": r.refined_score, "top": r.top5[:3],
        "source": c.source if c else None, "page_url": c.page_url if c else None, "url": c.url if c else None,
        "title": (c.title or "")[:160] if c else "", "license": c.license if c else None,
        "license_url": c.license_url if c else None, "width": r.width, "height": r.height, "split": e.split,
    }


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
        plan = build_plan(db, scheme=scheme, remember_splits=False, workers=None)
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
        span = db.run_span()
        report_id = hashlib.sha256(str(db.path.resolve()).encode()).hexdigest()[:16]
    shown = [e for es in sample.values() for e in es] + rejected_sample + marked_wrong

    def thumb(e: Entry) -> tuple[str, str | None]:
        dst = assets / "thumbs" / f"{e.record.sha256}.jpg"
        ok = _thumbnail(plan.out_dir / e.record.path, dst)
        return e.record.sha256, (f"{assets.name}/thumbs/{dst.name}" if ok else None)

    with ThreadPoolExecutor(max(1, min(8, os.cpu_count() or 1))) as pool:
        thumbs = dict(pool.map(thumb, shown))

    # resolved once, not per card: Path.resolve() stats every component of every path
    out_dir, page_dir = str(plan.out_dir.resolve()), str(out.parent.resolve())

    def original(e: Entry) -> str:
        return Path(os.path.relpath(os.path.join(out_dir, e.record.path), page_dir)).as_posix()

    def cards(entries: list[Entry]) -> list[dict[str, Any]]:
        return [_card(e, thumbs[e.record.sha256], original(e)) for e in entries]

    per_class_counts = plan.split_counts()
    cand = status.get("candidates", {}).get("by_state", {})
    src_rows: dict[str, Counter[str]] = {}
    for source, state, n in sources:
        src_rows.setdefault(source, Counter())[state] += n
    galleries = [{"title": label, "note": plural(class_sizes[label], "image"), "cards": cards(entries)}
                 for label, entries in sample.items()]
    if rejected_sample:
        galleries.append({"title": "Rejected by the model", "cards": cards(rejected_sample),
                          "note": f"sample of {len(rejected_sample)} of {n_rejected}; mark 'right' to put one back"})
    if marked_wrong:
        galleries.append({"title": "Marked wrong by the reviewer", "cards": cards(marked_wrong),
                          "note": f"{len(marked_wrong)} shown; click 'wrong' again to clear"})
    page = _env().from_string(_static("report.html.j2")).render(
        nonce=secrets.token_urlsafe(16), report_id=report_id, name=plan.out_dir.name, out_dir=str(plan.out_dir),
        written=time.strftime("%Y-%m-%d %H:%M"), scheme=scheme, per_class=per_class, seed=seed,
        # our own files, inserted as they are (the only unescaped text of the page)
        css=Markup(_static("report.css")), js=Markup(_static("report.js")),
        summary=[
            ["queries", status.get("queries", 0)],
            ["candidate URLs", sum(cand.values())],
            ["downloaded", cand.get("done", 0)],
            ["failed or rejected URLs", cand.get("failed", 0) + cand.get("rejected", 0)],
            ["kept by the classifier", status.get("kept", 0)],
            ["rejected by the classifier", status.get("rejected_by_classifier", 0)],
            ["in the dataset", plan.exported_count],
            ["classes", len(per_class_counts)],
        ],
        classes=[[label, c["train"], c["val"], c["test"], sum(c.values())] for label, c in per_class_counts.items()],
        excluded=list(plan.excluded_counts().items()),
        reasons=list(status.get("reasons", {}).items())[:30],
        sources=[[s, sum(c.values()), c["done"], c["failed"], c["rejected"], c["pending"] + c["in_flight"]]
                 for s, c in sorted(src_rows.items())],
        licences=merge_licences(licences),
        throughput=throughput_svg(progress, span=span),
        galleries=galleries,
    )
    tmp = out.with_suffix(".html.part")
    tmp.write_text(page, encoding="utf-8")
    os.replace(tmp, out)
    return out
