"""Where everything in a running sandbox lives, and what every URL means.

A :class:`SandboxLayout` is plain, picklable data (addresses, ports, photo metadata, seed), so the
process that runs the server and the process that runs the client (see ``SandboxProcess``) agree on
every URL without talking. URLs carry their meaning in the path, which keeps the server stateless
and every fault reproducible by URL alone:

- ``/img/<photo>/<variant>/<token>.<ext>`` a photo (variant ``o`` as stored, ``n`` near-duplicate,
  ``t`` thumbnail, ``s0``..``s4`` size mix); different tokens are different URLs of the same bytes.
- ``/f/<fault>/<i>.<ext>`` the named fault (see ``carcrawl.sandbox.faults.FAULTS``).
- ``/private/<i>.jpg`` a valid photo that every host's robots.txt disallows.
- ``/page/<token>.html`` the landing page a search result points to.
"""

from __future__ import annotations

import hashlib
import random
import re
from collections.abc import Iterator
from dataclasses import dataclass, field
from urllib.parse import urlsplit

from carcrawl.sandbox import hits

#: engines the sandbox speaks like, and the paths a source asks them
ENGINES = ("bing", "duckduckgo", "openverse", "wikimedia", "google")

#: the faults a default (non-chaos) sandbox mixes into search results: rejections the demo shows
DEMO_FAULTS = ("html_as_jpeg", "http_404", "truncated_jpeg")

#: hard-coded targets of ``redirect_private``; the server never connects to them
PRIVATE_TARGETS = (
    "http://10.0.0.1/x.jpg",
    "http://192.168.1.1/x.jpg",
    "http://169.254.169.254/latest/meta-data/",
    "http://172.16.0.1/x.jpg",
)

_FAULT_EXT = {"png_bomb": "png", "wrong_ext": "png"}

_TITLES = (
    "{q}",
    "{q} for sale",
    "{q} review and photos",
    "New {q} - pictures",
    "{q} | Dealer listing",
    "Used {q} in great condition",
    "{q} wallpaper",
    "{q} spotted downtown",
)


#: of the results that are not faults, this share shows a photo whose tags match the query best
#: (make and model, else make, else body type or colour); the rest is noise, half other vehicles,
#: half photos of something else, as a real engine's results are
MATCH_SHARE = 0.75

_OPERATOR = re.compile(r"(?:^|\s)[a-z]+:\S*", re.IGNORECASE)


def _plain(query: str) -> str:
    """The query without search operators (``filetype:bitmap``, ``site:x``) and extra spaces, so
    an engine's own operators do not change what the sandbox returns."""
    return " ".join(_OPERATOR.sub(" ", query).split())


def _h(*parts: object) -> int:
    return int.from_bytes(hashlib.blake2b("\x1f".join(map(str, parts)).encode(), digest_size=8).digest(), "big")


@dataclass(frozen=True, slots=True)
class PhotoMeta:
    """What a client-side layout needs to know about one photo (no bytes)."""

    name: str
    label: str
    ext: str
    width: int
    height: int
    make: str = ""  # from TAGS.csv, "" where unknown
    model: str = ""
    color: str = ""
    body_type: str = ""

    def score(self, words: str) -> int:
        """How well this photo answers a query (``words``: " " + lower-case query + " "): make
        and model 8, make alone 4, then +2 for the body type and +1 for the colour named."""
        def named(x: str) -> bool:
            return bool(x) and f" {x} " in words

        s = 8 if named(self.make) and named(self.model) else 4 if named(self.make) else 0
        return s + (2 if named(self.body_type) else 0) + (1 if named(self.color) else 0)


@dataclass(frozen=True, slots=True)
class Truth:
    """What a sandbox URL really serves: the benchmark's and the tests' ground truth."""

    kind: str  # image, fault, private, page, other
    photo: str | None = None  # file name of the photo
    label: str | None = None  # vehicle / other / interior / ""
    variant: str | None = None
    fault: str | None = None
    make: str = ""  # what the photo shows, where TAGS.csv knows it
    model: str = ""


@dataclass(frozen=True, slots=True)
class ResultItem:
    """One search result an engine lists (before it is rendered into that engine's format)."""

    url: str
    thumb_url: str
    page_url: str
    title: str
    width: int
    height: int
    token: str
    photo: int  # index into the photo set (for faults: the photo the fault is built from)
    fault: str | None = None


@dataclass(frozen=True)
class SandboxLayout:
    """Addresses, ports and URL scheme of a running sandbox. Picklable; no sockets, no bytes."""

    engine_urls: dict[str, str]
    host_addresses: tuple[str, ...]
    host_ports: tuple[int, ...]
    photos: tuple[PhotoMeta, ...]
    seed: int = 0
    fault_rate: float = 0.1
    chaos: bool = False
    results_per_query: int = 40
    demo_faults: tuple[str, ...] = DEMO_FAULTS
    all_faults: tuple[str, ...] = ()
    size_mix_photos: tuple[int, ...] = ()
    size_classes: int = 5
    tls_port: int = 0  # the HTTPS site (self-signed) on the first host's address; 0 = none
    _results_cache: dict[tuple[str, str], tuple[ResultItem, ...]] = field(
        default_factory=dict, repr=False, compare=False
    )

    # -- addresses ------------------------------------------------------------------------
    def engine_url(self, engine: str) -> str:
        try:
            return self.engine_urls[engine]
        except KeyError:
            raise ValueError(f"unknown sandbox engine {engine!r}; known: {', '.join(self.engine_urls)}") from None

    def host_base(self, h: int) -> str:
        h %= len(self.host_addresses)
        return f"http://{self.host_addresses[h]}:{self.host_ports[h]}"

    # -- URLs -----------------------------------------------------------------------------
    def photo_url(self, photo: int, variant: str = "o", token: str = "x", host: int = 0) -> str:
        ext = self.photos[photo].ext if variant == "o" else "jpg"
        return f"{self.host_base(host)}/img/{photo}/{variant}/{token}.{ext}"

    def fault_url(self, fault: str, i: int = 0) -> str:
        """One URL (on host ``i`` modulo the host count) that triggers the named fault."""
        if fault == "robots_disallowed":
            return f"{self.host_base(i)}/private/{i}.jpg"
        if fault not in self.all_faults:
            if fault == "tls_self_signed":
                raise ValueError("the tls_self_signed fault needs the openssl command to make a certificate")
            raise ValueError(f"unknown sandbox fault {fault!r}; known: {', '.join(self.all_faults)}")
        if fault == "unresolvable":
            return f"http://img-{i}.sandbox.invalid/f/{fault}/{i}.jpg"
        if fault == "tls_self_signed":
            return f"https://{self.host_addresses[0]}:{self.tls_port}/f/{fault}/{i}.jpg"
        return f"{self.host_base(i)}/f/{fault}/{i}.{_FAULT_EXT.get(fault, 'jpg')}"

    def _mix(self) -> tuple[str, ...]:
        return self.all_faults if self.chaos else self.demo_faults

    def image_urls(
        self, n: int, fault: str | None = None, size_mix: bool = False, start: int = 0
    ) -> Iterator[str]:
        """``n`` distinct image URLs spread round-robin over the hosts.

        With ``fault`` every URL triggers it; otherwise a ``fault_rate`` share (deterministic from the
        seed) triggers a fault of the demo mix (every fault when ``chaos``). With ``size_mix`` the
        photos are re-encodings spread over ~20 KB..2 MB instead of the small stored files."""
        hosts = len(self.host_addresses)
        pool = list(self.size_mix_photos) if size_mix and self.size_mix_photos else list(range(len(self.photos)))
        mix = self._mix()
        for k in range(start, start + n):
            host = k % hosts
            if fault is not None:
                yield self.fault_url(fault, k)
                continue
            r = random.Random(_h(self.seed, "url", k))
            if self.fault_rate > 0 and mix and r.random() < self.fault_rate:
                yield self.fault_url(mix[r.randrange(len(mix))], k)
                continue
            photo = pool[(k // hosts + k) % len(pool)] if len(pool) > 1 else pool[0]
            variant = f"s{r.randrange(self.size_classes)}" if size_mix else "o"
            yield self.photo_url(photo, variant, f"u{k:x}{_h(self.seed, k) & 0xFFFF:04x}", host)

    # -- ground truth ---------------------------------------------------------------------
    def truth(self, url: str) -> Truth:
        """What ``url`` serves, from its path alone."""
        parts = urlsplit(url).path.strip("/").split("/")
        try:
            if parts[0] == "img" and len(parts) == 4:
                p = self.photos[int(parts[1])]
                return Truth("image", p.name, p.label, parts[2], None, p.make, p.model)
            if parts[0] == "f" and len(parts) == 3:
                i = int(parts[2].split(".")[0])
                p = self.photos[i % len(self.photos)]
                return Truth("fault", p.name, p.label, None, parts[1])
            if parts[0] == "private" and len(parts) == 2:
                p = self.photos[int(parts[1].split(".")[0]) % len(self.photos)]
                return Truth("private", p.name, p.label, "o", "robots_disallowed")
            if parts[0] == "page":
                return Truth("page")
        except (ValueError, IndexError):
            pass
        return Truth("other")

    # -- search results -------------------------------------------------------------------
    def engine_total(self, engine: str, query: str) -> int:
        """The total an engine reports: web engines the raw count, open-licence catalogues less."""
        t = hits.total_hits(_plain(query), self.seed)
        if engine == "openverse":
            return min(10_000, t // 20)
        if engine == "wikimedia":
            return t // 50
        return t

    def results(self, engine: str, query: str) -> tuple[ResultItem, ...]:
        """The results ``engine`` lists for ``query``, in order; deterministic per (seed, query).

        Engines draw from one pool per query, so engines overlap (the same URL found twice) and
        the pool repeats photos under other URLs and hosts (exact duplicates) and as near-duplicate
        re-encodings."""
        query = _plain(query)
        key = (engine, query)
        got = self._results_cache.get(key)
        if got is not None:
            return got
        n = min(self.results_per_query, self.engine_total(engine, query))
        pool = self._pool(query, self.results_per_query * 3 // 2)
        order = sorted(range(len(pool)), key=lambda k: _h(self.seed, engine, query, k))
        got = tuple(pool[k] for k in order[:n])
        if len(self._results_cache) > 4096:
            self._results_cache.clear()
        self._results_cache[key] = got
        return got

    def _pool(self, query: str, n: int) -> list[ResultItem]:
        vehicles = [i for i, p in enumerate(self.photos) if p.label == "vehicle"]
        others = [i for i, p in enumerate(self.photos) if p.label != "vehicle"]
        words = f" {query.lower()} "
        scores = {i: self.photos[i].score(words) for i in vehicles}
        best = max(scores.values(), default=0)
        matching = [i for i in vehicles if best and scores[i] == best]
        rest = [i for i in vehicles if i not in matching] or vehicles
        mix = self._mix()
        hosts = len(self.host_addresses)
        q = query
        out: list[ResultItem] = []
        for k in range(n):
            r = random.Random(_h(self.seed, "pool", q, k))
            token = f"{_h(self.seed, 'tok', q, k):016x}"
            host = r.randrange(hosts)
            title = _TITLES[r.randrange(len(_TITLES))].format(q=q.title())
            page = f"{self.host_base(host)}/page/{token}.html"
            if self.fault_rate > 0 and mix and r.random() < self.fault_rate:
                fault = mix[r.randrange(len(mix))]
                i = r.randrange(1 << 20)
                photo = i % len(self.photos)
                url = self.fault_url(fault, i)
                thumb = self.photo_url(photo, "t", token, host)
                out.append(ResultItem(url, thumb, page, title, 800, 600, token, photo, fault))
                continue
            u = r.random()
            if matching:  # the query names something the photos show: mostly those, plus noise
                if u < MATCH_SHARE:
                    group = matching
                elif u < MATCH_SHARE + (1 - MATCH_SHARE) / 2 or not others:
                    group = rest
                else:
                    group = others
            else:
                group = vehicles if (vehicles and (not others or u < 0.75)) else others
            photo = group[r.randrange(len(group))]
            variant = "n" if r.random() < 0.12 else "o"
            p = self.photos[photo]
            w, h = (max(16, round(p.width * 0.85)), max(16, round(p.height * 0.85))) if variant == "n" else (
                p.width,
                p.height,
            )
            url = self.photo_url(photo, variant, token, host)
            thumb = self.photo_url(photo, "t", token, host)
            out.append(ResultItem(url, thumb, page, title, w, h, token, photo, None))
        return out
