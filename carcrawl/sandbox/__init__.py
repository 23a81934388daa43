"""The sandbox web: a local aiohttp server that speaks like real search engines and image hosts.

The demo, the tests and the benchmarks run against it, so the whole pipeline works offline and
every fault a real crawl meets can be reproduced. Public API::

    from carcrawl.sandbox import Sandbox, SandboxProcess, FAULTS

    async with Sandbox(latency_ms=(0, 0)) as sb:
        sb.engine_url("bing")            # base URL for a Bing source
        list(sb.image_urls(100))         # URLs for URL-list workloads
        sb.fault_url("gzip_bomb")        # one URL that commits that fault
        sb.access_log.max_concurrency("127.0.0.2")

Names are imported lazily, so ``import carcrawl.sandbox`` does not pull in aiohttp until a
server is actually wanted (``carcrawl --help`` stays instant).
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

_EXPORTS = {
    "Access": "accesslog",
    "AccessLog": "accesslog",
    "FAULTS": "faults",
    "RECOVERABLE": "faults",
    "DEMO_FAULTS": "layout",
    "ENGINES": "layout",
    "ResultItem": "layout",
    "SandboxLayout": "layout",
    "Truth": "layout",
    "DEFAULT_PHOTO_DIR": "photos",
    "SandboxProcess": "process",
    "describe": "process",
    "run_sandbox_process": "process",
    "serve_forever": "process",
    "Sandbox": "server",
}

__all__ = [
    "Access",
    "AccessLog",
    "DEFAULT_PHOTO_DIR",
    "DEMO_FAULTS",
    "ENGINES",
    "FAULTS",
    "RECOVERABLE",
    "ResultItem",
    "Sandbox",
    "SandboxLayout",
    "SandboxProcess",
    "Truth",
    "describe",
    "run_sandbox_process",
    "serve_forever",
]

if TYPE_CHECKING:  # pragma: no cover
    from carcrawl.sandbox.accesslog import Access, AccessLog
    from carcrawl.sandbox.faults import FAULTS, RECOVERABLE
    from carcrawl.sandbox.layout import DEMO_FAULTS, ENGINES, ResultItem, SandboxLayout, Truth
    from carcrawl.sandbox.photos import DEFAULT_PHOTO_DIR
    from carcrawl.sandbox.process import SandboxProcess, describe, run_sandbox_process, serve_forever
    from carcrawl.sandbox.server import Sandbox


def __getattr__(name: str) -> Any:
    mod = _EXPORTS.get(name)
    if mod is None:
        raise AttributeError(f"module 'carcrawl.sandbox' has no attribute {name!r}")
    value = getattr(importlib.import_module(f"carcrawl.sandbox.{mod}"), name)
    globals()[name] = value
    return value
