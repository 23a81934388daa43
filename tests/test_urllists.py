"""URL-list readers and the categories table, on real files in a temp folder, good and bad."""

from __future__ import annotations

import gzip
import json
import re
import types
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from carcrawl.errors import InputFileError
from carcrawl.models import Labels
from carcrawl.urllists import (
    Category,
    UrlRow,
    detect_format,
    read_categories,
    read_urls,
    select_from_url_table,
    validate,
)


def write(path: Path, text: str | bytes) -> Path:
    if isinstance(text, str):
        path.write_text(text, encoding="utf-8", newline="")
    else:
        path.write_bytes(text)
    return path


# ------------------------------------------------------------------ txt


def test_txt_comments_blank_lines_bom_and_crlf(tmp_path: Path) -> None:
    f = write(
        tmp_path / "urls.txt",
        "\ufeff# my list\r\nhttps://a.example/1.jpg\r\n\r\n   # indented comment\n  http://b.example/2.png  \nhttps://c.example/x.jpg#frag\n",
    )
    rows = read_urls(f)
    assert isinstance(rows, types.GeneratorType)  # streamed, not a list
    assert list(rows) == [
        UrlRow("https://a.example/1.jpg", Labels(), 2),
        UrlRow("http://b.example/2.png", Labels(), 5),
        UrlRow("https://c.example/x.jpg#frag", Labels(), 6),
    ]
    assert validate(f) == 3


def test_txt_bad_row_names_file_line_and_field(tmp_path: Path) -> None:
    f = write(tmp_path / "urls.txt", "https://a.example/1.jpg\n# c\nftp://x\n")
    with pytest.raises(InputFileError) as err:
        read_urls(f)  # raises at the call: nothing is handed out before the file is known good
    assert str(err.value) == f"{f}:3: field 'url': not an http(s) URL: 'ftp://x'"


def test_all_bad_rows_are_listed_up_to_a_limit(tmp_path: Path) -> None:
    lines = ["https://ok.example/a.jpg"] + [f"bad{i}" for i in range(30)]
    f = write(tmp_path / "urls.txt", "\n".join(lines))
    with pytest.raises(InputFileError) as err:
        validate(f)
    message = str(err.value).splitlines()
    assert message[0] == f"{f}:2: field 'url': not an http(s) URL: 'bad0'"
    assert message[9] == f"{f}:11: field 'url': not an http(s) URL: 'bad9'"
    assert "more bad rows" in message[-1] and len(message) == 11


@pytest.mark.parametrize(
    ("value", "why"),
    [
        ("https:///nohost.jpg", "no host in URL"),
        ("http://a.example/a b.jpg", "contains whitespace"),
        ("javascript:alert(1)", "not an http(s) URL"),
        ("http://a.example:99999/x", "not a valid URL"),
        ("//a.example/x.jpg", "not an http(s) URL"),
        ("http://a.example/\x7f.jpg", "contains control characters"),
    ],
)
def test_url_checks(tmp_path: Path, value: str, why: str) -> None:
    f = write(tmp_path / "u.txt", value + "\n")
    with pytest.raises(InputFileError, match=re.escape(f"u.txt:1: field 'url': {why}")):
        validate(f)


def test_gzip_and_missing_and_non_utf8(tmp_path: Path) -> None:
    gz = tmp_path / "urls.txt.gz"
    gz.write_bytes(gzip.compress(b"https://a.example/1.jpg\nhttps://a.example/2.jpg\n"))
    assert detect_format(gz) == "txt"
    assert [r.url for r in read_urls(gz)] == ["https://a.example/1.jpg", "https://a.example/2.jpg"]
    with pytest.raises(InputFileError, match="no such file"):
        read_urls(tmp_path / "missing.txt")
    latin = write(tmp_path / "latin.txt", b"https://a.example/1.jpg\nhttps://a.example/caf\xe9.jpg\n")
    with pytest.raises(InputFileError, match=r"latin.txt:2: not UTF-8 text"):
        validate(latin)
    broken_gz = write(tmp_path / "broken.txt.gz", gzip.compress(b"https://a.example/1.jpg\n" * 1000)[:40])
    with pytest.raises(InputFileError, match="cannot read"):
        validate(broken_gz)


# ------------------------------------------------------------------ CSV / TSV


def test_csv_with_labels(tmp_path: Path) -> None:
    f = write(
        tmp_path / "urls.csv",
        "id,URL,Make,model,colour,label,extra\n"
        '1,https://a.example/1.jpg,Ford,"Focus, ST",red,sedan,x\n'
        "\n"
        "2,https://a.example/2.jpg,,,,,\n",
    )
    rows = list(read_urls(f))
    assert rows == [
        UrlRow(
            "https://a.example/1.jpg",
            Labels(make="Ford", model="Focus, ST", color="red", category="sedan"),
            2,
        ),
        UrlRow("https://a.example/2.jpg", Labels(), 4),
    ]


def test_csv_custom_url_column_and_label_columns(tmp_path: Path) -> None:
    f = write(tmp_path / "list.tsv", "image_url\tbrand\tcls\nhttps://a.example/1.jpg\tBMW\tsuv\n")
    rows = list(read_urls(f, url_column="image_url", label_columns={"make": "brand", "body_type": "cls"}))
    assert rows == [UrlRow("https://a.example/1.jpg", Labels(make="BMW", body_type="suv"), 2)]
    with pytest.raises(
        InputFileError, match=r"list.tsv:1: field 'url': no such column \(columns: image_url, brand, cls\)"
    ):
        read_urls(f)
    with pytest.raises(InputFileError, match=r"field 'kind': no such column"):
        read_urls(f, url_column="image_url", label_columns={"make": "kind"})
    with pytest.raises(InputFileError, match=r"unknown label field 'wheels'"):
        read_urls(f, url_column="image_url", label_columns={"wheels": "brand"})


def test_csv_bad_rows(tmp_path: Path) -> None:
    f = write(
        tmp_path / "urls.csv",
        "url,make\nhttps://a.example/1.jpg,Ford\n"
        + "https://a.example/2.jpg,Kia\n" * 14
        + ",Audi\nftp://x,VW\n",
    )
    with pytest.raises(InputFileError) as err:
        validate(f)
    assert str(err.value).splitlines() == [
        f"{f}:17: field 'url': empty",
        f"{f}:18: field 'url': not an http(s) URL: 'ftp://x'",
    ]
    assert validate(write(tmp_path / "h.csv", "url\n")) == 0
    with pytest.raises(InputFileError, match="no header row"):
        validate(write(tmp_path / "e.csv", ""))


def test_rows_stream_lazily(tmp_path: Path) -> None:
    f = write(tmp_path / "urls.txt", "".join(f"https://h{i}.example/{i}.jpg\n" for i in range(5000)))
    rows = read_urls(f)
    assert next(rows) == UrlRow("https://h0.example/0.jpg", Labels(), 1)
    assert sum(1 for _ in rows) == 4999


# ------------------------------------------------------------------ JSONL


def test_jsonl(tmp_path: Path) -> None:
    f = write(
        tmp_path / "urls.jsonl",
        json.dumps({"url": "https://a.example/1.jpg", "make": "Ford", "color": "blue", "n": 3})
        + "\n\n"
        + json.dumps("https://a.example/2.jpg")
        + "\n"
        + json.dumps({"URL": "https://a.example/3.jpg", "category": 5})
        + "\n",
    )
    assert list(read_urls(f)) == [
        UrlRow("https://a.example/1.jpg", Labels(make="Ford", color="blue"), 1),
        UrlRow("https://a.example/2.jpg", Labels(), 3),
        UrlRow("https://a.example/3.jpg", Labels(category="5"), 4),
    ]


def test_jsonl_bad_rows(tmp_path: Path) -> None:
    f = write(
        tmp_path / "urls.ndjson",
        '{"url": "https://a.example/1.jpg"}\n{"url": \n[1, 2]\n{"link": "https://a.example/"}\n{"url": 7}\n',
    )
    with pytest.raises(InputFileError) as err:
        validate(f)
    lines = str(err.value).splitlines()
    assert lines[0].startswith(f"{f}:2: invalid JSON: ")
    assert lines[1:] == [
        f"{f}:3: not a JSON object or string",
        f"{f}:4: field 'url': missing",
        f"{f}:5: field 'url': not text: 7",
    ]


# ------------------------------------------------------------------ Parquet


def test_parquet(tmp_path: Path) -> None:
    f = tmp_path / "urls.parquet"
    table = pa.table(
        {
            "url": [f"https://a.example/{i}.jpg" for i in range(20000)],
            "make": ["Ford"] * 20000,
            "model": [None] * 20000,
        }
    )
    pq.write_table(table, f, row_group_size=5000)
    rows = read_urls(f)
    first = next(rows)
    assert first == UrlRow("https://a.example/0.jpg", Labels(make="Ford"), 1)
    rest = list(rows)
    assert len(rest) == 19999 and rest[-1].line == 20000 and rest[-1].url == "https://a.example/19999.jpg"


def test_parquet_bad_rows_and_columns(tmp_path: Path) -> None:
    f = tmp_path / "urls.pq"
    pq.write_table(pa.table({"link": ["https://a.example/1.jpg", None, "file:///etc/passwd"]}), f)
    with pytest.raises(InputFileError, match=r"field 'url': no such column \(columns: link\)"):
        validate(f)
    with pytest.raises(InputFileError) as err:
        validate(f, url_column="link")
    assert str(err.value).splitlines() == [
        f"{f}:2: field 'link': empty",
        f"{f}:3: field 'link': not an http(s) URL: 'file:///etc/passwd'",
    ]
    not_parquet = write(tmp_path / "fake.parquet", b"this is text")
    with pytest.raises(InputFileError, match="not a readable Parquet file"):
        validate(not_parquet)


def test_format_detection_and_override(tmp_path: Path) -> None:
    assert (
        detect_format("a.CSV") == "csv" and detect_format("a.tsv.gz") == "tsv" and detect_format("a") == "txt"
    )
    f = write(tmp_path / "list.data", "url\nhttps://a.example/1.jpg\n")
    assert [r.line for r in read_urls(f, format="csv")] == [2]
    with pytest.raises(InputFileError, match="unknown URL list format 'xml'"):
        read_urls(f, format="xml")


# ------------------------------------------------------------------ categories


def test_read_categories(tmp_path: Path) -> None:
    f = write(
        tmp_path / "cats.csv",
        "code,name,to_download,how_many\n# comment\nn02958343,car,true,3\nn03594945,jeep,0,10\nn04285008,sports car,Yes,2\n",
    )
    assert read_categories(f) == [
        Category("n02958343", "car", True, 3),
        Category("n03594945", "jeep", False, 10),
        Category("n04285008", "sports car", True, 2),
    ]


def test_read_categories_reports_every_bad_row(tmp_path: Path) -> None:
    f = write(
        tmp_path / "cats.csv",
        "code,name,to_download,how_many\nn1,a,true,1\nn1,b,true,1\nn2,c,maybe,1\nn3,d,true,-4\n,e,true,1\n",
    )
    with pytest.raises(InputFileError) as err:
        read_categories(f)
    assert str(err.value).splitlines() == [
        f"{f}:3: field 'code': 'n1' already on line 2",
        f"{f}:4: field 'to_download': not true/false: 'maybe'",
        f"{f}:5: field 'how_many': not a whole number >= 0: '-4'",
        f"{f}:6: field 'code': empty",
    ]
    with pytest.raises(InputFileError, match=r"cats2.csv:1: field 'how_many': no such column"):
        read_categories(write(tmp_path / "cats2.csv", "code,name,to_download\nn1,a,true\n"))
    with pytest.raises(InputFileError, match="empty categories table"):
        read_categories(write(tmp_path / "cats3.csv", "\n# nothing\n"))


def test_select_from_imagenet_style_table(tmp_path: Path) -> None:
    cats = [
        Category("n02958343", "car", True, 2),
        Category("n03594945", "jeep", False, 10),
        Category("n04285008", "sports car", True, 5),
    ]
    table = write(
        tmp_path / "fall11_urls.txt",
        b"n02958343_1\thttp://img.example/car1.jpg\n"
        b"n03594945_7\thttp://img.example/jeep.jpg\n"
        b"n02958343_2\tnot-a-url\n"
        b"n04285008_3\thttp://img.example/caf\xe9.jpg\n"  # latin-1 byte: skipped, not fatal
        b"n02958343_4\thttp://img.example/car2.jpg\n"
        b"n04285008_5\thttp://img.example/sport.jpg\n"
        b"n02958343_6\thttp://img.example/car3.jpg\n"  # over the quota of 2
        b"n09999999_1\thttp://img.example/other.jpg\n"
        b"garbage line without tab\n",
    )
    rows = list(select_from_url_table(cats, table))
    assert rows == [
        UrlRow("http://img.example/car1.jpg", Labels(category="car"), 1),
        UrlRow("http://img.example/car2.jpg", Labels(category="car"), 5),
        UrlRow("http://img.example/sport.jpg", Labels(category="sports car"), 6),
    ]


def test_select_from_csv_table_with_header(tmp_path: Path) -> None:
    cats = [Category("car", "Car", True, 1), Category("bus", "Bus", True, 1)]
    table = write(
        tmp_path / "t.csv",
        "wnid,url\ncar,https://a.example/1.jpg\ncar,https://a.example/2.jpg\nbus,https://a.example/3.jpg\n",
    )
    assert [(r.url, r.labels.category, r.line) for r in select_from_url_table(cats, table)] == [
        ("https://a.example/1.jpg", "Car", 2),
        ("https://a.example/3.jpg", "Bus", 4),
    ]
    with pytest.raises(InputFileError, match="header needs both 'code'"):
        list(
            select_from_url_table(
                cats, write(tmp_path / "bad.csv", "code,link\ncar,https://a.example/1.jpg\n")
            )
        )
    assert list(select_from_url_table([Category("car", "Car", False, 5)], table)) == []
