"""The mission-scale web: the sandbox answering catalogue queries with ~100 distinct pictures each,
enough for a crawl of the reference job's size (1 046 models x 10 colours x ~100 results).

Every result is a small JPEG (224 x 168, ~8-12 KB, so a million fit the disk) made on request
from real photos given at run time (never stored in the project): a random crop of one photo,
mirrored or not, with a crop of a second photo inset and the colours shifted, so no two results
share their bytes or their perceptual hashes. A stated share of results are engine-style copies
of an earlier result of the same query (resized, recompressed, cropped, watermarked): known
near-duplicate clusters, readable from the URL alone (:func:`truth_of`), which is what the
benchmark checks the near-duplicate pass against. A small share are the sandbox's own faults.

It is the ordinary :class:`~carcrawl.sandbox.server.Sandbox` with one more route on every image
host (``/m/<query>/<result>/<kind>/<original>.jpg``) and a layout whose ``results`` come from
here; ``/__mission`` on the first host says when the first mission image was served (the
benchmark's "first new download" of a resumed crawl) and ``/__mission/reset`` restarts that.

    python -m carcrawl.sandbox.mission --photos ../shared/images --photos ../shared/images2 --info web.json
"""

from __future__ import annotations

import argparse
import asyncio
import dataclasses
import hashlib
import io
import json
import random
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from carcrawl.sandbox.layout import ResultItem, SandboxLayout, _plain

SIZE = (224, 168)  # every original result, in pixels
COPY_KINDS = ("resized", "recompressed", "cropped", "watermarked")
COPY_SHARE = 0.08  # of the results: copies of an earlier result of the same query
FAULT_SHARE = 0.02  # of the results: a sandbox fault (404, HTML as JPEG, truncated JPEG)
FAULTS = ("http_404", "html_as_jpeg", "truncated_jpeg")
SOURCE_SIDE = 320  # photos are held in memory at this long side


def _h(*parts: object) -> int:
    return int.from_bytes(hashlib.blake2b("\x1f".join(map(str, parts)).encode(), digest_size=8).digest(), "big")


@dataclass(frozen=True, slots=True)
class MissionTruth:
    """What a mission URL serves: ``cluster`` is the original's (query, result) for an original
    and for each of its copies, so equal clusters = true near-duplicates."""

    query: str
    result: int
    kind: str  # "o" (an original) or one of COPY_KINDS
    original: int

    @property
    def cluster(self) -> str:
        return f"{self.query}/{self.original}"


def truth_of(url: str) -> MissionTruth | None:
    """The ground truth of a mission image URL (None for anything else)."""
    path = url.split("://", 1)[-1].split("/", 1)[-1].split("?", 1)[0]
    parts = path.split("/")
    if len(parts) != 5 or parts[0] != "m":
        return None
    try:
        return MissionTruth(parts[1], int(parts[2]), parts[3], int(parts[4].split(".", 1)[0]))
    except ValueError:
        return None


@dataclass(frozen=True)
class MissionLayout(SandboxLayout):
    """A :class:`SandboxLayout` whose engines list mission results."""

    per_query: int = 100

    def engine_total(self, engine: str, query: str) -> int:
        return 50_000 + _h(self.seed, "total", _plain(query)) % 500_000

    def results(self, engine: str, query: str) -> tuple[ResultItem, ...]:
        query = _plain(query)
        key = (engine, query)
        got = self._results_cache.get(key)
        if got is not None:
            return got
        q = f"{_h(self.seed, 'q', query):016x}"
        hosts = len(self.host_addresses)
        out = []
        for j in range(self.per_query):
            r = random.Random(_h(self.seed, "r", q, j))
            host = r.randrange(hosts)
            title = f"{query.title()} photo {j + 1}"
            page = f"{self.host_base(host)}/page/{q}-{j // 3}.html"  # listings of three photos
            u = r.random()
            if u < FAULT_SHARE:
                url = self.fault_url(FAULTS[r.randrange(len(FAULTS))], r.randrange(1 << 20))
                out.append(ResultItem(url, url, page, title, *SIZE, q, 0, url.rsplit("/", 2)[-2]))
                continue
            kind, original = "o", j
            if u < FAULT_SHARE + COPY_SHARE and j > 0:
                kind, original = COPY_KINDS[r.randrange(len(COPY_KINDS))], r.randrange(max(0, j - 8), j)
            url = f"{self.host_base(host)}/m/{q}/{j}/{kind}/{original}.jpg"
            out.append(ResultItem(url, url, page, title, *SIZE, q, 0, None))
        got = tuple(out)
        if len(self._results_cache) > 4096:
            self._results_cache.clear()
        self._results_cache[key] = got
        return got


class Pictures:
    """The source photos (small, in memory) and the deterministic pictures made from them."""

    def __init__(self, folders: Sequence[Path], seed: int = 0, limit: int = 0) -> None:
        from PIL import Image, ImageOps

        paths = sorted(p for folder in folders for p in Path(folder).rglob("*")
                       if p.suffix.lower() in (".jpg", ".jpeg", ".png", ".webp"))
        self.photos: list[Any] = []
        for p in paths[:limit or None]:
            try:
                with Image.open(p) as im:
                    im.draft("RGB", (SOURCE_SIDE, SOURCE_SIDE))
                    im = ImageOps.exif_transpose(im).convert("RGB")
                    im.thumbnail((SOURCE_SIDE, SOURCE_SIDE))
                    if min(im.size) >= 64:
                        self.photos.append(im.copy())
            except Exception:  # noqa: BLE001 - an unreadable photo is left out
                continue
        if len(self.photos) < 2:
            raise ValueError(f"mission web: need at least two readable photos in {', '.join(map(str, folders))}")
        self.seed = seed

    def original(self, q: str, j: int) -> Any:
        """The picture of result ``j`` of query ``q`` (a PIL image of :data:`SIZE`)."""
        from PIL import Image, ImageEnhance

        r = random.Random(_h(self.seed, "pic", q, j))
        a = self.photos[r.randrange(len(self.photos))]
        s = r.uniform(0.45, 0.9)
        cw, ch = max(32, int(a.width * s)), max(24, int(a.width * s * 0.75))
        ch = min(ch, a.height)
        x, y = r.randrange(a.width - cw + 1), r.randrange(a.height - ch + 1)
        im = a.crop((x, y, x + cw, y + ch)).resize(SIZE, Image.Resampling.BILINEAR)
        if r.random() < 0.5:
            im = im.transpose(Image.Transpose.FLIP_LEFT_RIGHT)
        b = self.photos[r.randrange(len(self.photos))]
        iw, ih = SIZE[0] * 2 // 5, SIZE[1] * 2 // 5
        bx, by = r.randrange(max(1, b.width - iw)), r.randrange(max(1, b.height - ih))
        im.paste(b.crop((bx, by, bx + iw, by + ih)), (r.randrange(SIZE[0] - iw), r.randrange(SIZE[1] - ih)))
        im = ImageEnhance.Color(im).enhance(r.uniform(0.6, 1.4))
        return ImageEnhance.Brightness(im).enhance(r.uniform(0.8, 1.2))

    def body(self, q: str, j: int, kind: str, original: int) -> bytes:
        """The JPEG bytes of a result: the original picture or an engine-style copy of it."""
        from PIL import Image, ImageDraw

        im = self.original(q, original)
        quality = 85
        if kind == "resized":
            im = im.resize((SIZE[0] // 2, SIZE[1] // 2), Image.Resampling.BILINEAR)
        elif kind == "recompressed":
            quality = 35
        elif kind == "cropped":
            w, h = im.size
            im = im.crop((int(w * 0.1), int(h * 0.1), w, h))
        elif kind == "watermarked":
            ImageDraw.Draw(im).text((12, SIZE[1] - 30), f"(c) stock {j}", fill=(255, 255, 255), font_size=18)
        buf = io.BytesIO()
        im.save(buf, "JPEG", quality=quality)
        return buf.getvalue()


def mission_sandbox(pictures: Pictures, per_query: int = 100, **kwargs: Any) -> Any:
    """A started-on-``start()`` Sandbox serving mission results (``kwargs`` go to ``Sandbox``)."""
    from aiohttp import web

    from carcrawl.sandbox.server import Sandbox

    class MissionSandbox(Sandbox):
        first_image_at: float | None = None
        images_served = 0

        async def start(self) -> None:
            await super().start()
            base = self._layout
            assert base is not None
            fields = {f.name: getattr(base, f.name) for f in dataclasses.fields(base) if f.init}
            self._layout = MissionLayout(**fields, per_query=per_query)

        def _host_app(self, h: int, addr: str) -> web.Application:
            app = super()._host_app(h, addr)

            async def image(request: web.Request) -> web.StreamResponse:
                mi = request.match_info
                try:
                    j, original = int(mi["j"]), int(mi["name"].split(".", 1)[0])
                except ValueError:
                    return web.Response(status=404)
                if mi["kind"] != "o" and mi["kind"] not in COPY_KINDS:
                    return web.Response(status=404)
                body = await asyncio.to_thread(pictures.body, mi["q"], j, mi["kind"], original)
                if self.first_image_at is None:
                    self.first_image_at = time.time()
                self.images_served += 1
                return web.Response(body=body, headers={"Content-Type": "image/jpeg"})

            async def state(request: web.Request) -> web.StreamResponse:
                return web.json_response({"first_image_at": self.first_image_at, "images_served": self.images_served})

            async def reset(request: web.Request) -> web.StreamResponse:
                self.first_image_at = None
                return web.json_response({"ok": True})

            app.router.add_get("/m/{q}/{j}/{kind}/{name}", self._wrap(addr, image))
            app.router.add_get("/__mission", state)
            app.router.add_get("/__mission/reset", reset)
            return app

    return MissionSandbox(**kwargs)


def main(argv: list[str] | None = None) -> int:
    """Run the mission web until SIGTERM; write its addresses to ``--info`` once it listens."""
    import signal

    p = argparse.ArgumentParser(prog="python -m carcrawl.sandbox.mission", description=__doc__.split("\n")[0])
    p.add_argument("--photos", type=Path, action="append", required=True, help="a folder of photos (repeatable)")
    p.add_argument("--hosts", type=int, default=64)
    p.add_argument("--latency-ms", type=float, nargs=2, default=(5.0, 20.0), metavar=("LOW", "HIGH"))
    p.add_argument("--per-query", type=int, default=100)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--info", type=Path, required=True, help="JSON file to write the engine URL and hosts into")
    a = p.parse_args(argv)
    pictures = Pictures(a.photos, seed=a.seed)
    try:
        import uvloop

        loop = uvloop.new_event_loop()
    except ImportError:  # pragma: no cover
        loop = asyncio.new_event_loop()
    asyncio.set_event_loop(loop)

    async def run() -> None:
        sb = mission_sandbox(pictures, a.per_query, hosts=a.hosts, latency_ms=tuple(a.latency_ms), fault_rate=0.0,
                             seed=a.seed, access_log_size=1000)
        await sb.start()
        stop = asyncio.Event()
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(sig, stop.set)
        lay = sb.layout
        tmp = a.info.with_suffix(".tmp")
        tmp.write_text(json.dumps({"engine": lay.engine_url("bing"), "hosts": list(lay.host_addresses),
                                   "control": f"{lay.host_base(0)}/__mission", "photos": len(pictures.photos)}))
        tmp.replace(a.info)
        try:
            await stop.wait()
        finally:
            await sb.stop()

    try:
        loop.run_until_complete(run())
    finally:
        loop.close()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
