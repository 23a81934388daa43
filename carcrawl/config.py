"""Typed settings loaded from ``config.toml``, with CLI overrides.

Every setting is a field of a frozen dataclass below, with its default; the shipped
``config.toml`` documents each one. Loading checks every key and value against these types, so a
typo or a bad value fails at once with a message naming the file and the key (``download.
concurency: unknown key (did you mean 'concurrency'?)``), never a traceback mid-crawl.
"""

from __future__ import annotations

import dataclasses
import difflib
import ipaddress
import tomllib
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from carcrawl.errors import ConfigError


@dataclass(frozen=True)
class EngineSettings:
    """Limits and options for one search engine. Engines get stricter limits than image hosts."""

    rate: float = 0.5  # requests per second (token bucket refill)
    burst: int = 1  # token bucket size
    concurrency: int = 1  # requests in flight to this engine
    per_page: int = 35  # results asked for per request (where the engine takes a size)
    max_pages: int = 10  # pages per query at most
    base_url: str = ""  # "" = the engine's real address
    block_backoff: float = 300.0  # seconds the whole engine pauses after a block/CAPTCHA page
    options: dict[str, Any] = field(default_factory=dict)  # source-specific filters (see config.toml)


def _default_engines() -> dict[str, EngineSettings]:
    return {
        "bing": EngineSettings(rate=0.5, per_page=35),
        "duckduckgo": EngineSettings(rate=0.3, per_page=100),
        "openverse": EngineSettings(rate=0.5, per_page=20),
        "wikimedia": EngineSettings(rate=1.0, per_page=50),
        "flickr": EngineSettings(rate=1.0, per_page=100),
        "google": EngineSettings(rate=0.1, per_page=100, max_pages=3),
    }


@dataclass(frozen=True)
class CrawlSettings:
    out: str = "out"  # output folder: checkpoint, images/, export/
    checkpoint: str = ""  # "" = <out>/checkpoint.sqlite
    # several engines make a better dataset than one (the original crawl's lesson): different
    # photos, fewer shared biases; each has its own token bucket, so they search in parallel
    sources: list[str] = field(default_factory=lambda: ["bing", "duckduckgo", "openverse", "wikimedia"])
    per_query: int = 100  # candidate URLs wanted per query, split across the sources
    catalog: str = ""  # "" = the shipped catalogue (1 046 make/model pairs)
    colors: str = ""  # "" = the shipped colour list; else a file with one colour a line
    makes: list[str] = field(default_factory=list)  # narrow the catalogue (empty = all)
    models: list[str] = field(default_factory=list)
    color_filter: list[str] = field(default_factory=list)
    query_template: str = "{color} {make} {model}"
    max_queries: int = 0  # 0 = no limit
    max_images: int = 0  # stop once this many images are stored (0 = no cap)
    per_class: int = 0  # at most this many images per make/model (or category) class (0 = no quota)
    user_agent: str = "carcrawl/0.1 (dataset crawler; +https://github.com/carcrawl/carcrawl)"
    contact: str = ""  # an e-mail or URL appended to the User-Agent; Wikimedia asks for one
    allow_networks: list[str] = field(default_factory=list)  # CIDRs exempt from the SSRF guard
    body_type_sources: list[str] = field(default_factory=lambda: ["openverse", "wikimedia"])


@dataclass(frozen=True)
class DownloadSettings:
    concurrency: int = 64  # requests in flight, all hosts together
    per_host_concurrency: int = 4
    per_host_interval: float = 0.25  # seconds between request starts to one host, at least
    connect_timeout: float = 10.0
    read_timeout: float = 30.0  # longest silence while reading a body
    total_timeout: float = 120.0  # a whole transfer, at most
    max_redirects: int = 5
    max_retries: int = 3  # for 429/503/timeouts/resets
    backoff_base: float = 1.0  # seconds; doubles each try, with jitter
    backoff_max: float = 600.0
    max_retry_after: float = 600.0  # longest Retry-After honoured; beyond it the host is given up for the run
    robots_retry: float = 300.0  # a robots.txt answering 5xx or not at all disallows its host this long
    max_bytes: int = 20_000_000  # body size cap
    min_bytes: int = 100  # smaller bodies are rejected (tracking pixels, empty files)
    respect_robots: bool = True
    respect_noai: bool = True  # honour X-Robots-Tag: noai / noimageai
    verify_tls: bool = True
    queue_size: int = 256  # bounded hand-off to the classify stage


@dataclass(frozen=True)
class ClassifyConfig:
    enabled: bool = True
    model: Literal["auto", "efficientnet_lite0", "efficientnet_lite1", "efficientnet_lite2", "resnet50"] = "auto"
    weights: str = ""
    device: str = "auto"  # auto | cpu | cuda | cuda:N (checked by classify.settings.parse_device)
    decoder: Literal["auto", "pillow", "dali"] = "auto"
    batch_size: int = 32
    batch_timeout: float = 0.5  # seconds a partial batch waits before it runs
    threads: int = 0  # 0 = sized to the machine
    policy: Literal["head", "mass", "topk", "top1"] = "head"
    top_k: int = 4
    threshold: float = 0.5
    max_pixels: int = 50_000_000
    embeddings: bool = True


@dataclass(frozen=True)
class StoreSettings:
    commit_rows: int = 500  # commit after this many changed rows ...
    commit_interval: float = 1.0  # ... or this many seconds, whichever comes first


@dataclass(frozen=True)
class SandboxSettings:
    hosts: int = 8
    latency_ms: list[float] = field(default_factory=lambda: [20.0, 80.0])
    fault_rate: float = 0.1
    results_per_query: int = 40
    seed: int = 0
    photos: str = ""  # "" = the small photo set the project ships


@dataclass(frozen=True)
class Settings:
    crawl: CrawlSettings = field(default_factory=CrawlSettings)
    engines: dict[str, EngineSettings] = field(default_factory=_default_engines)
    download: DownloadSettings = field(default_factory=DownloadSettings)
    classify: ClassifyConfig = field(default_factory=ClassifyConfig)
    store: StoreSettings = field(default_factory=StoreSettings)
    sandbox: SandboxSettings = field(default_factory=SandboxSettings)

    @property
    def out_dir(self) -> Path:
        return Path(self.crawl.out)

    @property
    def checkpoint_path(self) -> Path:
        return Path(self.crawl.checkpoint) if self.crawl.checkpoint else self.out_dir / "checkpoint.sqlite"

    @property
    def user_agent(self) -> str:
        ua = self.crawl.user_agent
        return f"{ua} contact: {self.crawl.contact}" if self.crawl.contact else ua


# ---------------------------------------------------------------------------------------------
# validation


def _type_name(tp: Any) -> str:
    origin = typing.get_origin(tp)
    if origin is Literal:
        return "one of " + ", ".join(repr(a) for a in typing.get_args(tp))
    if origin in (list, tuple):
        return f"a list of {_type_name(typing.get_args(tp)[0])}"
    if origin is dict:
        return "a table"
    return {bool: "true or false", int: "an integer", float: "a number", str: "a string"}.get(
        tp, getattr(tp, "__name__", str(tp))
    )


def _coerce(value: Any, tp: Any, where: str) -> Any:
    """Check ``value`` against type ``tp``; return it (ints widened to floats). Raise ConfigError."""
    origin = typing.get_origin(tp)
    if dataclasses.is_dataclass(tp):
        if not isinstance(value, dict):
            raise ConfigError(f"{where}: expected a table, got {value!r}")
        return _build(tp, value, where)
    if origin is Literal:
        if value not in typing.get_args(tp):
            raise ConfigError(f"{where}: {value!r} is not allowed; expected {_type_name(tp)}")
        return value
    if origin is dict:
        if not isinstance(value, dict):
            raise ConfigError(f"{where}: expected a table, got {value!r}")
        _, vtp = typing.get_args(tp)
        return {k: _coerce(v, vtp, f"{where}.{k}") for k, v in value.items()}
    if origin is list:
        if not isinstance(value, list):
            raise ConfigError(f"{where}: expected {_type_name(tp)}, got {value!r}")
        (itp,) = typing.get_args(tp)
        return [_coerce(v, itp, f"{where}[{i}]") for i, v in enumerate(value)]
    if origin in (typing.Union, types.UnionType):
        return value
    if tp is Any:
        return value
    if tp is float and isinstance(value, int) and not isinstance(value, bool):
        return float(value)
    if tp is int and isinstance(value, bool) or not isinstance(value, tp):
        raise ConfigError(f"{where}: expected {_type_name(tp)}, got {value!r}")
    return value


def _build(cls: type, data: dict[str, Any], where: str, base: Any = None) -> Any:
    hints = typing.get_type_hints(cls)
    names = [f.name for f in dataclasses.fields(cls)]
    kwargs: dict[str, Any] = {}
    for key, value in data.items():
        full = f"{where}.{key}" if where else key
        if key not in names:
            close = difflib.get_close_matches(key, names, n=1)
            hint = f" (did you mean '{close[0]}'?)" if close else f"; known keys: {', '.join(names)}"
            raise ConfigError(f"{full}: unknown key{hint}")
        tp = hints[key]
        current = getattr(base, key) if base is not None else None
        if dataclasses.is_dataclass(tp) and current is not None and isinstance(value, dict):
            kwargs[key] = _build(tp, value, full, current)
        elif key == "engines" and cls is Settings:
            engines = dict(current if current is not None else _default_engines())
            if not isinstance(value, dict):
                raise ConfigError(f"{full}: expected a table of engines")
            for name, eng in value.items():
                if not isinstance(eng, dict):
                    raise ConfigError(f"{full}.{name}: expected a table")
                engines[name] = _build(EngineSettings, eng, f"{full}.{name}", engines.get(name))
            kwargs[key] = engines
        else:
            kwargs[key] = _coerce(value, tp, full)
    obj = dataclasses.replace(base, **kwargs) if base is not None else cls(**kwargs)
    _check_ranges(obj, where)
    return obj


_POSITIVE = {
    "per_query", "concurrency", "per_host_concurrency", "batch_size", "commit_rows", "queue_size",
    "max_bytes", "burst", "per_page", "max_pages", "hosts", "results_per_query", "top_k",
    "max_pixels",
}
_NON_NEGATIVE = {
    "per_host_interval", "connect_timeout", "read_timeout", "total_timeout", "max_redirects",
    "max_retries", "backoff_base", "backoff_max", "max_retry_after", "robots_retry", "min_bytes", "batch_timeout",
    "threads", "commit_interval", "max_queries", "block_backoff", "fault_rate", "seed", "max_images", "per_class",
}


def _check_ranges(obj: Any, where: str) -> None:
    for f in dataclasses.fields(obj):
        value = getattr(obj, f.name)
        full = f"{where}.{f.name}" if where else f.name
        if f.name in _POSITIVE and isinstance(value, int | float) and value <= 0:
            raise ConfigError(f"{full}: must be greater than 0, got {value!r}")
        if f.name in _NON_NEGATIVE and isinstance(value, int | float) and value < 0:
            raise ConfigError(f"{full}: must be 0 or more, got {value!r}")
        if f.name in ("rate",) and value <= 0:
            raise ConfigError(f"{full}: must be greater than 0 requests/s, got {value!r}")
        if f.name in ("threshold", "fault_rate") and not 0 <= value <= 1:
            raise ConfigError(f"{full}: must be between 0 and 1, got {value!r}")
        if f.name == "allow_networks":
            for i, net in enumerate(value):
                try:
                    ipaddress.ip_network(net, strict=False)
                except ValueError:
                    raise ConfigError(f"{full}[{i}]: not a network like '10.0.0.0/8': {net!r}") from None
        if f.name == "device" and isinstance(value, str):
            from carcrawl.classify.settings import parse_device

            try:
                parse_device(value)
            except ConfigError:
                raise ConfigError(f"{full}: {value!r} is not one of auto, cpu, cuda, cuda:N (N = a GPU index)") from None
        if f.name in ("user_agent", "contact") and any(ord(c) < 32 or ord(c) == 127 for c in value):
            raise ConfigError(f"{full}: must not contain control characters (it is sent as an HTTP header)")


def load_settings(path: str | Path | None = None, overrides: dict[str, Any] | None = None) -> Settings:
    """Load ``path`` (TOML) over the defaults, then apply ``overrides`` (dotted keys from the CLI)."""
    settings = Settings()
    if path is not None:
        p = Path(path)
        try:
            data = tomllib.loads(p.read_text(encoding="utf-8"))
        except FileNotFoundError:
            raise ConfigError(f"{p}: config file not found") from None
        except tomllib.TOMLDecodeError as e:
            raise ConfigError(f"{p}: not valid TOML: {e}") from None
        try:
            settings = _build(Settings, data, "", settings)
        except ConfigError as e:
            raise ConfigError(f"{p}: {e}") from None
        _check_sources(settings, f"{p}: ")  # before overrides, which may replace a bad value
    if overrides:
        nested: dict[str, Any] = {}
        for dotted, value in overrides.items():
            if value is None:
                continue
            node = nested
            *parents, leaf = dotted.split(".")
            for part in parents:
                node = node.setdefault(part, {})
            node[leaf] = value
        try:
            settings = _build(Settings, nested, "", settings)
        except ConfigError as e:
            raise ConfigError(f"command line: {e}") from None
    from_cli = bool(overrides) and overrides.get("crawl.sources") is not None
    _check_sources(settings, "command line (--sources): " if from_cli else "command line: " if path is None else f"{path}: ")
    return settings


def _check_sources(settings: Settings, where: str) -> None:
    unknown = [s for s in settings.crawl.sources if s not in settings.engines and s != "urls"]
    if unknown:
        raise ConfigError(
            f"{where}crawl.sources: unknown source {unknown[0]!r}; allowed: {', '.join(sorted(settings.engines))}"
        )
