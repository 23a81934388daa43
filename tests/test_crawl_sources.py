"""Several real-format search sources in one crawl, against the sandbox engines on loopback:
the per-query target split across sources, de-duplication across sources and queries, block
pages backing one engine off while the others go on, body-type hit counts, and the `parse` and
`fetch --categories` commands as a user runs them."""

from __future__ import annotations

import json
import sqlite3
import subprocess
from pathlib import Path

import pytest
from helpers import FIXTURES, IMAGES, SANDBOX_ENGINES, carcrawl_cmd, crawl_settings, sandbox_in_thread

from carcrawl.models import Labels, Query
from carcrawl.pipeline import Job, Pipeline
from carcrawl.sources import normalize_url

pytestmark = pytest.mark.usefixtures("shared")

ENGINES = SANDBOX_ENGINES


def settings_for(out: Path, sb: object, **overrides: object):
    """The shared test settings, plus bursts and a short block back-off for every engine."""
    o: dict[str, object] = {"download.per_host_interval": 0.0}
    for name in SANDBOX_ENGINES:
        o[f"engines.{name}.rate"] = 100.0
        o[f"engines.{name}.burst"] = 4
        o[f"engines.{name}.block_backoff"] = 0.2
    o.update(overrides)
    return crawl_settings(out, sb, **o)


def mustangs(*colors: str) -> Job:
    qs = [Query(f"{c} ford mustang", Labels("ford", "mustang", c)) for c in colors]
    return Job(queries=lambda: iter(qs), fingerprint=json.dumps([q.text for q in qs]))


async def test_four_engine_formats_split_the_target_and_dedupe_urls(tmp_path: Path) -> None:
    with sandbox_in_thread(photos=IMAGES, hosts=4, latency_ms=(0, 2), fault_rate=0.0, results_per_query=30) as sb:
        out = tmp_path / "out"
        s = settings_for(out, sb, **{"crawl.sources": list(ENGINES), "crawl.per_query": 24})
        result = await Pipeline(s, mustangs("red", "blue"), fresh=True).run()
        assert result.state == "done"
        con = sqlite3.connect(out / "checkpoint.sqlite")
        # every (query, engine) pair searched, each asked for its share of the target: 24 / 4 = 6
        rows = con.execute("SELECT source, target, found, state FROM searches").fetchall()
        assert sorted(r[0] for r in rows) == sorted(ENGINES * 2)
        assert {(r[1], r[3]) for r in rows} == {(6, "done")}
        # the union of what the engines served, normalised, is exactly the candidate set: a URL
        # two engines (or two queries) both return is one candidate
        served: set[str] = set()
        for engine in ENGINES:
            for q in ("red ford mustang", "blue ford mustang"):
                served |= {normalize_url(r.url) for r in sb.results(engine, q)}
        keys = {k for (k,) in con.execute("SELECT url_key FROM candidates")}
        assert keys <= served
        n_candidates = con.execute("SELECT count(*) FROM candidates").fetchone()[0]
        assert n_candidates == len(keys)
        found_total = sum(r[2] for r in rows)
        assert n_candidates <= found_total  # duplicates across searches were folded
        assert con.execute("SELECT count(DISTINCT source) FROM candidates").fetchone()[0] == 4
        # licence fields travel with candidates from the licence-aware sources
        licensed = con.execute(
            "SELECT count(*) FROM candidates WHERE source IN ('openverse','wikimedia') AND license IS NOT NULL"
        ).fetchone()[0]
        assert licensed > 0


async def test_a_blocked_engine_backs_off_and_the_others_finish(tmp_path: Path) -> None:
    with sandbox_in_thread(photos=IMAGES, hosts=2, latency_ms=(0, 0), fault_rate=0.0, results_per_query=20) as sb:
        sb.set_blocked("bing", True)
        out = tmp_path / "out"
        s = settings_for(out, sb, **{"crawl.sources": ["bing", "openverse"], "crawl.per_query": 10})
        result = await Pipeline(s, mustangs("red"), fresh=True).run()
        bing_requests = sb.stats()["engines"]["bing"]["requests"]
    con = sqlite3.connect(out / "checkpoint.sqlite")
    states = dict(con.execute("SELECT source, state || ':' || coalesce(reason, '') FROM searches"))
    assert states == {"bing": "failed:blocked", "openverse": "done:"}
    assert result.stats["counts"]["search_blocked"] >= 1
    # backed off: a handful of tries, not a hammering
    assert 1 <= bing_requests <= 5
    assert con.execute("SELECT count(*) FROM candidates WHERE source='bing'").fetchone()[0] == 0
    assert con.execute("SELECT count(*) FROM candidates WHERE source='openverse'").fetchone()[0] == 5


async def test_body_type_counts_come_from_the_engines_result_counts(tmp_path: Path) -> None:
    with sandbox_in_thread(photos=IMAGES, hosts=2, latency_ms=(0, 0), fault_rate=0.0, results_per_query=10) as sb:
        out = tmp_path / "out"
        s = settings_for(out, sb, **{"crawl.sources": ["bing"], "crawl.per_query": 4})
        bt = [Query(f"ford mustang {t}", Labels("ford", "mustang", body_type=t), kind="bodytype")
              for t in ("car", "suv", "truck", "van")]
        job = Job(queries=lambda: iter([Query("red ford mustang", Labels("ford", "mustang", "red"))]),
                  fingerprint="bt", bodytype_queries=lambda: iter(bt), bodytype_sources=("openverse",))
        result = await Pipeline(s, job, fresh=True).run()
        totals = {q.labels.body_type: sb.layout.engine_total("openverse", q.text) for q in bt}
    assert result.state == "done"
    con = sqlite3.connect(out / "checkpoint.sqlite")
    counts = dict(con.execute(
        "SELECT q.body_type, s.total_hits FROM searches s JOIN queries q ON q.id = s.query_id WHERE q.kind='bodytype'"
    ))
    assert counts == {t: totals[t] for t in ("car", "suv", "truck", "van")}
    assert max(counts, key=counts.get) == "car"  # a Mustang is a car, and the counts say so
    # counting queries never add download candidates
    assert con.execute("SELECT count(*) FROM candidates WHERE body_type != ''").fetchone()[0] == 0


def test_parse_cli_prints_candidates_then_the_cursor() -> None:
    capture = next(p for p in sorted((FIXTURES / "bing").iterdir()) if "async" in p.name)
    proc = subprocess.run([*carcrawl_cmd(), "parse", "bing", str(capture)], capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0, proc.stderr
    lines = [json.loads(line) for line in proc.stdout.splitlines()]
    cands, last = lines[:-1], lines[-1]
    assert len(cands) > 10 and all(c["url"].startswith("http") for c in cands)
    assert {"url", "thumbnail", "page_url", "title", "width", "height"} <= set(cands[0])
    assert "next_cursor" in last


def test_parse_cli_says_why_a_block_page_yields_nothing() -> None:
    block = next(p for p in (FIXTURES).rglob("*") if p.is_file() and "google" in str(p) and "sorry" in p.name.lower())
    proc = subprocess.run([*carcrawl_cmd(), "parse", "google", str(block)], capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0, proc.stderr
    summary = json.loads(proc.stdout.splitlines()[-1])
    assert summary["count"] == 0 and summary["problem"] == "blocked"
    assert "CAPTCHA" in summary["note"]


def test_fetch_with_a_categories_table_reports_per_category(tmp_path: Path) -> None:
    with sandbox_in_thread(photos=IMAGES, hosts=2, latency_ms=(0, 0), fault_rate=0.0) as sb:
        urls = list(sb.image_urls(12))
        table = tmp_path / "fall11_urls.txt"
        table.write_text(
            "".join(f"n02814533_{i}\t{u}\n" for i, u in enumerate(urls[:6]))
            + "".join(f"n03100240_{i}\t{u}\n" for i, u in enumerate(urls[6:10]))
            + "".join(f"n09999999_{i}\t{u}\n" for i, u in enumerate(urls[10:]))
        )
        cats = tmp_path / "categories.csv"
        cats.write_text("code,name,to_download,how_many\nn02814533,beach wagon,1,4\nn03100240,convertible,1,10\n"
                        "n09999999,not wanted,0,10\n")
        config = tmp_path / "c.toml"
        config.write_text('[crawl]\nallow_networks = ["127.0.0.0/8"]\n[download]\nper_host_interval = 0.0\n')
        out = tmp_path / "out"
        proc = subprocess.run(
            [*carcrawl_cmd(), "fetch", str(table), "--categories", str(cats), "--out", str(out), "--config",
             str(config), "--no-classify", "--quiet"],
            capture_output=True, text=True, timeout=120,
        )
    assert proc.returncode == 0, proc.stderr
    assert "beach wagon" in proc.stdout and "convertible" in proc.stdout and "not wanted" not in proc.stdout
    con = sqlite3.connect(out / "checkpoint.sqlite")
    per_cat = dict(con.execute("SELECT category, count(*) FROM candidates WHERE state='done' GROUP BY category"))
    assert per_cat == {"beach wagon": 4, "convertible": 4}
