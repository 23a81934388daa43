"""The sandbox web: search engines and image hosts on loopback, in one aiohttp process.

``Sandbox`` starts one aiohttp site per engine on 127.0.0.1 and one per image host on 127.0.0.2,
127.0.0.3, ... (Linux routes all of 127/8 to the loopback interface), so a client sees many
distinct hosts and its per-host politeness can be checked in the access log. It never opens a
connection itself: redirects to private addresses are only ``Location`` headers.

Hot path: photo bytes are in memory, a request is a dict lookup and a ``web.Response``; latency is
an ``asyncio.sleep``; bandwidth is chunked writes with sleeps (only when a limit is set).
"""

from __future__ import annotations

import asyncio
import json
import random
import socket
import struct
import time
from collections import Counter, deque
from collections.abc import Awaitable, Callable, Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any
from urllib.parse import quote

from aiohttp import web

from carcrawl.sandbox import engines as render
from carcrawl.sandbox.accesslog import AccessLog
from carcrawl.sandbox.faults import (
    FAULTS,
    HTML_BODY,
    HTTP_STATUS,
    JSON_BODY,
    REDIRECT_HOPS,
    TEXT_BODY,
    TRANSPORT_FAULTS,
    bomb,
    self_signed_context,
)
from carcrawl.sandbox.layout import (
    DEMO_FAULTS,
    ENGINES,
    PRIVATE_TARGETS,
    PhotoMeta,
    ResultItem,
    SandboxLayout,
    Truth,
)
from carcrawl.sandbox.photos import SIZE_CLASSES, VARIANTS, PhotoSet

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]

CLIENT_CLOSED = 499  # nginx's status for "the client closed the connection first"
MAX_HOSTS = 250  # 127.0.0.2 .. 127.0.0.251
ROBOTS_DEFAULT = b"User-agent: *\nDisallow: /private/\n"
ROBOTS_DISALLOW_ALL = b"User-agent: *\nDisallow: /\n"
_NO_LATENCY = {"/__stats", "/robots.txt"}
DDG_ANOMALY = (
    b'<!DOCTYPE html><html><head><title>DuckDuckGo</title></head><body><div class="anomaly-modal__modal">'
    b"<p>Unfortunately, bots use DuckDuckGo too.</p><p>Please complete the following challenge to confirm "
    b'this search was made by a human.</p><form id="challenge-form" action="/anomaly.js"></form></div>'
    b"</body></html>"
)


def _int(value: str | None, default: int, lo: int = 0, hi: int = 1 << 31) -> int:
    try:
        return max(lo, min(hi, int(value))) if value not in (None, "") else default  # type: ignore[arg-type]
    except ValueError:
        return default


class Sandbox:
    """Search engines and image hosts on loopback, for the demo, the tests and the benchmarks.

    ``async with Sandbox(...) as sb:`` starts everything; ``sb.engine_url("bing")`` is the base URL
    to give a Bing source, ``sb.image_urls(n)`` yields image URLs for URL-list workloads,
    ``sb.fault_url("reset")`` one URL that commits that fault, ``sb.access_log`` what was asked.
    """

    FAULTS: tuple[str, ...] = FAULTS
    ENGINES: tuple[str, ...] = ENGINES

    def __init__(
        self,
        photos: Path | None = None,
        hosts: int = 8,
        latency_ms: tuple[float, float] = (20, 80),
        bandwidth: float | None = None,
        fault_rate: float = 0.1,
        chaos: bool = False,
        results_per_query: int = 40,
        seed: int = 0,
        block_after: int | None = None,
        port: int = 0,
        *,
        host_faults: Mapping[int, str] | None = None,
        robots_disallow_hosts: Sequence[int] = (),
        fault_delay_s: float = 10.0,
        trickle_bps: float = 64.0,
        flaky_tries: int = 3,
        size_mix: bool = False,
        demo_faults: Sequence[str] = DEMO_FAULTS,
        access_log_size: int = 1_000_000,
    ) -> None:
        lo, hi = (float(latency_ms[0]), float(latency_ms[1])) if latency_ms else (0.0, 0.0)
        problems = []
        if not 1 <= hosts <= MAX_HOSTS:
            problems.append(f"hosts must be 1..{MAX_HOSTS}, got {hosts}")
        if lo < 0 or hi < lo:
            problems.append(f"latency_ms must be (low, high) with 0 <= low <= high, got {latency_ms}")
        if bandwidth is not None and bandwidth <= 0:
            problems.append(f"bandwidth must be > 0 bytes/s or None, got {bandwidth}")
        if not 0.0 <= fault_rate <= 1.0:
            problems.append(f"fault_rate must be 0..1, got {fault_rate}")
        if results_per_query < 0:
            problems.append(f"results_per_query must be >= 0, got {results_per_query}")
        if block_after is not None and block_after < 0:
            problems.append(f"block_after must be >= 0 or None, got {block_after}")
        if not 0 <= port <= 65535:
            problems.append(f"port must be 0..65535, got {port}")
        for h, f in (host_faults or {}).items():
            if f not in FAULTS or f in TRANSPORT_FAULTS or not 0 <= h < hosts:
                problems.append(f"host_faults: {h}: {f!r} is not a host index and a fault a host can commit")
        for f in demo_faults:
            if f not in FAULTS:
                problems.append(f"demo_faults: unknown fault {f!r}")
        if problems:
            raise ValueError("; ".join(problems))
        self.photos_dir = photos
        self.hosts = hosts
        self.latency_ms = (lo, hi)
        self.bandwidth = bandwidth
        self.fault_rate = fault_rate
        self.chaos = chaos
        self.results_per_query = results_per_query
        self.seed = seed
        self.block_after = block_after
        self.port = port
        self.host_faults = dict(host_faults or {})
        self.robots_disallow_hosts = frozenset(robots_disallow_hosts)
        self.fault_delay_s = fault_delay_s
        self.trickle_bps = trickle_bps
        self.flaky_tries = flaky_tries
        self.size_mix = size_mix
        self.demo_faults = tuple(demo_faults)
        self.access_log = AccessLog(access_log_size)
        self.photo_set: PhotoSet | None = None
        self._layout: SandboxLayout | None = None
        self._runners: list[web.AppRunner] = []
        self._rng = random.Random(seed)
        self._engine_requests: Counter[str] = Counter()
        self._blocked: dict[str, bool] = dict.fromkeys(ENGINES, False)
        self._ov_recent: deque[float] = deque()
        self._flaky: Counter[str] = Counter()
        self._faults_served: Counter[str] = Counter()
        self._statuses: Counter[int] = Counter()
        self._pending: dict[tuple[int, str], asyncio.Future[bytes]] = {}
        self._stopping = False
        self._started_at = 0.0

    # ------------------------------------------------------------------ lifecycle
    async def __aenter__(self) -> Sandbox:
        await self.start()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.stop()

    async def start(self) -> None:
        """Load the photos, bind every site. Raises OSError if a fixed ``port`` is taken."""
        if self._runners:
            return
        self._stopping = False
        self._started_at = time.monotonic()
        self.photo_set = await asyncio.to_thread(PhotoSet, self.photos_dir)
        if self.size_mix:
            await asyncio.to_thread(self.photo_set.prepare, ("t",), True)
        if self.chaos:  # build the bombs now, so the first bomb URL is not slower than the rest
            await asyncio.to_thread(bomb, "png_bomb")
            await asyncio.to_thread(bomb, "gzip_bomb")
        try:
            host_addrs, host_ports = await self._start_hosts()
            engine_urls = await self._start_engines()
            tls_port = await self._start_tls(host_addrs[0])
        except BaseException:
            await self.stop()
            raise
        ps = self.photo_set
        self._layout = SandboxLayout(
            engine_urls=engine_urls,
            host_addresses=tuple(host_addrs),
            host_ports=tuple(host_ports),
            photos=tuple(PhotoMeta(p.name, p.label, p.ext, p.width, p.height, p.tags.make, p.tags.model,
                                   p.tags.color, p.tags.body_type) for p in ps.photos),
            seed=self.seed,
            fault_rate=self.fault_rate,
            chaos=self.chaos,
            results_per_query=self.results_per_query,
            demo_faults=self.demo_faults,
            all_faults=tuple(f for f in FAULTS if f != "tls_self_signed" or tls_port),
            tls_port=tls_port,
            size_mix_photos=tuple(ps.size_mix_photos()),
            size_classes=len(SIZE_CLASSES),
        )

    async def stop(self) -> None:
        """Close every site; handlers still streaming (endless, trickle) are cut off."""
        self._stopping = True
        runners, self._runners = self._runners, []
        for r in runners:
            await r.cleanup()

    async def _bind(self, app: web.Application, addr: str, port: int) -> int:
        runner = web.AppRunner(app, access_log=None, handle_signals=False, shutdown_timeout=0.2)
        await runner.setup()
        self._runners.append(runner)
        site = web.TCPSite(runner, addr, port, backlog=1024, reuse_address=True)
        await site.start()
        server = site._server  # noqa: SLF001 - the only way to learn an ephemeral port
        assert server is not None
        return int(server.sockets[0].getsockname()[1])  # type: ignore[union-attr]

    async def _start_hosts(self) -> tuple[list[str], list[int]]:
        addrs = [f"127.0.0.{2 + h}" for h in range(self.hosts)]
        ports: list[int] = []
        shared = self.port
        for h, addr in enumerate(addrs):
            app = self._host_app(h, addr)
            try:
                got = await self._bind(app, addr, shared)
            except OSError:
                if self.port:  # a fixed port must be honoured: say which address failed
                    raise
                got = await self._bind(self._host_app(h, addr), addr, 0)  # this address: its own port
            if not shared:
                shared = got  # try to give every host the same port
            ports.append(got)
        return addrs, ports

    async def _start_tls(self, addr: str) -> int:
        """Host 0's app again, over HTTPS with a self-signed certificate (0 where openssl is missing)."""
        ctx = await asyncio.to_thread(self_signed_context)
        if ctx is None:
            return 0
        runner = web.AppRunner(self._host_app(0, addr), access_log=None, handle_signals=False, shutdown_timeout=0.2)
        await runner.setup()
        self._runners.append(runner)
        site = web.TCPSite(runner, addr, 0, ssl_context=ctx, backlog=1024, reuse_address=True)
        await site.start()
        server = site._server  # noqa: SLF001 - the only way to learn an ephemeral port
        assert server is not None
        return int(server.sockets[0].getsockname()[1])  # type: ignore[union-attr]

    async def _start_engines(self) -> dict[str, str]:
        """Every engine on one address and port (their paths do not overlap), so a client needs
        one base URL for all of them (``carcrawl crawl --sandbox URL``)."""
        port = await self._bind(self._engines_app(), "127.0.0.1", self.port)
        return dict.fromkeys(ENGINES, f"http://127.0.0.1:{port}")

    # ------------------------------------------------------------------ public API
    @property
    def layout(self) -> SandboxLayout:
        if self._layout is None:
            raise RuntimeError("the sandbox is not started (use `async with Sandbox(...)` or await start())")
        return self._layout

    def engine_url(self, engine: str) -> str:
        return self.layout.engine_url(engine)

    @property
    def engine_urls(self) -> dict[str, str]:
        return dict(self.layout.engine_urls)

    @property
    def host_addresses(self) -> list[str]:
        return list(self.layout.host_addresses)

    def image_urls(self, n: int, fault: str | None = None, size_mix: bool = False, start: int = 0) -> Iterator[str]:
        """``n`` image URLs spread over the hosts; with ``size_mix`` the variants are made now
        (blocking, once) unless the sandbox was started with ``size_mix=True``."""
        if size_mix and self.photo_set is not None and not self.size_mix:
            self.photo_set.prepare(("t",), size_mix=True)
            self.size_mix = True
        return self.layout.image_urls(n, fault=fault, size_mix=size_mix, start=start)

    def fault_url(self, fault: str, i: int = 0) -> str:
        return self.layout.fault_url(fault, i)

    def truth(self, url: str) -> Truth:
        return self.layout.truth(url)

    def results(self, engine: str, query: str) -> tuple[ResultItem, ...]:
        """What ``engine`` lists for ``query`` (the same list its pages render)."""
        return self.layout.results(engine, query)

    def set_blocked(self, engine: str, blocked: bool) -> None:
        """Switch an engine's block page on or off; off also restarts its ``block_after`` count."""
        if engine not in self._blocked:
            raise ValueError(f"unknown sandbox engine {engine!r}; known: {', '.join(ENGINES)}")
        self._blocked[engine] = blocked
        if not blocked:
            self._engine_requests[engine] = 0

    def is_blocked(self, engine: str) -> bool:
        return self._blocked[engine] or (
            self.block_after is not None and self._engine_requests[engine] > self.block_after
        )

    def stats(self) -> dict[str, Any]:
        """What ``/__stats`` answers: requests per host and engine, statuses, faults served."""
        return {
            "uptime_s": round(time.monotonic() - self._started_at, 3),
            "photos": len(self.photo_set) if self.photo_set else 0,
            "requests": len(self.access_log),
            "hosts": self.access_log.counts(),
            "engines": {
                e: {"requests": self._engine_requests[e], "blocked": self.is_blocked(e)} for e in ENGINES
            },
            "statuses": {str(k): v for k, v in sorted(self._statuses.items())},
            "faults": dict(self._faults_served),
        }

    # ------------------------------------------------------------------ plumbing
    def _wrap(self, label: str, handler: Handler) -> Handler:
        """Latency, access log and stats around a handler; the response is sent inside, so the
        logged end time is when the body went out."""
        log = self.access_log
        statuses = self._statuses
        lo, hi = self.latency_ms
        rng = self._rng

        async def wrapped(request: web.Request) -> web.StreamResponse:
            start = time.monotonic()
            status = 0
            try:
                if hi > 0 and request.path not in _NO_LATENCY:
                    await asyncio.sleep(rng.uniform(lo, hi) / 1000.0)
                resp = await handler(request)
                status = resp.status
                if not resp.prepared:
                    await resp.prepare(request)
                    await resp.write_eof()
                return resp
            except ConnectionError:
                # the client hung up (a size cap, a timeout, a kill): expected, not a server error;
                # aiohttp drops a response it cannot send without logging a traceback
                status = status or CLIENT_CLOSED
                return web.Response(status=CLIENT_CLOSED)
            finally:
                log.record(label, request.path_qs, start, time.monotonic(), status)
                statuses[status] += 1

        return wrapped

    async def _stats(self, request: web.Request) -> web.StreamResponse:
        return web.Response(body=json.dumps(self.stats()).encode(), headers={"Content-Type": "application/json"})

    async def _send(
        self,
        request: web.Request,
        body: bytes,
        ctype: str,
        status: int = 200,
        headers: Mapping[str, str] | None = None,
    ) -> web.StreamResponse:
        hdrs = {"Content-Type": ctype, **(headers or {})}
        if self.bandwidth is None:
            return web.Response(body=body, status=status, headers=hdrs)
        resp = web.StreamResponse(status=status, headers=hdrs)
        resp.content_length = len(body)
        await resp.prepare(request)
        await self._throttled(resp, body, self.bandwidth)
        await resp.write_eof()
        return resp

    async def _throttled(self, resp: web.StreamResponse, body: bytes, rate: float, chunk: int = 0) -> None:
        """Write ``body`` at ``rate`` bytes/s: chunks on a schedule, sleeping when ahead of it."""
        loop = asyncio.get_running_loop()
        step = chunk or max(512, int(rate / 20))
        t0 = loop.time()
        sent = 0
        for i in range(0, len(body), step):
            if self._stopping:
                raise ConnectionResetError("sandbox stopping")
            piece = body[i : i + step]
            await resp.write(piece)
            sent += len(piece)
            delay = t0 + sent / rate - loop.time()
            if delay > 0:
                await asyncio.sleep(delay)

    async def _variant(self, idx: int, variant: str) -> bytes:
        """A photo variant; made once in a thread (single flight), cached after."""
        ps = self.photo_set
        assert ps is not None
        got = ps.cached(idx, variant)
        if got is not None:
            return got
        key = (idx, variant)
        fut = self._pending.get(key)
        if fut is None:
            fut = asyncio.ensure_future(asyncio.to_thread(ps.variant, idx, variant))
            self._pending[key] = fut
            fut.add_done_callback(lambda _f: self._pending.pop(key, None))
        return await asyncio.shield(fut)

    # ------------------------------------------------------------------ image hosts
    def _host_app(self, h: int, addr: str) -> web.Application:
        app = web.Application()
        robots = ROBOTS_DISALLOW_ALL if h in self.robots_disallow_hosts else ROBOTS_DEFAULT
        host_fault = self.host_faults.get(h)

        async def robots_txt(request: web.Request) -> web.StreamResponse:
            return web.Response(body=robots, headers={"Content-Type": "text/plain"})

        async def image(request: web.Request) -> web.StreamResponse:
            mi = request.match_info
            try:
                idx = int(mi["photo"])
                photo = self.photo_set.photos[idx]  # type: ignore[union-attr]
            except (ValueError, IndexError):
                return _not_found()
            variant = mi["variant"]
            if variant not in VARIANTS:
                return _not_found()
            if host_fault is not None:
                return await self._fault(request, host_fault, idx, h)
            body = self.photo_set.cached(idx, variant)  # type: ignore[union-attr]
            if body is None:
                body = await self._variant(idx, variant)
            return await self._send(request, body, photo.mime if variant == "o" else "image/jpeg")

        async def fault(request: web.Request) -> web.StreamResponse:
            name = request.match_info["fault"]
            try:
                i = int(request.match_info["name"].split(".", 1)[0])
            except ValueError:
                return _not_found()
            if name not in FAULTS:
                return _not_found()
            return await self._fault(request, host_fault or name, i, h)

        async def private(request: web.Request) -> web.StreamResponse:
            try:
                i = int(request.match_info["name"].split(".", 1)[0])
            except ValueError:
                return _not_found()
            self._faults_served["robots_disallowed"] += 1
            return await self._photo_response(request, i)

        async def page(request: web.Request) -> web.StreamResponse:
            token = request.match_info["name"].split(".", 1)[0]
            body = (
                f"<!DOCTYPE html><html><head><title>Listing {token}</title></head><body>"
                f"<h1>Listing {token}</h1><p>Photos of this vehicle.</p></body></html>"
            ).encode()
            return web.Response(body=body, headers={"Content-Type": "text/html; charset=utf-8"})

        async def index(request: web.Request) -> web.StreamResponse:
            body = f"<!DOCTYPE html><html><body><h1>sandbox image host {addr}</h1></body></html>".encode()
            return web.Response(body=body, headers={"Content-Type": "text/html; charset=utf-8"})

        w = self._wrap
        app.router.add_get("/robots.txt", w(addr, robots_txt))
        app.router.add_get("/img/{photo}/{variant}/{name}", w(addr, image))
        app.router.add_get("/f/{fault}/{name}", w(addr, fault))
        app.router.add_get("/private/{name}", w(addr, private))
        app.router.add_get("/page/{name}", w(addr, page))
        app.router.add_get("/__stats", self._stats)
        app.router.add_get("/", w(addr, index))
        return app

    async def _photo_response(
        self, request: web.Request, i: int, headers: Mapping[str, str] | None = None
    ) -> web.StreamResponse:
        ps = self.photo_set
        assert ps is not None
        idx = i % len(ps)
        p = ps.photos[idx]
        return await self._send(request, p.data, p.mime, headers=headers)

    async def _jpeg(self, i: int) -> bytes:
        ps = self.photo_set
        assert ps is not None
        return await self._variant(i % len(ps), "j")

    async def _fault(self, request: web.Request, name: str, i: int, h: int) -> web.StreamResponse:
        """Commit fault ``name`` using photo ``i`` (modulo the set) on host ``h``."""
        self._faults_served[name] += 1
        if name in HTTP_STATUS:
            status = HTTP_STATUS[name]
            return _error(status)
        if name == "http_429":
            return _error(429)
        if name == "http_429_retry_after":
            return _error(429, {"Retry-After": "2"})
        if name == "http_429_retry_date":
            return _error(429, {"Retry-After": render.http_date(time.time() + 3)})
        if name == "flaky_503":
            tries = _int(request.query.get("n"), self.flaky_tries, 1, 1000)
            key = f"{h}:{request.path_qs}"
            self._flaky[key] += 1
            if self._flaky[key] < tries:
                return _error(503, {"Retry-After": "1"})
            return await self._photo_response(request, i)
        if name in ("redirect_chain", "redirect_loop"):
            hop = _int(request.query.get("hop"), 0, 0, 1000)
            if name == "redirect_chain" and hop >= REDIRECT_HOPS:
                return await self._photo_response(request, i)
            nxt = hop + 1 if name == "redirect_chain" else (hop + 1) % 2
            target = self.layout.host_base(h + 1) if name == "redirect_chain" else self.layout.host_base(h)
            return web.Response(status=302, headers={"Location": f"{target}{request.path}?hop={nxt}"})
        if name == "redirect_private":
            return web.Response(status=302, headers={"Location": PRIVATE_TARGETS[i % len(PRIVATE_TARGETS)]})
        if name == "html_as_jpeg":
            return await self._send(request, HTML_BODY, "image/jpeg")
        if name == "json_as_jpeg":
            return await self._send(request, JSON_BODY, "image/jpeg")
        if name == "text_as_jpeg":
            return await self._send(request, TEXT_BODY, "image/jpeg")
        if name == "empty":
            return web.Response(body=b"", headers={"Content-Type": "image/jpeg"})
        if name == "truncated_jpeg":
            body = await self._jpeg(i)
            return await self._send(request, body[: len(body) * 6 // 10], "image/jpeg")
        if name == "wrong_ext":
            return await self._send(request, await self._jpeg(i), "image/png")
        if name == "wrong_type":
            return await self._send(request, await self._jpeg(i), "application/octet-stream")
        if name in ("noai", "noimageai"):
            return await self._photo_response(request, i, {"X-Robots-Tag": name})
        if name in ("robots_disallowed", "tls_self_signed", "unresolvable"):
            return await self._photo_response(request, i)  # the fault was in the transport (or robots.txt)
        if name == "png_bomb":
            return await self._send(request, await asyncio.to_thread(bomb, "png_bomb"), "image/png")
        if name == "gzip_bomb":
            body = await asyncio.to_thread(bomb, "gzip_bomb")
            return await self._send(request, body, "image/jpeg", headers={"Content-Encoding": "gzip"})
        if name == "slow_first_byte":
            await asyncio.sleep(self.fault_delay_s)
            return await self._photo_response(request, i)
        if name == "trickle":
            body = await self._jpeg(i)
            resp = web.StreamResponse(headers={"Content-Type": "image/jpeg"})
            resp.content_length = len(body)
            await resp.prepare(request)
            await self._throttled(resp, body, self.trickle_bps, chunk=max(1, int(self.trickle_bps / 4)))
            await resp.write_eof()
            return resp
        if name == "endless":
            return await self._endless(request)
        if name in ("reset", "short_body"):
            return await self._cut(request, await self._jpeg(i), reset=name == "reset")
        return _not_found()  # pragma: no cover - every name in FAULTS is handled above

    async def _endless(self, request: web.Request) -> web.StreamResponse:
        """A JPEG header and then bytes forever (chunked), until the client hangs up or we stop."""
        resp = web.StreamResponse(headers={"Content-Type": "image/jpeg"})
        resp.enable_chunked_encoding()
        await resp.prepare(request)
        block = b"\xff\xd8\xff\xe0\x00\x10JFIF\x00" + bytes(64 * 1024 - 11)
        filler = bytes(64 * 1024)
        await resp.write(block)
        rate = self.bandwidth
        while not self._stopping:
            if rate is None:
                await resp.write(filler)
                await asyncio.sleep(0)  # let other connections in
            else:
                await self._throttled(resp, filler, rate)
        raise ConnectionResetError("sandbox stopping")

    async def _cut(self, request: web.Request, body: bytes, reset: bool) -> web.StreamResponse:
        """Announce the whole body, send part of it, then close (``short_body``) or RST (``reset``)."""
        resp = web.StreamResponse(headers={"Content-Type": "image/jpeg"})
        resp.content_length = len(body) + (0 if reset else 1000)
        resp.force_close()
        await resp.prepare(request)
        await resp.write(body[: len(body) // 2] if reset else body)
        transport = request.transport
        if transport is not None:
            if reset:
                sock = transport.get_extra_info("socket")
                if sock is not None:
                    sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
                transport.abort()
            else:
                transport.close()
        return resp

    # ------------------------------------------------------------------ engines
    def _engines_app(self) -> web.Application:
        app = web.Application()
        for engine in ENGINES:
            routes: Callable[[], dict[str, Handler]] = {
                "bing": self._bing_routes,
                "duckduckgo": self._ddg_routes,
                "openverse": self._openverse_routes,
                "wikimedia": self._wikimedia_routes,
                "google": self._google_routes,
            }[engine]
            for path, handler in routes().items():
                app.router.add_get(path, self._wrap(engine, self._counted(engine, handler)))
        app.router.add_get("/__stats", self._stats)
        return app

    def _counted(self, engine: str, handler: Handler) -> Handler:
        async def counted(request: web.Request) -> web.StreamResponse:
            self._engine_requests[engine] += 1
            return await handler(request)

        return counted

    def _bing_routes(self) -> dict[str, Handler]:
        def page(full: bool) -> Handler:
            async def handler(request: web.Request) -> web.StreamResponse:
                q = request.query.get("q", "")
                if self.is_blocked("bing"):
                    return _html(render.bing_captcha(q))
                first = _int(request.query.get("first"), 1, 0)
                count = _int(request.query.get("count"), render.BING_PAGE, 1, 150)
                offset = max(0, first - 1)
                items = self.layout.results("bing", q) if q.strip() else ()
                chunk = items[offset : offset + count]
                more = offset + count < len(items)
                body = (render.bing_page if full else render.bing_async)(chunk, q, offset + 1, count, more)
                return _html(body)

            return handler

        return {"/images/async": page(False), "/images/search": page(True)}

    def _ddg_routes(self) -> dict[str, Handler]:
        async def landing(request: web.Request) -> web.StreamResponse:
            if self.is_blocked("duckduckgo"):
                return _html(DDG_ANOMALY, 418)
            q = request.query.get("q", "")
            return _html(render.ddg_landing(q, render.ddg_vqd(q, self.seed)))

        async def ijs(request: web.Request) -> web.StreamResponse:
            q = request.query.get("q", "")
            if self.is_blocked("duckduckgo") or request.query.get("vqd", "") != render.ddg_vqd(q, self.seed):
                return web.Response(status=403, body=b"", headers={"Content-Type": "text/html"})
            s = _int(request.query.get("s"), 0)
            items = self.layout.results("duckduckgo", q)
            chunk = items[s : s + render.DDG_PAGE]
            more = s + render.DDG_PAGE < len(items)
            body = render.ddg_ijs(chunk, q, render.ddg_vqd(q, self.seed), s, more, request.query.get("p", "1"))
            return web.Response(body=body, headers={"Content-Type": "application/json; charset=UTF-8"})

        return {"/": landing, "/i.js": ijs}

    def _openverse_routes(self) -> dict[str, Handler]:
        async def search(request: web.Request) -> web.StreamResponse:
            now = time.monotonic()
            recent = self._ov_recent
            recent.append(now)
            while recent and recent[0] < now - 60:
                recent.popleft()
            n = self._engine_requests["openverse"]
            headers = {
                "x-ratelimit-limit-anon_burst": "20/min",
                "x-ratelimit-available-anon_burst": str(max(0, 20 - len(recent))),
                "x-ratelimit-limit-anon_sustained": "200/day",
                "x-ratelimit-available-anon_sustained": str(max(0, 200 - n)),
            }
            if self.is_blocked("openverse"):
                body = b'{"detail":"Request was throttled. Expected available in 60 seconds."}'
                return _json(body, 429, {**headers, "Retry-After": "60"})
            q = request.query.get("q", "")
            page_size = _int(request.query.get("page_size"), render.OPENVERSE_PAGE, 1)
            if page_size > 500:
                return _json(b'{"detail":{"page_size":["Ensure this value is less than or equal to 500."]}}', 400)
            page = _int(request.query.get("page"), 1, 0)
            items = self.layout.results("openverse", q)
            page_count = -(-len(items) // page_size)
            if page < 1 or (page > page_count and page_count > 0):
                return _json(b'{"detail":"Invalid page."}', 404, headers)
            chunk = items[(page - 1) * page_size : page * page_size]
            total = self.layout.engine_total("openverse", q)
            api = self.layout.engine_url("openverse")
            body = render.openverse_json(chunk, api, total, page_count, page, page_size)
            return _json(body, 200, headers)

        return {"/v1/images/": search, "/v1/images": search}

    def _wikimedia_routes(self) -> dict[str, Handler]:
        async def api(request: web.Request) -> web.StreamResponse:
            qs = request.query
            if self.is_blocked("wikimedia"):
                body = render.wikimedia_error(
                    "ratelimited", "You've exceeded your rate limit. Please wait some time and try again."
                )
                # MediaWiki answers API errors with HTTP 200 and says which in a header and the body
                return _json(body, 200, {"Retry-After": "60", "MediaWiki-API-Error": "ratelimited"})
            if qs.get("action") != "query":
                return _json(render.wikimedia_error("badvalue", 'Unrecognized value for parameter "action".'), 200)
            if qs.get("generator") != "search":
                return _json(render.wikimedia_error("badvalue", 'Unrecognized value for parameter "generator".'), 200)
            q = qs.get("gsrsearch", "")
            if not q.strip():
                return _json(render.wikimedia_error("missingparam", 'The "gsrsearch" parameter must be set.'), 200)
            limit_raw = qs.get("gsrlimit", "")
            limit = 50 if limit_raw == "max" else _int(limit_raw, render.WIKIMEDIA_PAGE, 1, 500)
            offset = _int(qs.get("gsroffset"), 0)
            items = self.layout.results("wikimedia", q)
            chunk = items[offset : offset + limit] if "imageinfo" in qs.get("prop", "") else ()
            body = render.wikimedia_json(
                chunk,
                q,
                offset,
                self.layout.engine_total("wikimedia", q),
                offset + limit < len(items),
                "extmetadata" in qs.get("iiprop", ""),
                qs.get("formatversion") == "2",
                limit,
            )
            return _json(body, 200)

        return {"/w/api.php": api}

    def _google_routes(self) -> dict[str, Handler]:
        async def search(request: web.Request) -> web.StreamResponse:
            if self.is_blocked("google"):
                cont = quote(f"https://www.google.com{request.path_qs}", safe="")
                return web.Response(status=302, headers={"Location": f"/sorry/index?continue={cont}&q=sandbox"})
            q = request.query.get("q", "")
            ijn = _int(request.query.get("ijn"), -1)
            start = _int(request.query.get("start"), 0)
            page = ijn if ijn >= 0 else start // render.GOOGLE_PAGE
            items = self.layout.results("google", q)
            chunk = items[page * render.GOOGLE_PAGE : (page + 1) * render.GOOGLE_PAGE]
            body = render.google_ichunk(chunk, q, page)
            return web.Response(body=body, headers={"Content-Type": "text/plain; charset=UTF-8"})

        async def sorry(request: web.Request) -> web.StreamResponse:
            cont = request.query.get("continue", "https://www.google.com/search")
            return _html(render.google_sorry(cont), 429)

        return {"/search": search, "/sorry/index": sorry}


def _html(body: bytes, status: int = 200) -> web.Response:
    return web.Response(body=body, status=status, headers={"Content-Type": "text/html; charset=utf-8"})


def _json(body: bytes, status: int = 200, headers: Mapping[str, str] | None = None) -> web.Response:
    return web.Response(body=body, status=status, headers={"Content-Type": "application/json", **(headers or {})})


def _error(status: int, headers: Mapping[str, str] | None = None) -> web.Response:
    body = f"<html><head><title>{status}</title></head><body><h1>{status}</h1></body></html>".encode()
    return web.Response(body=body, status=status, headers={"Content-Type": "text/html", **(headers or {})})


def _not_found() -> web.Response:
    return _error(404)
