"""``carcrawl demo``: the whole pipeline against the embedded sandbox web, offline.

The sandbox serves Bing, DuckDuckGo, Openverse and Wikimedia Commons result pages in their real
formats and real photos from many loopback hosts (with a share of faults: HTML served as JPEG,
404s, truncated files). The crawl searches all four, downloads politely, classifies with a real
model, and the demo then exports an ImageFolder tree, a Parquet manifest and the HTML report.
"""

from __future__ import annotations

import contextlib
import json
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

from carcrawl.config import load_settings
from carcrawl.models import Labels, Query
from carcrawl.pipeline import Job

#: the make/models the shipped sandbox photos show (carcrawl/data/sandbox_photos/TAGS.csv), all in
#: the shipped catalogue: the sandbox answers a query for one of them mostly with its photos (plus
#: noise), as an engine would, so the demo's classes hold what their names say
DEMO_MODELS = (
    ("ford", "mustang"), ("toyota", "corolla"), ("hyundai", "genesis"), ("mazda", "tribute"),
    ("bmw", "1 series"), ("mitsubishi", "lancer"), ("lamborghini", "gallardo"), ("dodge", "durango"),
    ("hyundai", "azera"), ("mitsubishi", "eclipse"), ("aston martin", "v8 vantage"), ("lamborghini", "reventon"),
    ("ford", "e-series"), ("ram", "c/v"),
)
DEMO_COLORS = ("red", "black", "white", "blue")
DEMO_SOURCES = ["bing", "duckduckgo", "openverse", "wikimedia"]


def demo_queries(n: int) -> list[Query]:
    """``n`` queries: every demo model once (colours in turn), then again in the next colour."""
    out = []
    for round_ in range(len(DEMO_COLORS)):
        for i, (make, model) in enumerate(DEMO_MODELS):
            color = DEMO_COLORS[(i + round_) % len(DEMO_COLORS)]
            out.append(Query(f"{color} {make} {model}", Labels(make=make, model=model, color=color)))
    return out[:n]


def demo_settings(out: Path, *, per_query: int, device: str | None, photos: Path | None = None) -> Any:
    overrides: dict[str, Any] = {
        "crawl.out": str(out),
        "crawl.sources": DEMO_SOURCES,
        "crawl.per_query": per_query,
        "classify.device": device,
        "download.per_host_interval": 0.05,
        "download.max_retries": 2,
        "download.backoff_base": 0.2,
        "download.total_timeout": 20.0,
        "download.read_timeout": 5.0,
        "sandbox.photos": str(photos) if photos else None,
    }
    for name in DEMO_SOURCES:
        overrides[f"engines.{name}.rate"] = 20.0
        overrides[f"engines.{name}.burst"] = 4
        overrides[f"engines.{name}.concurrency"] = 2
        overrides[f"engines.{name}.block_backoff"] = 2.0
    return load_settings(None, overrides)


def sandbox_around(**sandbox_kwargs: Any) -> Callable[[Any], Any]:
    """An async context manager factory: start the sandbox, point the engines at it, allow its
    loopback addresses through the SSRF guard (explicitly: nothing else is allowed)."""

    @contextlib.asynccontextmanager
    async def around(settings: Any) -> AsyncIterator[Any]:
        from carcrawl.config import load_settings as _load
        from carcrawl.sandbox import Sandbox

        sb_cfg = settings.sandbox
        kwargs: dict[str, Any] = {
            "hosts": sb_cfg.hosts, "latency_ms": tuple(sb_cfg.latency_ms), "fault_rate": sb_cfg.fault_rate,
            "results_per_query": sb_cfg.results_per_query, "seed": sb_cfg.seed,
            "photos": Path(sb_cfg.photos) if sb_cfg.photos else None,
        }
        kwargs.update(sandbox_kwargs)
        async with Sandbox(**kwargs) as sb:
            overrides: dict[str, Any] = {"crawl.allow_networks": ["127.0.0.0/8"]}
            for name in settings.crawl.sources:
                if name != "urls":
                    overrides[f"engines.{name}.base_url"] = sb.engine_url(name)
            yield _with(settings, overrides, _load)

    return around


def _with(settings: Any, overrides: dict[str, Any], load: Any) -> Any:
    import dataclasses

    # re-validate the overrides through the same loader the CLI uses
    base = load(None, overrides)
    engines = dict(settings.engines)
    for name, eng in engines.items():
        if name in base.engines and base.engines[name].base_url:
            engines[name] = dataclasses.replace(eng, base_url=base.engines[name].base_url)
    crawl = dataclasses.replace(settings.crawl, allow_networks=base.crawl.allow_networks)
    return dataclasses.replace(settings, engines=engines, crawl=crawl)


def run_demo(
    out: Path, *, queries: int, per_query: int, device: str | None, fresh: bool, quiet: bool, as_json: bool,
    run_pipeline: Callable[..., Any],
) -> None:
    settings = demo_settings(out, per_query=per_query, device=device)
    qs = demo_queries(queries)
    job = Job(queries=lambda: iter(qs), fingerprint=json.dumps([q.text for q in qs] + [per_query]))
    run_pipeline(settings, job, command="demo", fresh=fresh, quiet=quiet, as_json=as_json, around=sandbox_around())
    _export_all(out, quiet=quiet or as_json)


def _export_all(out: Path, *, quiet: bool) -> None:
    from carcrawl.progress import console

    try:
        from carcrawl.export import export
        from carcrawl.export.dedup import find_near_duplicates
        from carcrawl.report import write_report
    except ImportError as e:  # pragma: no cover - the export package is part of carcrawl
        console.print(f"export skipped: {e}")
        return
    find_near_duplicates(out)
    folder = export(out, "imagefolder", out / "export" / "imagefolder")
    manifest = export(out, "parquet", out / "export" / "parquet")
    report = write_report(out)
    if not quiet:
        console.print(f"exported: {folder}")
        console.print(f"manifest: {manifest.path} (same images, every column)")
        console.print(f"report:   {report}")
