"""The SQLite checkpoint: the single source of truth, and the only package that speaks SQL.

Every query/source pair (a *search*), candidate URL and stored image has a row with a ``state``
(``pending``, ``in_flight``, ``done``, ``failed``, ``rejected``) and a ``reason``. A restart turns
``in_flight`` back into ``pending`` and goes on. One job per module:

- ``schema``: DDL, schema version, the checks a file must pass to be opened;
- ``writer``: the :class:`Store` the crawl writes through (buffered, batched commits);
- ``status``: synchronous read-only queries (status, category report) for other processes;
- ``dataset``: the dataset side's reads (export, report, review, refine).
"""

from carcrawl.store.schema import APPLICATION_ID, SCHEMA, SCHEMA_VERSION
from carcrawl.store.status import category_report, iter_rows, open_readonly, status_counts
from carcrawl.store.writer import TERMINAL_STATES, DownloadTask, SearchTask, Store, StoredImage

__all__ = [
    "APPLICATION_ID",
    "SCHEMA",
    "SCHEMA_VERSION",
    "TERMINAL_STATES",
    "DownloadTask",
    "SearchTask",
    "Store",
    "StoredImage",
    "category_report",
    "iter_rows",
    "open_readonly",
    "status_counts",
]
