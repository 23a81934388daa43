"""What a new user meets at the command line, run as a user runs it (the CLI in a subprocess):
one-line errors for input that would otherwise silently do nothing, a help text without noise,
a dry run, and answers (status, why) on stdout."""

from __future__ import annotations

import json
import os
import subprocess
from pathlib import Path

import pytest
from helpers import carcrawl_cmd, sandbox_in_thread


def run(args: list[str], cwd: Path, timeout: float = 120, **env: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([*carcrawl_cmd(), *args], capture_output=True, text=True, timeout=timeout, cwd=cwd,
                          env={**os.environ, **env})


def one_line_error(r: subprocess.CompletedProcess[str], *words: str) -> str:
    assert r.returncode == 2, (r.returncode, r.stdout, r.stderr)
    lines = r.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("carcrawl: error: "), r.stderr
    assert "Traceback" not in r.stderr
    for w in words:
        assert w in lines[0], (w, lines[0])
    return lines[0]


def test_out_that_is_a_file_or_cannot_be_created_is_one_line_exit_2(tmp_path: Path) -> None:
    (tmp_path / "afile").write_text("x")
    one_line_error(run(["crawl", "--out", "afile", "--make", "ford", "--model", "mustang"], tmp_path),
                   "afile", "not a folder")
    one_line_error(run(["crawl", "--out", "afile/sub", "--make", "ford", "--model", "mustang"], tmp_path),
                   "afile/sub", "cannot create")
    (tmp_path / "urls.txt").write_text("http://example.com/a.jpg\n")
    one_line_error(run(["fetch", "urls.txt", "--out", "afile", "--no-classify"], tmp_path), "not a folder")
    assert (tmp_path / "afile").read_text() == "x"  # nothing lost


@pytest.mark.parametrize(("flags", "words"), [
    (["--make", "fordd"], ["'fordd'", "did you mean", "'ford'"]),
    (["--make", "ford", "--model", "mustangg"], ["'mustangg'", "did you mean", "'mustang'"]),
    (["--make", "ford", "--model", "camry"], ["'camry'", "not a model of ford", "toyota"]),
])
def test_a_catalogue_filter_that_matches_nothing_names_the_nearest_names(
    tmp_path: Path, flags: list[str], words: list[str]
) -> None:
    one_line_error(run(["crawl", *flags, "--out", "out"], tmp_path), *words)
    assert not (tmp_path / "out" / "checkpoint.sqlite").exists()


def test_sources_on_the_command_line_are_blamed_on_the_flag_not_the_config_file(tmp_path: Path) -> None:
    (tmp_path / "config.toml").write_text('[crawl]\nsources = ["bing"]\n')
    line = one_line_error(run(["crawl", "--sources", "bogus", "--make", "ford"], tmp_path), "--sources", "'bogus'")
    assert "config.toml" not in line


def test_empty_url_list_is_an_error_not_done(tmp_path: Path) -> None:
    (tmp_path / "empty.txt").write_text("# only a comment\n\n")
    one_line_error(run(["fetch", "empty.txt", "--out", "out", "--no-classify"], tmp_path), "empty.txt", "no URLs")


LOOPBACK = '[crawl]\nallow_networks = ["127.0.0.0/8"]\n[download]\nmax_retries = 0\n'


def test_too_long_url_is_refused_never_sent_and_bad_lines_can_be_skipped_with_a_count(tmp_path: Path) -> None:
    (tmp_path / "config.toml").write_text(LOOPBACK)
    with sandbox_in_thread(latency_ms=(0, 0), hosts=1, fault_rate=0.0) as sb:
        good = next(sb.image_urls(1))
        long_url = good + "?" + "x" * 10_000_000
        (tmp_path / "urls.txt").write_text(f"{long_url}\nnot a url\n{good}\n")
        refused = run(["fetch", "urls.txt", "--out", "out", "--no-classify"], tmp_path)
        assert refused.returncode == 2 and "Traceback" not in refused.stderr
        lines = refused.stderr.strip().splitlines()  # one line per bad row, then what to do
        assert "urls.txt:1" in lines[0] and "longer than 8192" in lines[0] and len(lines[0]) < 400, lines[0]
        assert "urls.txt:2" in lines[1] and "--skip-bad-lines" in lines[-1]
        # --skip-bad-lines fetches the rest and says how many it skipped
        r = run(["fetch", "urls.txt", "--out", "out", "--no-classify", "--quiet", "--skip-bad-lines"], tmp_path)
        assert r.returncode == 0, r.stderr
        assert "skipped 2 bad lines" in r.stderr
        paths = [a.path for a in sb.access_log.requests() if a.path != "/robots.txt"]
    assert len(paths) == 1 and all(len(p) < 200 for p in paths), paths  # the long URL never went out


def test_dry_run_prints_the_planned_queries_and_their_count(tmp_path: Path) -> None:
    r = run(["crawl", "--make", "ford", "--model", "mustang", "--sources", "bing,openverse", "--dry-run",
             "--out", "out"], tmp_path)
    assert r.returncode == 0, r.stderr
    lines = r.stdout.strip().splitlines()
    assert "red ford mustang" in lines
    assert lines[-1].startswith("10 queries x 2 sources (bing, openverse) = 20 searches")
    assert not (tmp_path / "out").exists()  # nothing searched, nothing written


def test_help_is_plain_and_version_and_short_help_exist(tmp_path: Path) -> None:
    v = run(["--version"], tmp_path)
    assert v.returncode == 0 and v.stdout.startswith("carcrawl ")
    for args in (["-h"], ["crawl", "-h"], ["fetch", "--help"], ["status", "-h"], ["review", "import", "-h"]):
        r = run(args, tmp_path)
        assert r.returncode == 0, (args, r.stderr)
        assert "<bool>" not in r.stdout and "{" not in r.stdout.split("Usage:")[1].splitlines()[0], r.stdout
    fetch_usage = run(["fetch", "-h"], tmp_path).stdout
    assert "URLS" in fetch_usage
    crawl_help = run(["crawl", "-h"], tmp_path).stdout
    assert "--classify" in crawl_help and "--no-classify" in crawl_help  # the same pair as fetch
    # every command summary in the command list is one whole sentence, not cut mid-sentence
    main = run(["-h"], tmp_path, COLUMNS="200").stdout  # wide: one line per command
    for line in main.split("Commands")[1].splitlines():
        text = line.strip("│ ").strip()
        if text and text.split()[0] in ("crawl", "fetch", "demo", "status", "why", "export", "report", "refine"):
            assert text.endswith(".") or text.endswith(")"), text


def test_the_folder_commands_take_the_folder_the_same_way(tmp_path: Path) -> None:
    # status, export, report, refine and review import all take DIR as a positional that defaults
    # to `out`; where there is no crawl they all say so about that same folder
    for args in (["status"], ["export"], ["report"], ["refine"], ["why", "http://x/y.jpg"]):
        r = run(args, tmp_path)
        assert r.returncode == 2, (args, r.stderr)
        assert "out" in r.stderr and "Traceback" not in r.stderr, (args, r.stderr)
    (tmp_path / "marks.json").write_text("{}")
    r = run(["review", "import", "marks.json", "elsewhere"], tmp_path)
    assert "Traceback" not in r.stderr and "No such option" not in r.stderr


def test_status_and_why_answer_on_stdout(tmp_path: Path) -> None:
    (tmp_path / "config.toml").write_text(LOOPBACK)
    with sandbox_in_thread(latency_ms=(0, 0), hosts=1, fault_rate=0.0) as sb:
        good = next(sb.image_urls(1))
        missing = sb.layout.host_base(0) + "/nothing-here.jpg"
        (tmp_path / "urls.txt").write_text(f"{good}\n{missing}\n")
        r = run(["fetch", "urls.txt", "--out", "out", "--no-classify", "--quiet"], tmp_path)
        assert r.returncode == 0, r.stderr
    # `carcrawl status DIR | head` shows the table: it is on stdout
    st = subprocess.run(f"{' '.join(carcrawl_cmd())} status out | head -n 40", shell=True, capture_output=True,
                        text=True, timeout=60, cwd=tmp_path)
    assert "carcrawl status" in st.stdout and "candidates" in st.stdout, st.stderr
    why = run(["why", missing, "out"], tmp_path)
    assert why.returncode == 0, why.stderr
    assert "failed: http_404" in why.stdout and "attempts" in why.stdout and "URL list" in why.stdout
    as_json = json.loads(run(["status", "out", "--url", missing, "--json"], tmp_path).stdout)
    assert as_json["state"] == "failed" and as_json["reason"] == "http_404"


def test_status_gives_no_eta_while_searches_are_still_to_run(tmp_path: Path) -> None:
    """A checkpoint whose last run downloaded at a steady rate but still has searches to run: the
    URLs pending now are not all the work left, so `status` says the ETA is unknown instead of
    dividing them by the rate (which printed `ETA 0.0 min` with 243 searches in flight)."""
    import asyncio

    from carcrawl.models import Labels, Query
    from carcrawl.store import Store

    async def build() -> None:
        store = await Store.open(tmp_path / "out" / "checkpoint.sqlite")
        await store.add_queries(iter([Query(f"q{i}", Labels(make="ford", model="mustang")) for i in range(3)]),
                                ["bing"], 10)
        run_id = await store.start_run("crawl", "{}")
        store.record_progress(run_id, 0, 0, 0, 0, 0)
        await store.flush()
        await asyncio.sleep(0.05)
        store.record_progress(run_id, 0, 50, 0, 0, 0)
        await store.finish_run(run_id, "interrupted")
        await store.close()

    (tmp_path / "out").mkdir()
    asyncio.run(build())
    st = json.loads(run(["status", "out", "--json"], tmp_path).stdout)
    assert st["rate_urls_per_s"] > 0 and st["eta_seconds"] is None
    assert "3 searches" in st["eta_note"]
    human = " ".join(run(["status", "out"], tmp_path).stdout.split())
    assert "ETA unknown while 3 searches are still to run" in human and "0.0 min" not in human
