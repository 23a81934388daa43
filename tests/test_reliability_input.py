"""Bad config and bad input files, as a user meets them on the command line: every malformed config
value, URL-list row, categories-table row or catalogue row gives one clear message naming the
file, the line and the field (no traceback, exit status 2), and nothing is half-applied -- a new
output folder gets no checkpoint, an existing checkpoint is not changed by a single byte."""

from __future__ import annotations

import hashlib
import subprocess
from pathlib import Path

import pytest
from helpers import carcrawl_cmd

GOOD_URLS = "http://127.0.0.1:9/a.jpg\nhttp://10.0.0.1/b.jpg\n"  # refused by the SSRF guard: fast, offline


def run(args: list[str], cwd: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run([*carcrawl_cmd(), *args], capture_output=True, text=True, timeout=120, cwd=cwd)


def checkpoint_digest(out: Path) -> str:
    h = hashlib.sha256()
    for p in sorted(out.glob("checkpoint.sqlite*")):
        h.update(p.name.encode() + p.read_bytes())
    return h.hexdigest()


def one_clear_error(r: subprocess.CompletedProcess[str], *needles: str) -> str:
    assert r.returncode == 2, (r.returncode, r.stderr[-2000:])
    assert "Traceback" not in r.stderr, r.stderr[-2000:]
    assert r.stderr.startswith("carcrawl: error: "), r.stderr[-2000:]
    for n in needles:
        assert n in r.stderr, (n, r.stderr)
    return r.stderr


@pytest.fixture(scope="module")
def existing(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, str]:
    """An output folder with a finished checkpoint, and its digest."""
    d = tmp_path_factory.mktemp("existing")
    (d / "urls.txt").write_text(GOOD_URLS)
    r = run(["fetch", "urls.txt", "--out", "out", "--no-classify", "--quiet"], d)
    assert r.returncode == 0, r.stderr
    return d, checkpoint_digest(d / "out")


BAD_CONFIGS = [
    ('[download]\nconcurrency = "many"\n', "download.concurrency"),
    ("[download]\nconcurency = 8\n", "download.concurency: unknown key (did you mean 'concurrency'?)"),
    ("[download]\nper_host_interval = -1\n", "download.per_host_interval: must be 0 or more"),
    ('[classify]\ndevice = "tpu"\n', "classify.device"),
    ('[crawl]\nsources = ["altavista"]\n', "crawl.sources: unknown source 'altavista'"),
    ("[crawl]\nallow_networks = [1]\n", "crawl.allow_networks[0]"),
    ('[crawl]\nallow_networks = ["10.0.0.0/33"]\n', "crawl.allow_networks[0]: not a network"),
    ('[crawl]\ncontact = "me@example.com\\r\\nX-Evil: 1"\n', "crawl.contact: must not contain control"),
    ("[store]\ncommit_rows = 0\n", "store.commit_rows: must be greater than 0"),
    ("[engines.bing]\nrate = 0\n", "engines.bing.rate"),
    ("[download\nconcurrency = 8\n", "not valid TOML"),
    ("[nonsense]\nx = 1\n", "nonsense: unknown key"),
]


@pytest.mark.parametrize(("text", "needle"), BAD_CONFIGS)
def test_bad_config_value_is_one_message_and_touches_nothing(
    existing: tuple[Path, str], text: str, needle: str
) -> None:
    d, digest = existing
    (d / "bad.toml").write_text(text)
    for out in ("out", "fresh-out"):
        r = run(["fetch", "urls.txt", "--out", out, "--config", "bad.toml", "--no-classify", "--quiet"], d)
        one_clear_error(r, "bad.toml", needle)
    assert not (d / "fresh-out").exists()
    assert checkpoint_digest(d / "out") == digest


BAD_URL_LISTS = [
    ("urls.txt", "http://127.0.0.1:9/a.jpg\n# fine\nftp://example.com/x.jpg\n", "urls.txt:3: field 'url'"),
    ("urls.txt", "http://127.0.0.1:9/a.jpg\nhttp://exa mple.com/x.jpg\n", "urls.txt:2: field 'url': contains whitespace"),
    ("urls.txt", "http://127.0.0.1:9/a.jpg\njavascript:alert(1)\n", "urls.txt:2: field 'url'"),
    ("urls.csv", "label,link\ncar,http://127.0.0.1:9/a.jpg\n", "urls.csv:1: field 'url': no such column"),
    ("urls.csv", "url,category\nhttp://127.0.0.1:9/a.jpg,car\n,car\n", "urls.csv:3: field 'url': empty"),
    ("urls.jsonl", '{"url": "http://127.0.0.1:9/a.jpg"}\n{"url": \n', "urls.jsonl:2: invalid JSON"),
    ("urls.jsonl", '{"url": "http://127.0.0.1:9/a.jpg"}\n{"link": "x"}\n', "urls.jsonl:2: field 'url': missing"),
    ("urls.txt", "http://127.0.0.1:9/a.jpg\nhttp://x/\x00.jpg\n", "urls.txt:2: field 'url': contains control"),
]


@pytest.mark.parametrize(("name", "text", "needle"), BAD_URL_LISTS)
def test_bad_url_list_row_names_file_line_field_and_touches_nothing(
    existing: tuple[Path, str], name: str, text: str, needle: str
) -> None:
    d, digest = existing
    (d / "lists").mkdir(exist_ok=True)
    (d / "lists" / name).write_text(text)
    for out in ("out", "fresh-out"):
        r = run(["fetch", f"lists/{name}", "--out", out, "--no-classify", "--quiet"], d)
        one_clear_error(r, needle)
    assert not (d / "fresh-out").exists()
    assert checkpoint_digest(d / "out") == digest


BAD_CATEGORIES = [
    ("code,name,to_download,how_many\nn1,car,yes,3\nn2,van,maybe,3\n", "cats.csv:3: field 'to_download'"),
    ("code,name,to_download,how_many\nn1,car,yes,-1\n", "cats.csv:2: field 'how_many'"),
    ("code,name,to_download,how_many\nn1,car,yes,3\n,van,yes,3\n", "cats.csv:3: field 'code': empty"),
    ("code,name,to_download,how_many\nn1,car,yes,3\nn1,van,yes,3\n", "cats.csv:3: field 'code'"),
    ("code,name,how_many\nn1,car,3\n", "field 'to_download': no such column"),
]


@pytest.mark.parametrize(("text", "needle"), BAD_CATEGORIES)
def test_bad_categories_row_names_file_line_field_and_touches_nothing(
    existing: tuple[Path, str], text: str, needle: str
) -> None:
    d, digest = existing
    (d / "cats.csv").write_text(text)
    (d / "table.tsv").write_text("n1_1\thttp://127.0.0.1:9/a.jpg\n")
    for out in ("out", "fresh-out"):
        r = run(["fetch", "table.tsv", "--categories", "cats.csv", "--out", out, "--no-classify", "--quiet"], d)
        one_clear_error(r, needle)
    assert not (d / "fresh-out").exists()
    assert checkpoint_digest(d / "out") == digest


def test_a_url_table_with_a_bad_header_fails_before_the_checkpoint_is_touched(existing: tuple[Path, str]) -> None:
    d, digest = existing
    (d / "cats.csv").write_text("code,name,to_download,how_many\nn1,car,yes,3\n")
    (d / "table.csv").write_text("wnid,address\nn1,http://127.0.0.1:9/a.jpg\n")
    for out in ("out", "fresh-out"):
        r = run(["fetch", "table.csv", "--categories", "cats.csv", "--out", out, "--no-classify", "--quiet"], d)
        one_clear_error(r, "table.csv:1:", "'url'")
    assert not (d / "fresh-out").exists()
    assert checkpoint_digest(d / "out") == digest


BAD_CATALOGUES = [
    ("make,model\nford,mustang\n,focus\n", "cat.csv:3: field 'make': empty"),
    ("make,model\nford,mustang\nford,\x01fiesta\n", "cat.csv:3: field 'model'"),
    ("make,model\nford," + "x" * 300 + "\n", "cat.csv:2: field 'model'"),
    ("maker,model\nford,mustang\n", "cat.csv"),
]


@pytest.mark.parametrize(("text", "needle"), BAD_CATALOGUES)
def test_bad_catalogue_row_names_file_line_field_and_touches_nothing(
    existing: tuple[Path, str], text: str, needle: str
) -> None:
    d, digest = existing
    (d / "cat.csv").write_text(text)
    for out in ("out", "fresh-out"):
        r = run(["crawl", "--catalog", "cat.csv", "--out", out, "--no-classify", "--quiet"], d)
        one_clear_error(r, needle)
    assert not (d / "fresh-out").exists()
    assert checkpoint_digest(d / "out") == digest


def test_missing_input_files_are_one_clear_message(existing: tuple[Path, str]) -> None:
    d, digest = existing
    one_clear_error(run(["fetch", "nope.txt", "--out", "out", "--no-classify"], d), "nope.txt")
    one_clear_error(run(["fetch", "urls.txt", "--out", "out", "--config", "nope.toml"], d), "nope.toml")
    one_clear_error(run(["crawl", "--catalog", "nope.csv", "--out", "out"], d), "nope.csv")
    assert checkpoint_digest(d / "out") == digest
