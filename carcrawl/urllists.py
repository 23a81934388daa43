"""Readers for URL lists (``carcrawl fetch``) and for the ImageNet-style categories table.

A URL list is txt (one URL a line, ``#`` comments), CSV/TSV with a header, JSONL, or Parquet;
``.gz`` works for the text formats. Rows stream out as :class:`UrlRow` -- nothing is loaded
whole, so a list of ten million URLs costs the same memory as one of ten.

A bad row is an :class:`~carcrawl.errors.InputFileError` naming file, line and field
(``urls.csv:17: field 'url': not an http(s) URL: 'ftp://x'``). :func:`read_urls` checks the whole
file in a cheap first pass before it yields anything, so a typo on line 9 000 000 never leaves a
crawl half-seeded.
"""

from __future__ import annotations

import csv
import gzip
import json
import logging
import re
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any
from urllib.parse import urlsplit

from carcrawl import urlsafety
from carcrawl.errors import InputFileError
from carcrawl.models import Labels

log = logging.getLogger(__name__)

FORMATS = ("txt", "csv", "tsv", "jsonl", "parquet")
_SUFFIX_FORMATS = {
    ".txt": "txt",
    ".lst": "txt",
    ".list": "txt",
    ".urls": "txt",
    ".csv": "csv",
    ".tsv": "tsv",
    ".tab": "tsv",
    ".jsonl": "jsonl",
    ".ndjson": "jsonl",
    ".json": "jsonl",
    ".parquet": "parquet",
    ".pq": "parquet",
}
#: Labels field -> column names recognised for it (first match wins, case-insensitive)
LABEL_COLUMNS: dict[str, tuple[str, ...]] = {
    "make": ("make",),
    "model": ("model",),
    "color": ("color", "colour"),
    "body_type": ("body_type", "bodytype"),
    "category": ("category", "label"),
}
MAX_REPORTED_ERRORS = 10
#: the longest URL carcrawl accepts (a longer one is a bad row, never sent)
MAX_URL_LENGTH = urlsafety.MAX_URL_LENGTH
_TRUE = {"1", "true", "yes", "y", "t"}
_FALSE = {"0", "false", "no", "n", "f", ""}
_INDEX_SUFFIX_RE = re.compile(r"_\d+$")
_CONTROL_RE = re.compile(r"[\x00-\x1f\x7f]")
# an http(s) URL with a plain host name, optional port, and no whitespace or control characters
_PLAIN_URL_RE = re.compile(
    r"(?i:https?)://[A-Za-z0-9](?:[A-Za-z0-9.-]*[A-Za-z0-9])?(?::(\d{1,5}))?(?:[/?#][^\s\x00-\x1f\x7f]*)?\Z"
)


@dataclass(frozen=True, slots=True)
class UrlRow:
    """One URL from a list, with the labels its row gave and where it came from (1-based line,
    or row number for Parquet)."""

    url: str
    labels: Labels
    line: int


@dataclass(frozen=True, slots=True)
class Category:
    """One row of the categories table: an ImageNet-style ``code`` (wnid), a readable ``name``,
    whether to download it and at most how many images."""

    code: str
    name: str
    to_download: bool
    how_many: int


# --------------------------------------------------------------------------- URL lists


def detect_format(path: str | Path, format: str | None = None) -> str:
    """``txt``/``csv``/``tsv``/``jsonl``/``parquet`` from ``format`` or the file name (``.gz`` ignored)."""
    if format is not None:
        fmt = format.strip().lower()
        if fmt not in FORMATS:
            raise InputFileError(f"{path}: unknown URL list format {format!r}; allowed: {', '.join(FORMATS)}")
        return fmt
    p = Path(path)
    suffixes = [s.lower() for s in p.suffixes]
    if suffixes and suffixes[-1] == ".gz":
        suffixes = suffixes[:-1]
    fmt = _SUFFIX_FORMATS.get(suffixes[-1]) if suffixes else None
    return fmt or "txt"


def validate(
    path: str | Path,
    *,
    url_column: str = "url",
    format: str | None = None,
    label_columns: Mapping[str, str] | None = None,
) -> int:
    """Check every row of a URL list; returns the number of URLs, or raises
    :class:`InputFileError` listing the first bad rows (file, line, field, what is wrong)."""
    errors: list[str] = []
    count = 0
    for item in _scan(Path(path), detect_format(path, format), url_column, label_columns):
        if isinstance(item, str):
            errors.append(item)
            if len(errors) > MAX_REPORTED_ERRORS:
                break
        else:
            count += 1
    if errors:
        shown = errors[:MAX_REPORTED_ERRORS]
        more = (
            "\n(more bad rows follow; fix these and run again)" if len(errors) > MAX_REPORTED_ERRORS else ""
        )
        raise InputFileError("\n".join(shown) + more)
    return count


def count_rows(
    path: str | Path, *, url_column: str = "url", format: str | None = None, stop_after_errors: bool = True
) -> tuple[int, int, list[str]]:
    """``(good, bad, first_errors)`` for a URL list in one pass; the first
    :data:`MAX_REPORTED_ERRORS` error lines are kept. ``stop_after_errors`` stops counting once
    that many bad rows are seen (the file is going to be refused anyway)."""
    good = bad = 0
    first: list[str] = []
    for item in _scan(Path(path), detect_format(path, format), url_column, None):
        if isinstance(item, str):
            bad += 1
            if len(first) < MAX_REPORTED_ERRORS:
                first.append(item)
            elif stop_after_errors:
                break
        else:
            good += 1
    return good, bad, first


def raise_bad_rows(errors: list[str], *, more: bool) -> None:
    """The error :func:`validate` raises, for rows :func:`count_rows` found."""
    tail = "\n(more bad rows follow; fix these and run again, or pass --skip-bad-lines)" if more else (
        "\n(fix these and run again, or pass --skip-bad-lines to skip them)")
    raise InputFileError("\n".join(errors) + tail)


def read_urls(
    path: str | Path,
    *,
    url_column: str = "url",
    format: str | None = None,
    label_columns: Mapping[str, str] | None = None,
    check_first: bool = True,
    skip_bad: bool = False,
) -> Iterator[UrlRow]:
    """Stream the rows of a URL list. The whole file is validated first (``check_first``), so the
    error, if any, comes from this call, before a single row is handed out. With ``skip_bad``
    rows without a usable URL are passed over (the caller counted them with :func:`count_rows`)."""
    fmt = detect_format(path, format)
    if check_first and not skip_bad:
        validate(path, url_column=url_column, format=fmt, label_columns=label_columns)
    return _rows(Path(path), fmt, url_column, label_columns, skip_bad)


def _rows(
    path: Path, fmt: str, url_column: str, label_columns: Mapping[str, str] | None, skip_bad: bool = False
) -> Iterator[UrlRow]:
    for item in _scan(path, fmt, url_column, label_columns):
        if isinstance(item, str):
            if skip_bad:
                continue
            raise InputFileError(item)  # the file changed since it was validated
        yield item


def _scan(
    path: Path, fmt: str, url_column: str, label_columns: Mapping[str, str] | None
) -> Iterator[UrlRow | str]:
    """Rows as :class:`UrlRow`, bad rows as error strings (the caller decides what to do)."""
    if fmt == "txt":
        yield from _scan_txt(path)
    elif fmt in ("csv", "tsv"):
        yield from _scan_delimited(path, "," if fmt == "csv" else "\t", url_column, label_columns)
    elif fmt == "jsonl":
        yield from _scan_jsonl(path, url_column, label_columns)
    else:
        yield from _scan_parquet(path, url_column, label_columns)


def _show(url: str) -> str:
    """A URL as an error message may show it: no user name or password, at most 100 characters."""
    shown = urlsafety.strip_credentials(url)[0]
    return repr(shown if len(shown) <= 100 else shown[:100] + "...")


def check_url(value: Any) -> str | None:
    """Why ``value`` is not a usable http(s) URL, or ``None`` when it is."""
    if value is None or (isinstance(value, str) and not value.strip()):
        return "empty"
    if not isinstance(value, str):
        shown = repr(value)
        return f"not text: {shown if len(shown) <= 100 else shown[:100] + '...'}"
    url = value.strip()
    if len(url) > MAX_URL_LENGTH:
        return f"longer than {MAX_URL_LENGTH} characters ({len(url)}), the most carcrawl sends: {_show(url)}"
    if (m := _PLAIN_URL_RE.match(url)) is not None and (m.group(1) is None or int(m.group(1)) <= 65535):
        return None  # the common case, without the cost of urlsplit
    if any(c.isspace() for c in url):
        return f"contains whitespace: {_show(url)}"
    if _CONTROL_RE.search(url):
        return f"contains control characters: {_show(url)}"
    try:
        parts = urlsplit(url)
        _ = parts.port
    except ValueError as exc:
        return f"not a valid URL ({exc}): {_show(url)}"
    if parts.scheme.lower() not in ("http", "https"):
        return f"not an http(s) URL: {_show(url)}"
    if not parts.hostname:
        return f"no host in URL: {_show(url)}"
    return None


def _text_lines(path: Path, errors: str = "strict") -> Iterator[tuple[int, str]]:
    """``(line_number, text)`` for each line, decoded as UTF-8 one line at a time so a decoding
    error can name its line. Gzip is opened transparently."""
    try:
        raw: IO[bytes] = gzip.open(path, "rb") if path.suffix.lower() == ".gz" else open(path, "rb")  # noqa: SIM115
    except FileNotFoundError:
        raise InputFileError(f"{path}: no such file") from None
    except OSError as exc:
        raise InputFileError(f"{path}: cannot read: {exc.strerror or exc}") from None
    with raw:
        try:
            for number, data in enumerate(raw, start=1):
                if number == 1 and data.startswith(b"\xef\xbb\xbf"):
                    data = data[3:]
                try:
                    yield number, data.decode("utf-8", errors=errors)
                except UnicodeDecodeError:
                    raise InputFileError(f"{path}:{number}: not UTF-8 text") from None
        except (OSError, EOFError) as exc:  # truncated / corrupt gzip
            raise InputFileError(f"{path}: cannot read: {exc}") from None


def _scan_txt(path: Path) -> Iterator[UrlRow | str]:
    empty = Labels()
    for number, text in _text_lines(path):
        line = text.strip()
        if not line or line.startswith("#"):
            continue
        if (why := check_url(line)) is not None:
            yield f"{path}:{number}: field 'url': {why}"
        else:
            yield UrlRow(url=line, labels=empty, line=number)


def _label_index(
    header: list[str], label_columns: Mapping[str, str] | None, path: Path
) -> tuple[dict[str, str], str | None]:
    """Labels field -> the header name holding it; or an error naming the missing column."""
    lower = {h.strip().lower(): h for h in header}
    found: dict[str, str] = {}
    if label_columns is not None:
        for fld, column in label_columns.items():
            if fld not in LABEL_COLUMNS:
                return {}, f"{path}: unknown label field {fld!r}; allowed: {', '.join(LABEL_COLUMNS)}"
            if column.strip().lower() not in lower:
                return {}, f"{path}:1: field {column!r}: no such column (columns: {', '.join(header)})"
            found[fld] = lower[column.strip().lower()]
        return found, None
    for fld, names in LABEL_COLUMNS.items():
        for name in names:
            if name in lower:
                found[fld] = lower[name]
                break
    return found, None


def _labels(get: Mapping[str, Any], index: Mapping[str, str]) -> Labels:
    values = {}
    for fld, column in index.items():
        value = get.get(column)
        if value is not None and not isinstance(value, (dict, list)):
            values[fld] = str(value).strip()
    return Labels(**values) if values else Labels()


def _scan_delimited(
    path: Path, delimiter: str, url_column: str, label_columns: Mapping[str, str] | None
) -> Iterator[UrlRow | str]:
    lines = _text_lines(path)
    numbers: list[int] = [0]

    def feed() -> Iterator[str]:
        for number, text in lines:
            numbers[0] = number
            yield text

    reader = csv.reader(feed(), delimiter=delimiter)
    try:
        header = next(reader, None)
    except csv.Error as exc:
        yield f"{path}:1: bad header: {exc}"
        return
    if not header or not any(h.strip() for h in header):
        yield f"{path}:1: no header row (expected a column named {url_column!r})"
        return
    lower = {h.strip().lower(): i for i, h in enumerate(header)}
    url_idx = lower.get(url_column.strip().lower())
    if url_idx is None:
        yield f"{path}:1: field {url_column!r}: no such column (columns: {', '.join(h.strip() for h in header)})"
        return
    index, problem = _label_index(header, label_columns, path)
    if problem:
        yield problem
        return
    label_idx = [(fld, header.index(column)) for fld, column in index.items()]
    empty = Labels()
    while True:
        try:
            row = next(reader)
        except StopIteration:
            return
        except csv.Error as exc:
            yield f"{path}:{numbers[0]}: malformed row: {exc}"
            return
        if not row or not any(cell.strip() for cell in row):
            continue
        number = numbers[0]
        value = row[url_idx] if url_idx < len(row) else None
        if (why := check_url(value)) is not None:
            yield f"{path}:{number}: field {header[url_idx].strip()!r}: {why}"
            continue
        values = {fld: v for fld, i in label_idx if i < len(row) and (v := row[i].strip())}
        yield UrlRow(url=str(value).strip(), labels=Labels(**values) if values else empty, line=number)


def _scan_jsonl(
    path: Path, url_column: str, label_columns: Mapping[str, str] | None
) -> Iterator[UrlRow | str]:
    empty = Labels()
    for number, text in _text_lines(path):
        line = text.strip()
        if not line:
            continue
        try:
            obj = json.loads(line)
        except ValueError as exc:
            yield f"{path}:{number}: invalid JSON: {getattr(exc, 'msg', exc)}"
            continue
        if isinstance(obj, str):
            if (why := check_url(obj)) is not None:
                yield f"{path}:{number}: field 'url': {why}"
            else:
                yield UrlRow(url=obj.strip(), labels=empty, line=number)
            continue
        if not isinstance(obj, dict):
            yield f"{path}:{number}: not a JSON object or string"
            continue
        keys = {str(k).lower(): k for k in obj}
        key = keys.get(url_column.lower())
        if key is None:
            yield f"{path}:{number}: field {url_column!r}: missing"
            continue
        if (why := check_url(obj[key])) is not None:
            yield f"{path}:{number}: field {url_column!r}: {why}"
            continue
        index, problem = _label_index(list(obj), label_columns, path)
        if problem:
            yield problem.replace(":1:", f":{number}:", 1)
            continue
        yield UrlRow(url=obj[key].strip(), labels=_labels(obj, index), line=number)


def _scan_parquet(
    path: Path, url_column: str, label_columns: Mapping[str, str] | None
) -> Iterator[UrlRow | str]:
    import pyarrow.parquet as pq  # lazy: only Parquet lists need it

    try:
        pf = pq.ParquetFile(path)
    except FileNotFoundError:
        raise InputFileError(f"{path}: no such file") from None
    except Exception as exc:  # pyarrow raises several types for "not Parquet"
        raise InputFileError(f"{path}: not a readable Parquet file: {exc}") from None
    names = list(pf.schema_arrow.names)
    lower = {n.lower(): n for n in names}
    url_name = lower.get(url_column.lower())
    if url_name is None:
        yield f"{path}: field {url_column!r}: no such column (columns: {', '.join(names)})"
        return
    index, problem = _label_index(names, label_columns, path)
    if problem:
        yield problem
        return
    columns = [url_name, *sorted(set(index.values()) - {url_name})]
    number = 0
    try:
        for batch in pf.iter_batches(batch_size=8192, columns=columns):
            data = batch.to_pydict()
            urls = data[url_name]
            for i, value in enumerate(urls):
                number += 1
                if (why := check_url(value)) is not None:
                    yield f"{path}:{number}: field {url_name!r}: {why}"
                    continue
                cells = {c: data[c][i] for c in columns}
                yield UrlRow(url=value.strip(), labels=_labels(cells, index), line=number)
    except OSError as exc:
        raise InputFileError(f"{path}: cannot read Parquet data near row {number + 1}: {exc}") from None


# --------------------------------------------------------------------------- categories


def read_categories(path: str | Path) -> list[Category]:
    """The categories table (CSV or TSV with header ``code,name,to_download,how_many``).

    Small by nature, so it is returned as a list; every bad row is reported at once."""
    p = Path(path)
    numbers = [0]

    def feed() -> Iterator[str]:
        for number, text in _text_lines(p):
            if text.strip() and not text.lstrip().startswith("#"):
                numbers[0] = number
                yield text

    lines = feed()
    first = next(lines, None)
    if first is None:
        raise InputFileError(f"{p}: empty categories table (expected header code,name,to_download,how_many)")
    delimiter = "\t" if p.suffix.lower() in (".tsv", ".tab") or ("\t" in first and "," not in first) else ","
    header = [h.strip().lower() for h in next(csv.reader([first], delimiter=delimiter))]
    need = ("code", "name", "to_download", "how_many")
    missing = [c for c in need if c not in header]
    if missing:
        raise InputFileError(
            f"{p}:{numbers[0]}: field {missing[0]!r}: no such column (header must have {', '.join(need)})"
        )
    idx = {c: header.index(c) for c in need}
    errors: list[str] = []
    out: list[Category] = []
    seen: dict[str, int] = {}
    reader = csv.reader(lines, delimiter=delimiter)
    while True:
        try:
            row = next(reader)
        except StopIteration:
            break
        except csv.Error as exc:
            errors.append(f"{p}:{numbers[0]}: malformed row: {exc}")
            break
        number = numbers[0]
        cells = {c: (row[i].strip() if i < len(row) else "") for c, i in idx.items()}
        where = f"{p}:{number}"
        if not cells["code"]:
            errors.append(f"{where}: field 'code': empty")
            continue
        if cells["code"] in seen:
            errors.append(f"{where}: field 'code': {cells['code']!r} already on line {seen[cells['code']]}")
            continue
        flag = cells["to_download"].lower()
        if flag not in _TRUE and flag not in _FALSE:
            errors.append(f"{where}: field 'to_download': not true/false: {cells['to_download']!r}")
            continue
        try:
            how_many = int(cells["how_many"])
            if how_many < 0:
                raise ValueError
        except ValueError:
            errors.append(f"{where}: field 'how_many': not a whole number >= 0: {cells['how_many']!r}")
            continue
        seen[cells["code"]] = number
        out.append(Category(cells["code"], cells["name"] or cells["code"], flag in _TRUE, how_many))
    if errors:
        raise InputFileError("\n".join(errors[:MAX_REPORTED_ERRORS]))
    return out


def check_url_table(url_table_path: str | Path) -> None:
    """Raise :class:`InputFileError` now if the URL table cannot be read or its header is wrong,
    so ``fetch --categories`` fails before the checkpoint is touched, not halfway through loading."""
    path = Path(url_table_path)
    for number, text in _text_lines(path, errors="replace"):
        if not text.strip() or text.lstrip().startswith("#"):
            continue
        delimiter = "\t" if "\t" in text else ","
        cells = [c.strip().lower() for c in next(csv.reader([text], delimiter=delimiter))]
        has_code = "code" in cells or "wnid" in cells
        if ("url" in cells) != has_code:
            raise InputFileError(f"{path}:{number}: header needs both 'code' (or 'wnid') and 'url' columns")
        return


def select_from_url_table(categories: Iterable[Category], url_table_path: str | Path) -> Iterator[UrlRow]:
    """URLs for the categories marked ``to_download``, at most ``how_many`` each, streamed from a
    URL table, labelled ``category=<name>``.

    The table is CSV/TSV with a header naming ``code`` (or ``wnid``) and ``url``, or ImageNet's
    headerless ``fall11_urls.txt`` style: ``n02958343_1234<TAB>http://...``. Such tables are
    third-party and full of dead links and odd bytes, so rows with an unusable URL are skipped
    and counted (logged), not fatal; reading stops as soon as every category has its quota."""
    wanted = {c.code: c for c in categories if c.to_download and c.how_many > 0}
    if not wanted:
        return
    remaining = {code: c.how_many for code, c in wanted.items()}
    open_codes = len(remaining)
    path = Path(url_table_path)
    lines = _text_lines(path, errors="replace")
    code_idx, url_idx, delimiter = 0, 1, "\t"
    skipped = 0
    header_checked = False
    for number, text in lines:
        if not text.strip() or text.lstrip().startswith("#"):
            continue
        if not header_checked:
            header_checked = True
            delimiter = "\t" if "\t" in text else ","
            cells = [c.strip().lower() for c in next(csv.reader([text], delimiter=delimiter))]
            code_name = "code" if "code" in cells else "wnid" if "wnid" in cells else None
            if "url" in cells and code_name is not None:
                code_idx, url_idx = cells.index(code_name), cells.index("url")
                continue
            if "url" in cells or code_name is not None:
                raise InputFileError(
                    f"{path}:{number}: header needs both 'code' (or 'wnid') and 'url' columns"
                )
        if delimiter == "\t" and '"' not in text:
            row = text.rstrip("\r\n").split("\t")
        else:
            row = next(csv.reader([text], delimiter=delimiter), [])
        if len(row) <= max(code_idx, url_idx):
            if len(row) == 1 and delimiter == "\t":  # whitespace-separated variant
                row = text.split(None, 1)
            if len(row) <= max(code_idx, url_idx):
                skipped += 1
                continue
        ident, url = row[code_idx].strip(), row[url_idx].strip()
        code = ident if ident in remaining else _INDEX_SUFFIX_RE.sub("", ident)
        left = remaining.get(code)
        if not left:
            continue
        if "\ufffd" in url or check_url(url) is not None:
            skipped += 1
            continue
        remaining[code] = left - 1
        yield UrlRow(url=url, labels=Labels(category=wanted[code].name), line=number)
        if left == 1:
            open_codes -= 1
            if open_codes == 0:
                break
    if skipped:
        log.info("%s: skipped %d rows without a usable URL", path, skipped)
    short = {wanted[c].name: n for c, n in remaining.items() if n > 0}
    if short:
        log.info(
            "%s: fewer URLs than asked for: %s", path, ", ".join(f"{k} (-{v})" for k, v in short.items())
        )
