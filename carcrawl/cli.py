"""The ``carcrawl`` command line (typer). Imports are lazy so ``carcrawl --help`` is instant."""

from __future__ import annotations

import asyncio
import contextlib
import gc
import json
import logging
import os
import signal
import sys
from pathlib import Path
from typing import Annotated, Any

import typer
from typer.core import TyperArgument, TyperCommand, TyperGroup, TyperOption

from carcrawl.errors import CarcrawlError


class _Plain:
    """Help without noise: no ``<bool>`` after every flag, arguments in usage lines written
    ``URLS`` / ``[DIR]`` (not ``{urls}``)."""

    def get_params(self, ctx: Any) -> list[Any]:
        params = super().get_params(ctx)  # type: ignore[misc]
        for p in params:
            if isinstance(p, TyperOption) and (p.is_flag or p.count) and p.metavar is None:
                p.metavar = ""
        return params

    def collect_usage_pieces(self, ctx: Any) -> list[str]:
        pieces = [self.options_metavar] if self.options_metavar else []  # type: ignore[attr-defined]
        for p in self.get_params(ctx):
            if isinstance(p, TyperArgument):
                name = (p.metavar or p.name or "").upper() + ("..." if p.nargs != 1 else "")
                pieces.append(name if p.required else f"[{name}]")
        if isinstance(self, TyperGroup):
            pieces.append(self.subcommand_metavar)
        return pieces


class _Command(_Plain, TyperCommand):
    pass


class _Group(_Plain, TyperGroup):
    pass


_CONTEXT = {"help_option_names": ["-h", "--help"]}
app = typer.Typer(
    add_completion=False,
    no_args_is_help=True,
    help="Build labelled, filtered, de-duplicated image datasets overnight on one machine.",
    pretty_exceptions_enable=False,
    context_settings=_CONTEXT,
    cls=_Group,
)
review_app = typer.Typer(help="Apply spot-check marks from the report page.", no_args_is_help=True,
                         context_settings=_CONTEXT, cls=_Group)
app.add_typer(review_app, name="review")


def _command(name: str | None = None) -> Any:
    return app.command(name, cls=_Command)


def _version(value: bool) -> None:
    if value:
        from carcrawl import __version__

        typer.echo(f"carcrawl {__version__}")
        raise typer.Exit()


@app.callback()
def _root(
    version: Annotated[bool, typer.Option("--version", "-V", is_eager=True, callback=_version,
                                          help="Print the version and exit.")] = False,
) -> None:
    """Build labelled, filtered, de-duplicated image datasets overnight on one machine."""


ConfigOpt = Annotated[Path | None, typer.Option("--config", "-c", help="config.toml to load (default: ./config.toml if present).")]
OutOpt = Annotated[Path | None, typer.Option("--out", "-o", help="Output folder: checkpoint, images, export (default: out).")]
DirArg = Annotated[Path, typer.Argument(metavar="DIR", help="Output folder of a crawl (what crawl/fetch/demo --out got).")]
QuietOpt = Annotated[bool, typer.Option("--quiet", "-q", help="No progress display.")]
JsonOpt = Annotated[bool, typer.Option("--json", help="Print the final summary as one JSON object.")]
FreshOpt = Annotated[bool, typer.Option("--fresh", help="Start over: delete the checkpoint first.")]
DeviceOpt = Annotated[str | None, typer.Option("--device", help="Classifier device: auto, cpu or cuda.")]
ClassifyOpt = Annotated[bool | None, typer.Option("--classify/--no-classify", help="Run the classifier on what downloads (default: classify.enabled, true).")]
DEFAULT_DIR = Path("out")
WorkersOpt = Annotated[int | None, typer.Option("--workers", help="Split the crawl by host into N shards run by N local Ray workers (needs carcrawl[ray]).")]
RayOpt = Annotated[str | None, typer.Option("--ray", help="Run the shards on an existing Ray cluster at this address (needs carcrawl[ray]).")]


#: the cyclic collector's thresholds for the command-line process (Python's are 700, 10, 10).
#: A crawl allocates a few hundred tracked objects per image and frees nearly all of them by
#: reference counting; with 700 the young generation was collected ~190 times per 3 000 images
#: (~0.25 CPU-s a run with the start-up's imports), with 10 000 about ten (~0.07 CPU-s).
GC_THRESHOLDS = (10_000, 10, 10)


def _terminated(signum: int, frame: object) -> None:
    """SIGTERM outside a crawl (which drains on it, see ``run_with_signals``): leave as Ctrl-C
    does, through every ``finally``, so an export's temporary files and forked workers go too."""
    raise SystemExit(128 + signum)


def main() -> None:
    """Console-script entry point: clean messages for our errors, exit codes that mean something."""
    gc.set_threshold(*GC_THRESHOLDS)  # this process only: importing carcrawl as a library leaves it alone
    signal.signal(signal.SIGTERM, _terminated)
    try:
        app()
    except CarcrawlError as e:
        typer.echo(f"carcrawl: error: {e}", err=True)
        sys.exit(e.exit_code)


def _fail(e: CarcrawlError) -> None:
    typer.echo(f"carcrawl: error: {e}", err=True)
    raise typer.Exit(e.exit_code)


def _settings(config: Path | None, overrides: dict[str, Any]) -> Any:
    from carcrawl.config import load_settings

    if config is None and Path("config.toml").exists():
        config = Path("config.toml")
    return load_settings(config, overrides)


def _run_async(coro: Any) -> Any:
    try:
        import uvloop
    except ImportError:
        return asyncio.run(coro)
    return uvloop.run(coro)


def _setup_logging(quiet: bool) -> None:
    logging.basicConfig(level=logging.WARNING if quiet else logging.INFO, format="%(levelname)s %(name)s: %(message)s")


def prepare_out(path: Path, flag: str = "--out") -> Path:
    """Create the output folder, or say in one line why it cannot be one (exit 2)."""
    if path.exists() and not path.is_dir():
        raise CarcrawlError(f"{flag} {path}: exists and is not a folder")
    try:
        path.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise CarcrawlError(f"{flag} {path}: cannot create the folder: {e.strerror or e}") from None
    if not os.access(path, os.W_OK | os.X_OK):
        raise CarcrawlError(f"{flag} {path}: the folder is not writable")
    return path


def _run_pipeline(
    settings: Any, job: Any, *, command: str, fresh: bool, quiet: bool, as_json: bool, around: Any = None,
    workers: int | None = None, ray_address: str | None = None,
) -> Any:
    """Run one pipeline with progress and Ctrl-C handling, holding the output folder's lock.
    ``around(settings)`` is an optional async context manager that yields the settings to use
    (the demo and ``crawl --sandbox`` start or point at the sandbox there)."""
    from carcrawl.lock import FolderLock, command_line
    from carcrawl.pipeline import Pipeline, run_with_signals
    from carcrawl.progress import ProgressDisplay, print_summary

    display = ProgressDisplay(enabled=not quiet and not as_json, classify=settings.classify.enabled)
    used = settings

    if around is None and (workers is not None or ray_address or _sharded(settings, fresh)):
        from carcrawl.distributed.driver import run_sharded

        def go_sharded() -> Any:
            return run_sharded(settings, job, command=command, fresh=fresh, workers=workers, address=ray_address,
                               on_event=display.event, run_async=_run_async)
    else:
        go_sharded = None

    async def go() -> Any:
        nonlocal used
        if around is None:
            return await run_with_signals(Pipeline(settings, job, command=command, fresh=fresh, on_event=display.event))
        async with around(settings) as used:
            return await run_with_signals(Pipeline(used, job, command=command, fresh=fresh, on_event=display.event))

    try:
        out = prepare_out(settings.out_dir)
        with FolderLock(out, command_line()), display:
            result = go_sharded() if go_sharded is not None else _run_async(go())
            display.final(result)
    except CarcrawlError as e:
        _fail(e)
    except (KeyboardInterrupt, asyncio.CancelledError):
        typer.echo("carcrawl: stopped at once; everything committed is kept. Run the same command to resume.", err=True)
        raise typer.Exit(130) from None
    if as_json:
        typer.echo(json.dumps({"state": result.state, "elapsed_s": result.elapsed_s, "classifier": result.classifier,
                               "stats": result.stats, "status": result.status}, default=str))
    elif not quiet:
        print_summary(result, used)
    if result.state == "interrupted":
        typer.echo("carcrawl: interrupted; run the same command again to resume.", err=True)
        raise typer.Exit(130)
    return result


def _sharded(settings: Any, fresh: bool) -> bool:
    """An earlier ``--workers``/``--ray`` run left unmerged shards: the same command resumes them."""
    from carcrawl.store.shards import planned_shards

    return not fresh and planned_shards(settings.checkpoint_path) > 0


def _catalog_job(settings: Any, *, body_types: bool) -> Any:
    from carcrawl import catalog
    from carcrawl.pipeline import Job

    c = settings.crawl
    catalog.validate_pairs(c.catalog or None)
    colors = catalog.read_list(c.colors) if c.colors else None
    catalog.check_filters(c.catalog or None, makes=c.makes, models=c.models)

    def queries() -> Any:
        return catalog.image_queries(
            c.catalog or None, colors, makes=c.makes, models=c.models, color_filter=c.color_filter,
            template=c.query_template, limit=c.max_queries,
        )

    bt_sources = tuple(s for s in c.body_type_sources) if body_types else ()

    def bt_queries() -> Any:
        return catalog.bodytype_queries(c.catalog or None, makes=c.makes, models=c.models)

    fp = json.dumps([c.catalog, c.colors, c.makes, c.models, c.color_filter, c.query_template, c.max_queries,
                     c.sources, c.per_query, bt_sources])
    return Job(queries=queries, fingerprint=fp, bodytype_queries=bt_queries if bt_sources else None,
               bodytype_sources=bt_sources)


SANDBOX_ENGINES = ("bing", "duckduckgo", "openverse", "wikimedia", "google")


def _point_at_sandbox(config: Path | None, overrides: dict[str, Any], url: str) -> Any:
    """Settings with every search source aimed at a running ``carcrawl sandbox`` (one address
    for all engines) and the loopback image hosts let through the SSRF guard, explicitly."""
    from urllib.parse import urlsplit

    parts = urlsplit(url.strip())
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise CarcrawlError(f"--sandbox: expected the address `carcrawl sandbox` printed, like http://127.0.0.1:8500, got {url!r}")
    settings = _settings(config, overrides)
    names = [n for n in settings.crawl.sources if n != "urls"]
    unknown = [n for n in names if n not in SANDBOX_ENGINES]
    if unknown:
        raise CarcrawlError(f"--sandbox: the sandbox does not serve {unknown[0]!r}; use --sources with "
                            f"{', '.join(SANDBOX_ENGINES)}")
    base = f"{parts.scheme}://{parts.netloc}"
    more: dict[str, Any] = {f"engines.{n}.base_url": base for n in names}
    nets = ["127.0.0.0/8"]
    try:
        import ipaddress

        nets.append(str(ipaddress.ip_network(parts.hostname)))
    except ValueError:
        pass  # a host name: its address is checked like any other
    more["crawl.allow_networks"] = sorted(set(settings.crawl.allow_networks) | set(nets))
    return _settings(config, {**overrides, **more})


def _print_plan(settings: Any, job: Any, limit: int = 20) -> None:
    """``--dry-run``: the queries a crawl would search, how many, and on which sources."""
    sources = [n for n in settings.crawl.sources if n != "urls"]
    n = 0
    for q in job.queries():
        if n < limit:
            typer.echo(q.text)
        n += 1
    if n > limit:
        typer.echo(f"... and {n - limit} more")
    bt = sum(1 for _ in job.bodytype_queries()) if job.bodytype_queries else 0
    extra = f", plus {bt} body-type queries on {', '.join(job.bodytype_sources)}" if bt else ""
    typer.echo(f"{n} queries x {len(sources)} sources ({', '.join(sources)}) = {n * len(sources)} searches, "
               f"up to {settings.crawl.per_query} URLs per query{extra}; nothing was searched (dry run)")


@_command()
def crawl(
    config: ConfigOpt = None,
    out: OutOpt = None,
    make: Annotated[list[str] | None, typer.Option("--make", help="Only these makes (repeatable).")] = None,
    model: Annotated[list[str] | None, typer.Option("--model", help="Only these models (repeatable).")] = None,
    color: Annotated[list[str] | None, typer.Option("--color", help="Only these colours (repeatable).")] = None,
    catalog: Annotated[Path | None, typer.Option(help="CSV with make,model columns (default: the shipped catalogue).")] = None,
    sources: Annotated[str | None, typer.Option(help="Comma-separated search sources, e.g. bing,openverse.")] = None,
    per_query: Annotated[int | None, typer.Option(help="Candidate URLs wanted per query.")] = None,
    max_queries: Annotated[int | None, typer.Option(help="Stop after this many queries (0 = all).")] = None,
    max_images: Annotated[int | None, typer.Option(help="Stop once this many images are stored (0 = no cap).")] = None,
    per_class: Annotated[int | None, typer.Option(help="At most this many images per make/model class (0 = no quota).")] = None,
    body_types: Annotated[bool, typer.Option("--body-types/--no-body-types", help="Also count hits per body type.")] = False,
    sandbox: Annotated[str | None, typer.Option("--sandbox", metavar="URL", help="Crawl a running `carcrawl sandbox` at this address instead of the real engines.")] = None,
    dry_run: Annotated[bool, typer.Option("--dry-run", help="Print the planned queries and their count; search nothing.")] = False,
    classify: ClassifyOpt = None,
    device: DeviceOpt = None,
    fresh: FreshOpt = False,
    quiet: QuietOpt = False,
    as_json: JsonOpt = False,
    workers: WorkersOpt = None,
    ray: RayOpt = None,
) -> None:
    """The overnight job: catalogue, search, download, classify, checkpoint.

    Resumes automatically when the checkpoint exists (--fresh starts over)."""
    _setup_logging(quiet or as_json)
    try:
        overrides = {
            "crawl.out": str(out) if out else None,
            "crawl.makes": make or None, "crawl.models": model or None, "crawl.color_filter": color or None,
            "crawl.catalog": str(catalog) if catalog else None,
            "crawl.sources": [s.strip() for s in sources.split(",") if s.strip()] if sources is not None else None,
            "crawl.per_query": per_query, "crawl.max_queries": max_queries,
            "crawl.max_images": max_images, "crawl.per_class": per_class,
            "classify.enabled": classify, "classify.device": device,
        }
        settings = _point_at_sandbox(config, overrides, sandbox) if sandbox else _settings(config, overrides)
        job = _catalog_job(settings, body_types=body_types)
    except CarcrawlError as e:
        _fail(e)
    if dry_run:
        _print_plan(settings, job)
        return
    _run_pipeline(settings, job, command="crawl", fresh=fresh, quiet=quiet, as_json=as_json, workers=workers,
                  ray_address=ray)


@_command()
def fetch(
    urls: Annotated[Path, typer.Argument(metavar="URLS", help="URL list: .txt, .csv/.tsv, .jsonl or .parquet (optional label columns).")],
    config: ConfigOpt = None,
    out: OutOpt = None,
    url_column: Annotated[str, typer.Option(help="Column holding the URL in CSV/JSONL/Parquet.")] = "url",
    categories: Annotated[Path | None, typer.Option(help="Categories table code,name,to_download,how_many selecting from URLS.")] = None,
    skip_bad_lines: Annotated[bool, typer.Option("--skip-bad-lines", help="Skip rows without a usable URL (and say how many) instead of stopping.")] = False,
    max_images: Annotated[int | None, typer.Option(help="Stop once this many images are stored (0 = no cap).")] = None,
    classify: ClassifyOpt = None,
    device: DeviceOpt = None,
    fresh: FreshOpt = False,
    quiet: QuietOpt = False,
    as_json: JsonOpt = False,
    workers: WorkersOpt = None,
    ray: RayOpt = None,
) -> None:
    """Download, verify and classify a list of URLs (no search)."""
    from carcrawl.pipeline import Job

    _setup_logging(quiet or as_json)
    try:
        settings = _settings(config, {
            "crawl.out": str(out) if out else None, "crawl.sources": ["urls"], "crawl.max_images": max_images,
            "classify.enabled": classify, "classify.device": device,
        })
        from carcrawl import urllists

        if categories is not None:
            cats = urllists.read_categories(categories)
            urllists.check_url_table(urls)

            def rows() -> Any:
                return urllists.select_from_url_table(cats, urls)

            fp = f"categories:{categories.resolve()}:{urls.resolve()}:{categories.stat().st_mtime}:{urls.stat().st_mtime}"
        else:
            good, bad, first = urllists.count_rows(urls, url_column=url_column, stop_after_errors=not skip_bad_lines)
            if bad and not skip_bad_lines:
                urllists.raise_bad_rows(first, more=bad > len(first))
            if bad:
                typer.echo(f"carcrawl: warning: skipped {bad} bad lines of {urls} (first: {first[0]})", err=True)
            if good == 0:
                raise CarcrawlError(f"{urls}: no URLs in the file (empty, or only blank lines and comments); nothing to fetch")

            def rows() -> Any:
                return urllists.read_urls(urls, url_column=url_column, check_first=False, skip_bad=skip_bad_lines)

            fp = f"urls:{urls.resolve()}:{urls.stat().st_size}:{urls.stat().st_mtime}"
    except CarcrawlError as e:
        _fail(e)
    except OSError as e:
        _fail(CarcrawlError(f"{urls}: {e.strerror}"))
    _run_pipeline(settings, Job(urls=rows, fingerprint=fp), command="fetch", fresh=fresh, quiet=quiet, as_json=as_json,
                  workers=workers, ray_address=ray)
    if categories is not None and not as_json:
        from carcrawl.progress import print_category_report

        print_category_report(settings.checkpoint_path)


@_command()
def demo(
    out: Annotated[Path, typer.Option("--out", "-o", help="Where the checkpoint, images and export go.")] = Path("demo-out"),
    queries: Annotated[int, typer.Option(help="How many make/model/colour queries to run (14: each model the sandbox photos show once).")] = 14,
    per_query: Annotated[int, typer.Option(help="Candidate URLs per query.")] = 20,
    device: DeviceOpt = None,
    fresh: Annotated[bool, typer.Option("--fresh/--resume", help="Start over (default) or resume a killed demo.")] = True,
    quiet: QuietOpt = False,
    as_json: JsonOpt = False,
) -> None:
    """The whole pipeline offline, against the embedded sandbox web.

    Searches four engine formats, downloads from many loopback hosts with faults, classifies
    with a real model and exports."""
    from carcrawl.demo import run_demo

    _setup_logging(quiet or as_json)
    try:
        run_demo(out, queries=queries, per_query=per_query, device=device, fresh=fresh, quiet=quiet, as_json=as_json,
                 run_pipeline=_run_pipeline)
    except CarcrawlError as e:
        _fail(e)


@contextlib.contextmanager
def _reader_may_leave() -> Any:
    """``carcrawl status DIR | head``: when the reader has what it wanted, stop quietly (exit 0)."""
    try:
        yield
        sys.stdout.flush()
    except BrokenPipeError:
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())


def _checkpoint_of(target: Path) -> Path:
    return target / "checkpoint.sqlite" if target.is_dir() or not target.suffix else target


@_command()
def status(
    target: Annotated[Path, typer.Argument(metavar="DIR", help="Output folder (or its checkpoint file).")] = DEFAULT_DIR,
    url: Annotated[str | None, typer.Option("--url", help="Tell why this one URL failed (like `carcrawl why`).")] = None,
    as_json: JsonOpt = False,
) -> None:
    """Counts by state and reason, rates and ETA (works while a crawl runs)."""
    if url is not None:
        why(url, target, as_json)
        return
    from carcrawl.progress import finish_status, print_status
    from carcrawl.store import open_readonly, status_counts

    path = _checkpoint_of(target)
    try:
        con = open_readonly(path)
    except CarcrawlError as e:
        _fail(e)
    try:
        counts = status_counts(con)
    finally:
        con.close()
    counts = finish_status(_with_shards(path, counts), path.parent)
    if as_json:
        typer.echo(json.dumps(counts))
        return
    print_status(counts, path)


def _with_shards(checkpoint: Path, counts: dict[str, Any]) -> dict[str, Any]:
    """While a ``--workers`` crawl runs (or after one was interrupted), count its shards too."""
    from carcrawl.store.shards import combined_status, shard_checkpoints

    shards = shard_checkpoints(checkpoint)
    return combined_status(checkpoint, shards) if shards else counts


@_command()
def why(
    url: Annotated[str, typer.Argument(metavar="URL", help="A URL as the crawl found it (or as in your URL list).")],
    target: Annotated[Path, typer.Argument(metavar="DIR", help="Output folder of the crawl.")] = DEFAULT_DIR,
    as_json: JsonOpt = False,
) -> None:
    """Why one URL failed: its state, reason, attempts, and the search that found it."""
    from carcrawl.progress import print_story
    from carcrawl.sources import normalize_url, strip_credentials
    from carcrawl.store import open_readonly
    from carcrawl.store.lookup import url_story

    path = _checkpoint_of(target)
    try:
        con = open_readonly(path)
    except CarcrawlError as e:
        _fail(e)
    try:
        story = url_story(con, normalize_url(strip_credentials(url)[0]))
    finally:
        con.close()
    if story is None:
        _fail(CarcrawlError(f"{path}: no candidate with URL {strip_credentials(url)[0]!r}"))
    with _reader_may_leave():
        if as_json:
            typer.echo(json.dumps(story))
            return
        print_story(story)


@_command()
def export(
    target: DirArg = DEFAULT_DIR,
    fmt: Annotated[str, typer.Option("--format", "-f", help="imagefolder | hf | webdataset | parquet")] = "imagefolder",
    to: Annotated[Path | None, typer.Option("--to", help="Where to write (default: <DIR>/export/<format>).")] = None,
    scheme: Annotated[str, typer.Option(help="Labels: make_model | make_model_color | body_type | category")] = "make_model",
    labels: Annotated[str | None, typer.Option(help="Comma-separated subset of labels to export.")] = None,
    ratios: Annotated[str, typer.Option(help="train,val,test ratios.")] = "0.7,0.15,0.15",
    seed: Annotated[int, typer.Option(help="Split seed.")] = 0,
    min_count: Annotated[int, typer.Option(help="Drop classes with fewer images.")] = 1,
    merge_map: Annotated[Path | None, typer.Option(help="JSON or CSV from,to label merges.")] = None,
    dedup: Annotated[bool, typer.Option("--dedup/--no-dedup", help="Find near-duplicates first.")] = True,
    refined: Annotated[bool, typer.Option("--refined", help="Let the probe's scores (carcrawl refine) decide, not the classifier.")] = False,
    workers: Annotated[int | None, typer.Option(help="Processes planning the dataset (default: one per core, up to 4, from 20 000 images).")] = None,
) -> None:
    """Write the dataset: ImageFolder splits, Hugging Face, WebDataset shards or Parquet."""
    from carcrawl.export import export as do_export

    try:
        r = tuple(float(x) for x in ratios.split(","))
        if len(r) != 3:
            raise ValueError
    except ValueError:
        _fail(CarcrawlError(f"--ratios: expected three numbers like 0.7,0.15,0.15, got {ratios!r}"))
    try:
        if dedup:
            from carcrawl.export.dedup import find_near_duplicates

            find_near_duplicates(target)
        summary = do_export(
            target, fmt, to or target / "export" / fmt, scheme=scheme,
            labels=labels.split(",") if labels else None, ratios=r, seed=seed, min_count=min_count,
            merge_map=merge_map, refined=refined, workers=workers,
        )
    except CarcrawlError as e:
        _fail(e)
    typer.echo(str(summary))


@_command()
def report(
    target: DirArg = DEFAULT_DIR,
    to: Annotated[Path | None, typer.Option("--to", help="HTML file to write (default: <DIR>/report.html).")] = None,
) -> None:
    """One static HTML report with a spot-check gallery you can mark and save."""
    from carcrawl.report import write_report

    try:
        path = write_report(target, to)
    except CarcrawlError as e:
        _fail(e)
    typer.echo(f"report: {path}")


@review_app.command("import", cls=_Command)
def review_import(
    marks: Annotated[Path, typer.Argument(metavar="MARKS", help="marks.json saved from the report page.")],
    target: DirArg = DEFAULT_DIR,
    out: Annotated[Path | None, typer.Option("--out", "-o", hidden=True, help="Same as DIR (older spelling).")] = None,
) -> None:
    """Apply reviewer marks to the checkpoint; they win over the model in every later export."""
    from carcrawl.review import import_marks

    try:
        n = import_marks(out if out is not None else target, marks)
    except CarcrawlError as e:
        _fail(e)
    typer.echo(f"applied {n} marks")


@_command()
def refine(target: DirArg = DEFAULT_DIR) -> None:
    """Re-score every image with a probe trained on the stored embeddings and the review marks."""
    from carcrawl.refine import refine as do_refine

    try:
        result = do_refine(target)
    except CarcrawlError as e:
        _fail(e)
    typer.echo(str(result))


@_command("classify")
def classify_cmd(
    paths: Annotated[list[Path], typer.Argument(metavar="PATHS", help="Image files or folders.")],
    out: Annotated[Path, typer.Option("--out", "-o", help="JSONL to write, one line per input file.")] = Path("verdicts.jsonl"),
    config: ConfigOpt = None,
    device: DeviceOpt = None,
    batch_size: Annotated[int | None, typer.Option(help="Images per batch.")] = None,
) -> None:
    """Classify local files (same code path as the crawl) and write JSONL verdicts."""
    from carcrawl.classify import classify_paths
    from carcrawl.classify_stage import classifier_settings

    try:
        settings = _settings(config, {"classify.device": device, "classify.batch_size": batch_size})
        n = classify_paths([str(p) for p in paths], classifier_settings(settings.classify), out)
    except CarcrawlError as e:
        _fail(e)
    typer.echo(f"{n} files → {out}")


@_command()
def parse(
    source: Annotated[str, typer.Argument(metavar="SOURCE", help="bing, duckduckgo, openverse, wikimedia, flickr, google")],
    file: Annotated[Path, typer.Argument(metavar="FILE", help="A saved response of that source.")],
) -> None:
    """Print what a saved search response yields: one JSON object per candidate, then the cursor."""
    from carcrawl.sources import parse_lines

    try:
        for line in parse_lines(source, file):
            typer.echo(line)
    except BrokenPipeError:  # `carcrawl parse ... | head`: the reader has what it wanted
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
    except (ValueError, OSError) as e:
        _fail(CarcrawlError(f"{file}: {e}"))


@_command()
def sandbox(
    hosts: Annotated[int, typer.Option(help="Image hosts on 127.0.0.2, 127.0.0.3, ...")] = 8,
    port: Annotated[int, typer.Option(help="Port for every engine and image host (0 = any free one).")] = 8500,
    photos: Annotated[Path | None, typer.Option(help="Folder of photos to serve (default: the shipped set).")] = None,
    fault_rate: Annotated[float, typer.Option(help="Share of result URLs that misbehave.")] = 0.1,
) -> None:
    """Run the sandbox web alone (engines in real formats and image hosts) until Ctrl-C.

    It prints the address to give `carcrawl crawl --sandbox`."""
    from carcrawl.sandbox import serve_forever

    try:
        serve_forever(hosts=hosts, port=port, photos=photos, fault_rate=fault_rate)
    except OSError as e:
        _fail(CarcrawlError(f"--port {port}: cannot listen there ({e.strerror or e}); pick another with --port, or 0"))
    except ValueError as e:
        _fail(CarcrawlError(str(e)))


@_command()
def bench(
    quick: Annotated[bool, typer.Option(help="A smaller run (about a minute).")] = False,
    device: DeviceOpt = None,
) -> None:
    """Measure download and classify throughput on this machine and suggest settings.

    Runs against the sandbox on loopback; suggests concurrency and batch size for config.toml."""
    from carcrawl.bench import run_bench

    run_bench(quick=quick, device=device)


if __name__ == "__main__":
    main()
