"""Every fault an image host can be told to commit, by name.

A fault is picked by the URL (``/f/<fault>/<i>.jpg``), by the host (``host_faults``), or at random
from a seed (``chaos``). Each one reproduces something a real crawl meets, and each has a reason
the client is expected to record (in brackets):

- ``slow_first_byte``: headers only after ``fault_delay_s`` (timeout)
- ``trickle``: a slowloris body, a few bytes at a time (timeout / too slow)
- ``reset``: TCP RST in the middle of the body (connection error)
- ``short_body``: Content-Length longer than the body, then close (payload error)
- ``http_404`` ``http_410`` ``http_500`` ``http_502`` ``http_503``: plain error statuses
- ``http_429`` (no Retry-After), ``http_429_retry_after`` (seconds), ``http_429_retry_date`` (HTTP-date)
- ``flaky_503``: 503 with Retry-After until the Nth try of that URL, then the photo
- ``redirect_chain`` (3 hops over hosts, then the photo), ``redirect_loop`` (A -> B -> A ...),
  ``redirect_private`` (to 10.0.0.1, 192.168.1.1, 169.254.169.254 ... which the client must refuse)
- ``html_as_jpeg`` ``json_as_jpeg`` ``text_as_jpeg``: not an image, served as ``image/jpeg``
- ``empty``: a zero-byte 200; ``endless``: a body that never ends
- ``gzip_bomb``: ``Content-Encoding: gzip`` of 256 MiB of zeros (~260 KB on the wire)
- ``png_bomb``: a valid 50000x50000 PNG of ~320 KB (decompression bomb)
- ``truncated_jpeg``: the first 60 % of a JPEG (decode error)
- ``wrong_ext`` / ``wrong_type``: a valid JPEG at a ``.png`` URL / as ``application/octet-stream``
  (must be KEPT: the magic number decides, not the name)
- ``robots_disallowed``: a valid photo under ``/private/``, which robots.txt disallows
- ``noai`` / ``noimageai``: a valid photo with ``X-Robots-Tag: noai`` / ``noimageai`` (opt-out)
- ``unresolvable``: a host name under ``.invalid`` (RFC 2606), which never resolves (DNS error)
- ``tls_self_signed``: a valid photo over HTTPS with a self-signed certificate (TLS error unless
  the client turns verification off); needs the ``openssl`` command, else the fault is left out

The last two are faults of the transport, so they are chosen per URL (or in the chaos mix), not
per host: ``host_faults`` takes only the others.

The bombs are built once per process, streaming, without ever holding the uncompressed bytes.
"""

from __future__ import annotations

import shutil
import ssl
import struct
import subprocess
import tempfile
import threading
import zlib
from pathlib import Path

FAULTS: tuple[str, ...] = (
    "slow_first_byte",
    "trickle",
    "reset",
    "short_body",
    "http_404",
    "http_410",
    "http_500",
    "http_502",
    "http_503",
    "http_429",
    "http_429_retry_after",
    "http_429_retry_date",
    "flaky_503",
    "redirect_chain",
    "redirect_loop",
    "redirect_private",
    "html_as_jpeg",
    "json_as_jpeg",
    "text_as_jpeg",
    "empty",
    "endless",
    "gzip_bomb",
    "png_bomb",
    "truncated_jpeg",
    "wrong_ext",
    "wrong_type",
    "robots_disallowed",
    "noai",
    "noimageai",
    "unresolvable",
    "tls_self_signed",
)

#: faults of name resolution and TLS: by URL only (a host cannot commit them in its handler)
TRANSPORT_FAULTS = frozenset({"unresolvable", "tls_self_signed"})

#: faults after which the client should end up with a valid image (the rest must be rejected)
RECOVERABLE = frozenset({"flaky_503", "redirect_chain", "wrong_ext", "wrong_type"})

HTTP_STATUS = {"http_404": 404, "http_410": 410, "http_500": 500, "http_502": 502, "http_503": 503}

REDIRECT_HOPS = 3
PNG_BOMB_SIDE = 50_000
GZIP_BOMB_BYTES = 256 * 1024 * 1024

HTML_BODY = (
    b"<!DOCTYPE html><html><head><title>Access Denied</title></head><body><h1>Access Denied</h1>"
    b"<p>You don't have permission to access this resource. Please enable cookies and JavaScript.</p>"
    b"</body></html>\n"
)
JSON_BODY = b'{"error": {"code": 404, "message": "The requested image was not found."}}\n'
TEXT_BODY = b"Image not available. Hotlinking is not permitted.\n"

_STEP = 1 << 20
_lock = threading.Lock()
_cache: dict[str, bytes] = {}


def _deflate_zeros(total: int, wbits: int) -> tuple[bytes, int]:
    """Compress ``total`` zero bytes streaming (1 MiB at a time); Z_RLE is fast on runs."""
    c = zlib.compressobj(9, zlib.DEFLATED, wbits, 9, zlib.Z_RLE)
    zero = bytes(_STEP)
    out: list[bytes] = []
    left = total
    while left > 0:
        n = min(left, _STEP)
        out.append(c.compress(zero if n == _STEP else bytes(n)))
        left -= n
    out.append(c.flush())
    return b"".join(out), total


def _chunk(kind: bytes, data: bytes) -> bytes:
    return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF)


def build_png_bomb(side: int = PNG_BOMB_SIDE) -> bytes:
    """A valid ``side`` x ``side`` 1-bit greyscale PNG, all black: tiny on disk, gigapixels decoded."""
    raw_len = side * (1 + (side + 7) // 8)  # each row: filter byte 0 + packed bits (all zero)
    idat, _ = _deflate_zeros(raw_len, 15)
    ihdr = struct.pack(">IIBBBBB", side, side, 1, 0, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + _chunk(b"IHDR", ihdr) + _chunk(b"IDAT", idat) + _chunk(b"IEND", b"")


def build_gzip_bomb(size: int = GZIP_BOMB_BYTES) -> bytes:
    """A gzip member that inflates to ``size`` zero bytes."""
    body, _ = _deflate_zeros(size, 31)
    return body


def bomb(name: str) -> bytes:
    """The cached bomb body (``png_bomb`` or ``gzip_bomb``); blocking the first time (~0.5 s)."""
    got = _cache.get(name)
    if got is not None:
        return got
    with _lock:
        got = _cache.get(name)
        if got is None:
            got = build_png_bomb() if name == "png_bomb" else build_gzip_bomb()
            _cache[name] = got
    return got


_tls: list[ssl.SSLContext | None] = []


def self_signed_context() -> ssl.SSLContext | None:
    """A server TLS context with a throw-away self-signed certificate, made once per process with
    the ``openssl`` command (``None`` where it is not installed or fails). The PEM files live only
    while the context loads them: nothing is left in the temp folder."""
    with _lock:
        if _tls:
            return _tls[0]
        got: ssl.SSLContext | None = None
        exe = shutil.which("openssl")
        if exe is not None:
            with tempfile.TemporaryDirectory(prefix="carcrawl-sandbox-tls-") as folder:
                cert, key = Path(folder) / "cert.pem", Path(folder) / "key.pem"
                cmd = [
                    exe, "req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes",
                    "-keyout", str(key), "-out", str(cert), "-days", "3650", "-subj", "/CN=carcrawl-sandbox",
                    "-addext", "subjectAltName=IP:127.0.0.2,IP:127.0.0.1,DNS:localhost",
                ]
                try:
                    subprocess.run(cmd, check=True, capture_output=True, timeout=60)
                    got = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
                    got.load_cert_chain(str(cert), str(key))
                except (OSError, subprocess.SubprocessError, ssl.SSLError):
                    got = None
        _tls.append(got)
        return got
