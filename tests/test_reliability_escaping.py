"""Escaping on the crawl side: text that came from the web (response headers, API error messages,
labels from input files) is shown literally on the terminal -- rich markup in it is neither
interpreted nor able to crash the display -- and SQL is parameterised everywhere. (The HTML report
is tested with the report.)"""

from __future__ import annotations

import ast
import json
import re
import sqlite3
import subprocess
from pathlib import Path

import pytest
from aiohttp import web
from helpers import ROOT, carcrawl_cmd
from test_reliability_tls_secrets import fake_flickr

from carcrawl.models import Labels
from carcrawl.pipeline import Job, Pipeline
from carcrawl.urllists import UrlRow

MARKUP = "[/]"  # unbalanced closing tag: a MarkupError if rich ever parses it
EVIL = "[bold red]X[/bold red]<script>alert(1)</script>[link=file:///etc/passwd]y[/link]"


@pytest.fixture
def hostile_out(tmp_path: Path) -> Path:
    """A checkpoint whose reasons and labels carry markup, made by a real crawl of a server whose
    headers and bodies carry it."""

    async def build() -> None:
        from helpers import serve

        def routes(app: web.Application) -> None:
            async def enc(request: web.Request) -> web.Response:
                return web.Response(body=b"\xff\xd8\xff" + bytes(300), headers={
                    "Content-Type": "image/jpeg", "Content-Encoding": f"{MARKUP}br[x]"})

            async def status(request: web.Request) -> web.Response:
                return web.Response(status=404, text=EVIL)

            app.router.add_get("/enc/{n}", enc)
            app.router.add_get("/404/{n}", status)

        async with serve(routes) as base:
            from carcrawl.config import load_settings

            rows = [UrlRow(f"{base}/enc/1", Labels(category=EVIL), 1),
                    UrlRow(f"{base}/404/2", Labels(category=MARKUP + EVIL), 2)]
            s = load_settings(None, {"crawl.out": str(tmp_path / "out"), "crawl.allow_networks": ["127.0.0.0/8"],
                                     "classify.enabled": False, "download.per_host_interval": 0.0})
            await Pipeline(s, Job(urls=lambda: iter(rows), fingerprint="e"), fresh=True).run()

    import asyncio

    asyncio.run(build())
    return tmp_path / "out"


def test_status_shows_markup_from_the_web_literally(hostile_out: Path) -> None:
    con = sqlite3.connect(hostile_out / "checkpoint.sqlite")
    reasons = {r for (r,) in con.execute("SELECT reason FROM candidates")}
    con.close()
    hostile_reason = next(r for r in reasons if r.startswith("unsupported_encoding:"))
    assert MARKUP in hostile_reason
    r = subprocess.run([*carcrawl_cmd(), "status", str(hostile_out)], capture_output=True, text=True, timeout=60,
                       env={"COLUMNS": "300", "PATH": "/usr/bin:/bin"})
    assert r.returncode == 0, r.stderr[-2000:]
    shown = r.stdout + r.stderr
    assert "Traceback" not in shown and "MarkupError" not in shown
    assert hostile_reason in shown


def test_the_category_report_shows_labels_literally(tmp_path: Path) -> None:
    (tmp_path / "cats.csv").write_text(f'code,name,to_download,how_many\nn1,"{EVIL}",yes,1\nn2,"{MARKUP}",yes,1\n')
    (tmp_path / "table.tsv").write_text("n1_1\thttp://127.0.0.1:9/a.jpg\nn2_1\thttp://127.0.0.1:9/b.jpg\n")
    r = subprocess.run([*carcrawl_cmd(), "fetch", "table.tsv", "--categories", "cats.csv", "--out", "out",
                        "--no-classify"], capture_output=True, text=True, timeout=120, cwd=tmp_path,
                       env={"COLUMNS": "400", "PATH": "/usr/bin:/bin"})
    assert r.returncode == 0, r.stderr[-2000:]
    shown = r.stdout + r.stderr
    assert "Traceback" not in shown and "MarkupError" not in shown
    assert EVIL in shown and MARKUP in shown


def test_an_api_error_message_with_markup_is_shown_literally(tmp_path: Path, vehicle_jpeg: bytes) -> None:
    """A search engine's error text lands in the search's reason; ``status`` shows it as text."""
    with fake_flickr(vehicle_jpeg) as api:
        (tmp_path / "c.toml").write_text(
            '[crawl]\nallow_networks = ["127.0.0.0/8"]\nsources = ["flickr"]\nper_query = 4\n'
            f'[engines.flickr]\nbase_url = "{api}"\nrate = 50.0\n')
        env = {"FLICKR_API_KEY": MARKUP + "[red]k", "PATH": "/usr/bin:/bin", "COLUMNS": "300"}
        r = subprocess.run([*carcrawl_cmd(), "crawl", "--config", "c.toml", "--out", "out", "--make", "ford",
                            "--model", "mustang", "--max-queries", "2", "--no-classify"],
                           capture_output=True, text=True, timeout=120, cwd=tmp_path, env=env)
        assert r.returncode == 0, r.stderr[-2000:]
        assert "Traceback" not in r.stderr and "MarkupError" not in r.stderr
    st = subprocess.run([*carcrawl_cmd(), "status", str(tmp_path / "out")], capture_output=True, text=True,
                        timeout=60, env=env)
    assert st.returncode == 0 and "Traceback" not in st.stderr
    assert "flickr error 100 Invalid API Key (***)" in st.stdout + st.stderr


# ------------------------------------------------------------------------------------------- SQL
#: names that may be formatted into SQL text: table names from fixed tuples, "?,?,?" placeholders,
#: integer constants, constant SQL fragments (``DatasetDB._MEMBER``)
SAFE_SQL_NAMES = {"table", "marks", "APPLICATION_ID", "SCHEMA_VERSION", "_REASON_KEY", "_COUNTED_STATE", "self._MEMBER"}
SQL_START = re.compile(r"^\s*(SELECT|INSERT|UPDATE|DELETE|REPLACE|CREATE|DROP|ALTER|PRAGMA)\b", re.IGNORECASE)


def _checked_identifier(expr: ast.expr) -> bool:
    """A name the store checks and quotes itself (``identifier(...)`` / ``identifiers(...)`` in
    carcrawl/store/shards.py), which a test of its own feeds hostile names."""
    return (isinstance(expr, ast.Call) and isinstance(expr.func, ast.Name)
            and expr.func.id in {"identifier", "identifiers"})


def test_store_identifiers_refuse_anything_but_a_plain_name() -> None:
    from carcrawl.errors import CheckpointError
    from carcrawl.store.shards import identifier, identifiers

    assert identifier("sha256") == '"sha256"'
    assert identifiers(["state", "reason"], of="s.candidates") == 's."candidates"."state", s."candidates"."reason"'.replace(
        's.', '"s".')
    for evil in ('x"; DROP TABLE images; --', "a b", "", "1abc", "x)", "images.sha256"):
        with pytest.raises(CheckpointError):
            identifier(evil)


def test_sql_is_parameterised_and_only_in_the_store() -> None:
    problems = []
    for path in sorted((ROOT / "carcrawl").rglob("*.py")):
        rel = path.relative_to(ROOT).as_posix()
        tree = ast.parse(path.read_text(encoding="utf-8"))
        for node in ast.walk(tree):
            if isinstance(node, ast.JoinedStr):
                text = "".join(v.value for v in node.values if isinstance(v, ast.Constant) and isinstance(v.value, str))
                if SQL_START.match(text):
                    names = {ast.unparse(v.value) for v in node.values if isinstance(v, ast.FormattedValue)
                             and not _checked_identifier(v.value)}
                    if not names <= SAFE_SQL_NAMES:
                        problems.append(f"{rel}:{node.lineno}: values formatted into SQL: {sorted(names - SAFE_SQL_NAMES)}")
            if isinstance(node, ast.BinOp) and isinstance(node.op, ast.Mod | ast.Add):
                left = node.left
                if isinstance(left, ast.Constant) and isinstance(left.value, str) and SQL_START.match(left.value):
                    problems.append(f"{rel}:{node.lineno}: SQL built with % or +")
            if (isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute) and node.func.attr == "format"
                    and isinstance(node.func.value, ast.Constant) and isinstance(node.func.value.value, str)
                    and SQL_START.match(node.func.value.value)):
                problems.append(f"{rel}:{node.lineno}: SQL built with str.format")
            if (isinstance(node, ast.Constant) and isinstance(node.value, str) and SQL_START.match(node.value)
                    and not rel.startswith("carcrawl/store/") and re.search(r"\b(FROM|INTO|SET|TABLE)\b", node.value)):
                problems.append(f"{rel}:{node.lineno}: SQL outside carcrawl/store")
    assert not problems, "\n".join(problems)


def test_sql_metacharacters_in_urls_and_labels_are_just_data(tmp_path: Path) -> None:
    evil = "x'); DROP TABLE candidates; --"
    (tmp_path / "urls.jsonl").write_text(
        json.dumps({"url": "http://127.0.0.1:9/a.jpg?q=1');DROP%20TABLE%20images;--", "category": evil}) + "\n")
    r = subprocess.run([*carcrawl_cmd(), "fetch", "urls.jsonl", "--out", "out", "--no-classify", "--quiet"],
                       capture_output=True, text=True, timeout=120, cwd=tmp_path)
    assert r.returncode == 0, r.stderr[-2000:]
    con = sqlite3.connect(tmp_path / "out" / "checkpoint.sqlite")
    assert con.execute("SELECT category, reason FROM candidates").fetchall() == [(evil, "blocked_address")]
    assert con.execute("SELECT count(*) FROM images").fetchone()[0] == 0  # the table is still there
