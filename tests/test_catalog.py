"""The shipped catalogue, lazy query generation at full (and 10x) scale, narrowing, bad catalogue
files, and `carcrawl crawl --make --model --color` as a user runs it against the sandbox."""

from __future__ import annotations

import itertools
import sqlite3
import subprocess
import tracemalloc
from pathlib import Path

import pytest
from helpers import IMAGES, SHARED, carcrawl_cmd, sandbox_in_thread

from carcrawl import catalog
from carcrawl.errors import InputFileError
from carcrawl.store import Store


def test_shipped_catalogue_is_the_original_crawls_list() -> None:
    pairs = list(catalog.read_pairs())
    assert len(pairs) == 1046 and len(set(pairs)) == 1046
    assert ("ford", "mustang") in pairs
    assert catalog.read_list(catalog.DEFAULT_COLORS)[:3] == ["white", "black", "silver"]
    assert catalog.read_list(catalog.DEFAULT_BODY_TYPES) == ["car", "suv", "truck", "van"]


@pytest.mark.usefixtures("shared")
def test_shipped_catalogue_matches_the_shared_facts() -> None:
    lines = (SHARED / "catalog" / "makes_models.csv").read_text().splitlines()
    shared = [tuple(line.strip().lower().split(",")) for line in lines if line.strip()]
    assert list(catalog.read_pairs()) == shared


def test_full_catalogue_queries_are_lazy() -> None:
    gen = catalog.image_queries()
    first = next(gen)
    assert first.text == "white acura cl" and first.labels.make == "acura"
    assert 1 + sum(1 for _ in gen) == 10_460


async def test_ten_times_the_catalogue_streams_into_the_checkpoint_in_flat_memory(tmp_path: Path) -> None:
    big = tmp_path / "big.csv"
    with big.open("w") as f:
        f.write("make,model\n")
        for i in range(10):
            for make, model in catalog.read_pairs():
                f.write(f"{make},{model} {i}\n")
    tracemalloc.start()
    store = await Store.open(tmp_path / "c.sqlite")
    try:
        n = await store.add_queries(catalog.image_queries(big), ["bing"], 10)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
        await store.close()
    assert n == 104_600
    assert peak < 40 * 2**20  # a list of 104 600 queries and their rows would be several times this
    con = sqlite3.connect(tmp_path / "c.sqlite")
    assert con.execute("SELECT count(*) FROM searches").fetchone()[0] == 104_600


def test_narrowing_by_make_model_colour() -> None:
    qs = list(catalog.image_queries(makes=["Ford"], models=["mustang"], color_filter=["red", "blue"]))
    assert [q.text for q in qs] == ["red ford mustang", "blue ford mustang"]
    assert len(list(catalog.image_queries(makes=["ford"]))) == 10 * sum(1 for mk, _ in catalog.read_pairs() if mk == "ford")
    assert [q.text for q in itertools.islice(catalog.bodytype_queries(makes=["ford"], models=["mustang"]), 4)] == [
        "ford mustang car", "ford mustang suv", "ford mustang truck", "ford mustang van"]


@pytest.mark.parametrize(
    ("text", "where"),
    [
        ("brand,model\nford,mustang\n", "bad.csv:1: header must have 'make' and 'model'"),
        ("make,model\nford,mustang\nford,\n", "bad.csv:3: field 'model': empty"),
        ("make,model\nford,mus\x00tang\n", "bad.csv:2: field 'model': not a plausible name"),
    ],
)
def test_bad_catalogue_rows_name_file_line_and_field(tmp_path: Path, text: str, where: str) -> None:
    bad = tmp_path / "bad.csv"
    bad.write_text(text)
    with pytest.raises(InputFileError, match=where.replace(".", r"\.")):
        catalog.validate_pairs(bad)


@pytest.mark.usefixtures("shared")
def test_crawl_cli_narrowed_to_one_model_and_colour(tmp_path: Path) -> None:
    with sandbox_in_thread(photos=IMAGES, hosts=3, latency_ms=(0, 2), fault_rate=0.0, results_per_query=12) as sb:
        config = tmp_path / "c.toml"
        config.write_text(
            '[crawl]\nsources = ["bing"]\nper_query = 8\nallow_networks = ["127.0.0.0/8"]\n'
            "[download]\nper_host_interval = 0.0\n"
            f'[engines.bing]\nbase_url = "{sb.engine_url("bing")}"\nrate = 50.0\n'
        )
        out = tmp_path / "out"
        cmd = [*carcrawl_cmd(), "crawl", "--config", str(config), "--out", str(out), "--make", "ford",
               "--model", "mustang", "--color", "red", "--no-classify", "--quiet"]
        proc = subprocess.run(cmd, capture_output=True, text=True, timeout=120)
        assert proc.returncode == 0, proc.stderr
        again = subprocess.run(cmd, capture_output=True, text=True, timeout=120)  # resumes: nothing left
        assert again.returncode == 0, again.stderr
        bing_requests = sb.stats()["engines"]["bing"]["requests"]
    con = sqlite3.connect(out / "checkpoint.sqlite")
    assert con.execute("SELECT text FROM queries").fetchall() == [("red ford mustang",)]
    labels = con.execute("SELECT DISTINCT make, model, color FROM candidates").fetchall()
    assert labels == [("ford", "mustang", "red")]
    assert con.execute("SELECT count(*) FROM candidates WHERE state='done'").fetchone()[0] == 8
    assert bing_requests == 1  # the second run searched nothing again
