"""The HTTP client: one shared aiohttp session for the crawl, redirects followed by hand (each
hop guarded and counted), bodies streamed, size-capped, decompressed with a bounded inflater (gzip
bombs) and magic-number checked on the first bytes, aborting at once when the body is not an
image. Failures come back as values (:class:`~carcrawl.models.Failure`)."""

from __future__ import annotations

import asyncio
import functools
import socket
import ssl
import zlib
from dataclasses import dataclass
from urllib.parse import urljoin, urlsplit

import aiohttp

from carcrawl.config import DownloadSettings
from carcrawl.magic import SNIFF_BYTES, STORED_FORMATS, describe_non_image, sniff_image
from carcrawl.models import Failure, Fetched, HttpRequest
from carcrawl.net.guard import AddressGuard, BlockedAddressError, GuardedResolver, literal_ip
from carcrawl.net.politeness import HostLimiter, Lease, parse_retry_after
from carcrawl.net.robots import ROBOTS_UNAVAILABLE, RobotsCache

REDIRECT_CODES = frozenset({301, 302, 303, 307, 308})
RETRYABLE_CODES = frozenset({408, 425, 429, 500, 502, 503, 504})
#: answers that say the host is overloaded: they pause the whole host
OVERLOAD_REASONS = frozenset({"http_429", "http_503"})
RETRY_AFTER_TOO_LONG = "retry_after_too_long"
_IMAGE_ACCEPT = {"Accept": "image/avif,image/webp,image/*,*/*;q=0.5"}


@dataclass(frozen=True, slots=True)
class PageResponse:
    """A small response read whole (search pages, robots.txt)."""

    status: int
    headers: dict[str, str]
    body: bytes
    final_url: str


class _Abort(Exception):
    """Internal: a transfer ended early with a reason."""

    def __init__(self, reason: str, terminal: bool = True, retry_after: float | None = None):
        super().__init__(reason)
        self.reason = reason
        self.terminal = terminal
        self.retry_after = retry_after


@functools.lru_cache(maxsize=4096)
def host_key(url: str) -> str:
    """The politeness key of a URL: its host (with port when one is given). Cached: a URL's
    key is asked for about five times on its way through the scheduler and the client."""
    parts = urlsplit(url)
    port = parts.port
    return (parts.hostname or "") + (f":{port}" if port else "")


class HttpClient:
    """One shared aiohttp session for the whole crawl, with the guard and the limiter."""

    def __init__(self, settings: DownloadSettings, user_agent: str, allow_networks: list[str] | tuple[str, ...] = ()):
        self.settings = settings
        self.user_agent = user_agent
        self.guard = AddressGuard(allow_networks)
        self.hosts = HostLimiter(settings.per_host_concurrency, settings.per_host_interval)
        self.robots = RobotsCache(self, agent=user_agent.split("/", 1)[0] or "carcrawl", retry_after=settings.robots_retry)
        self._session: aiohttp.ClientSession | None = None

    async def __aenter__(self) -> HttpClient:
        await self.open()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    async def open(self) -> None:
        s = self.settings
        connector = aiohttp.TCPConnector(
            limit=s.concurrency + 16,
            limit_per_host=s.per_host_concurrency + 1,
            resolver=GuardedResolver(self.guard),
            ttl_dns_cache=300,
            # True: aiohttp's own verifying context (ssl.create_default_context(), made once at
            # its import), not a second one loading the CA store again (~50 ms per run)
            ssl=bool(s.verify_tls),
            enable_cleanup_closed=False,
        )
        self._session = aiohttp.ClientSession(
            connector=connector,
            timeout=aiohttp.ClientTimeout(total=s.total_timeout, sock_connect=s.connect_timeout, sock_read=s.read_timeout),
            headers={"User-Agent": self.user_agent, "Accept-Encoding": "identity"},
            auto_decompress=False,
            cookie_jar=aiohttp.DummyCookieJar(),
        )

    async def close(self) -> None:
        if self._session is not None:
            await self._session.close()
            self._session = None

    @property
    def session(self) -> aiohttp.ClientSession:
        assert self._session is not None, "HttpClient used before open()"
        return self._session

    # -- images -------------------------------------------------------------------------------

    async def fetch_image(self, candidate_id: int, url: str, *, leased: bool = False) -> Fetched | Failure:
        """Fetch one image URL. With ``leased`` the caller already holds a lease on its host
        (the download scheduler takes it before dispatching, so it never blocks a worker)."""
        s = self.settings
        current = url
        seen: set[str] = set()
        lease = Lease(self.hosts, host_key(url)) if leased else None
        try:
            for _hop in range(s.max_redirects + 1):
                self._check_url(current)
                host = host_key(current)
                if (why := self.hosts.given_up(host)) is not None:
                    raise _Abort(why)
                if lease is None or lease.host != host:
                    if lease is not None:
                        lease.release()
                        lease = None
                    await self.hosts.lease(host)
                    lease = Lease(self.hosts, host)
                if s.respect_robots and (why := await self.robots.check(current, lease)) is not None:
                    raise _Abort(why, terminal=why != ROBOTS_UNAVAILABLE)
                await lease.before_request()
                try:
                    result = await self._get_image(candidate_id, url, current)
                except _Abort as a:
                    if a.reason in OVERLOAD_REASONS:
                        self._overloaded(host, a)
                    raise
                self.hosts.answered(host)
                if not isinstance(result, str):
                    return result
                seen.add(current)
                current = urljoin(current, result)
                if current in seen:
                    raise _Abort("redirect_loop")
            raise _Abort("too_many_redirects")
        except _Abort as a:
            return Failure(candidate_id, url, a.reason, a.terminal, a.retry_after)
        except Exception as e:  # noqa: BLE001 - every network error becomes a reason
            reason, terminal = classify_exception(e)
            return Failure(candidate_id, url, reason, terminal)
        finally:
            if lease is not None:
                lease.release()

    def _overloaded(self, host: str, abort: _Abort) -> None:
        """429/503: pause the whole host for its Retry-After (or a backoff); a Retry-After longer
        than ``max_retry_after`` gives the host up for the run, with that reason on its URLs."""
        s = self.settings
        if abort.retry_after is not None and abort.retry_after > s.max_retry_after:
            self.hosts.give_up(host, RETRY_AFTER_TOO_LONG)
            abort.reason, abort.terminal = RETRY_AFTER_TOO_LONG, True
            return
        self.hosts.overloaded(host, abort.retry_after, s.backoff_base, s.backoff_max)

    def _check_url(self, url: str) -> None:
        parts = urlsplit(url)
        if parts.scheme not in ("http", "https") or not parts.hostname:
            raise _Abort("bad_url")
        ip = literal_ip(parts.hostname)
        if ip is not None and self.guard.is_blocked(ip):
            raise _Abort("blocked_address")

    async def _get_image(self, candidate_id: int, url: str, current: str) -> Fetched | str:
        """One request: an image (Fetched), a redirect target (str), or _Abort."""
        s = self.settings
        async with self.session.get(current, allow_redirects=False, headers=_IMAGE_ACCEPT) as resp:
            if resp.status in REDIRECT_CODES:
                location = resp.headers.get("Location")
                if not location:
                    raise _Abort(f"http_{resp.status}")
                return location
            if resp.status != 200:
                retry_after = parse_retry_after(resp.headers.get("Retry-After"))
                raise _Abort(f"http_{resp.status}", resp.status not in RETRYABLE_CODES, retry_after)
            if s.respect_noai and _noai(resp.headers.getall("X-Robots-Tag", [])):
                raise _Abort("noai")
            encoding = resp.headers.get("Content-Encoding", "").lower().strip()
            length = resp.content_length
            if length is not None and length > s.max_bytes and encoding in ("", "identity"):
                raise _Abort("too_large")
            body = await _read_capped(resp, s.max_bytes, encoding, sniff=True)
        head = body[:SNIFF_BYTES]
        fmt = sniff_image(head)
        if not body:
            raise _Abort("empty_body")
        if fmt is None:
            raise _Abort(f"not_image:{describe_non_image(head)}")
        if fmt not in STORED_FORMATS:
            raise _Abort(f"unsupported_image:{fmt}")
        if len(body) < s.min_bytes:
            raise _Abort("too_small")
        return Fetched(
            candidate_id=candidate_id,
            url=url,
            final_url=current,
            body=body,
            format=fmt,
            content_type=resp.headers.get("Content-Type"),
        )

    # -- small documents (search pages, robots.txt) -------------------------------------------

    async def get_small(
        self, url: str, *, max_bytes: int = 5_000_000, headers: dict[str, str] | None = None, lease: Lease | None = None
    ) -> PageResponse | None:
        """GET a small document, following redirects by hand (each hop guarded). Host politeness:
        paced under the caller's lease when it holds one for this host, else leased here."""
        current = url
        for _ in range(self.settings.max_redirects + 1):
            self._check_url(current)
            host = host_key(current)
            own = lease is None
            if own:
                await self.hosts.lease(host)
                await self.hosts.sending(host)
            elif lease is not None and lease.host == host:
                await lease.before_request()
            else:  # a redirect to another host under the caller's lease: paced there, not leased
                await self.hosts.pace(host)
            try:
                async with self.session.get(current, allow_redirects=False, headers=headers) as resp:
                    if resp.status in REDIRECT_CODES and resp.headers.get("Location"):
                        current = urljoin(current, resp.headers["Location"])
                        continue
                    encoding = resp.headers.get("Content-Encoding", "").lower().strip()
                    body = await _read_capped(resp, max_bytes, encoding, sniff=False)
                    return PageResponse(resp.status, {k.lower(): v for k, v in resp.headers.items()}, body, current)
            finally:
                if own:
                    self.hosts.release(host)
        return None

    async def fetch_page(self, request: HttpRequest, max_bytes: int = 10_000_000) -> PageResponse | Failure:
        """A search-engine request. Engine politeness (token bucket) is the caller's."""
        try:
            resp = await self.get_small(request.url, max_bytes=max_bytes, headers=dict(request.headers))
        except _Abort as a:
            return Failure(0, request.url, a.reason, a.terminal, a.retry_after)
        except Exception as e:  # noqa: BLE001
            reason, terminal = classify_exception(e)
            return Failure(0, request.url, reason, terminal)
        if resp is None:
            return Failure(0, request.url, "too_many_redirects")
        return resp


def _noai(values: list[str]) -> bool:
    for v in values:
        tokens = {t.strip().lower() for part in v.split(",") for t in part.split(":")[-1:]}
        if tokens & {"noai", "noimageai"}:
            return True
    return False


async def _read_capped(resp: aiohttp.ClientResponse, max_bytes: int, encoding: str, *, sniff: bool) -> bytes:
    """Read a body, decompressing gzip/deflate with a bounded inflater, stopping at ``max_bytes``.
    With ``sniff``, the first SNIFF_BYTES are magic-checked as soon as they arrive and a body that
    is not an image is abandoned there (the connection is closed, the rest never read)."""
    if encoding in ("", "identity"):
        return await _read_plain(resp, max_bytes, sniff=sniff)
    if encoding not in ("gzip", "x-gzip", "deflate"):
        raise _Abort(f"unsupported_encoding:{encoding[:20]}")
    inflater = zlib.decompressobj(wbits=47 if encoding != "deflate" else 15)
    buf = bytearray()
    sniffed = not sniff
    while True:
        chunk = await resp.content.readany()
        if not chunk:
            break
        buf += inflater.decompress(chunk, max_bytes + 1 - len(buf))
        while inflater.unconsumed_tail and len(buf) <= max_bytes:
            buf += inflater.decompress(inflater.unconsumed_tail, max_bytes + 1 - len(buf))
        if inflater.unconsumed_tail or len(buf) > max_bytes:
            raise _Abort("too_large")
        if not sniffed and len(buf) >= SNIFF_BYTES:
            sniffed = True
            head = bytes(buf[:SNIFF_BYTES])
            if sniff_image(head) is None:
                raise _Abort(f"not_image:{describe_non_image(head)}")
    return bytes(buf)


async def _read_plain(resp: aiohttp.ClientResponse, max_bytes: int, *, sniff: bool) -> bytes:
    """The common case (no content encoding): chunks kept as they arrive and joined once, the
    magic number checked on the first ones. The hot path of every download."""
    chunks: list[bytes] = []
    size = 0
    sniffed = not sniff
    content = resp.content
    while True:
        chunk = await content.readany()
        if not chunk:
            break
        chunks.append(chunk)
        size += len(chunk)
        if size > max_bytes:
            raise _Abort("too_large")
        if not sniffed and size >= SNIFF_BYTES:
            sniffed = True
            head = chunk[:SNIFF_BYTES] if len(chunks) == 1 else b"".join(chunks)[:SNIFF_BYTES]
            if sniff_image(head) is None:
                raise _Abort(f"not_image:{describe_non_image(head)}")
    return chunks[0] if len(chunks) == 1 else b"".join(chunks)


def classify_exception(e: BaseException) -> tuple[str, bool]:
    """Map a network exception to (reason, terminal)."""
    if isinstance(e, aiohttp.ClientConnectorError):
        os_err = e.os_error
        if isinstance(os_err, BlockedAddressError):
            return "blocked_address", True
        if isinstance(e, aiohttp.ClientConnectorCertificateError | aiohttp.ClientConnectorSSLError):
            return "tls_error", True
        if isinstance(os_err, socket.gaierror) or "DNS" in type(e).__name__:
            return "dns_error", True
        return "connection_error", False
    if isinstance(e, BlockedAddressError):
        return "blocked_address", True
    if isinstance(e, aiohttp.ClientSSLError | ssl.SSLError):
        return "tls_error", True
    if isinstance(e, TimeoutError | asyncio.TimeoutError | aiohttp.ServerTimeoutError):
        return "timeout", False
    if isinstance(e, aiohttp.ClientPayloadError):
        return "truncated", False
    if isinstance(e, aiohttp.ServerDisconnectedError | ConnectionResetError | aiohttp.ClientOSError):
        return "connection_reset", False
    if isinstance(e, aiohttp.TooManyRedirects):
        return "too_many_redirects", True
    if isinstance(e, aiohttp.InvalidURL | ValueError):
        return "bad_url", True
    if isinstance(e, aiohttp.ClientResponseError):
        return f"http_{e.status}", e.status not in RETRYABLE_CODES
    if isinstance(e, aiohttp.ClientError):
        return f"client_error:{type(e).__name__}", False
    return f"error:{type(e).__name__}", True
