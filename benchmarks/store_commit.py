"""The checkpoint writer's commit cost: candidate inserts and fetched-image records per second
through ``Store`` (commit every 500 rows), best of three rounds. Issue 11 moved the batch from
aiosqlite's private ``Connection._execute`` (one thread hop per batch) to its public API (one
``executemany`` per statement, ~10 hops per batch); this measures what that costs.

Run (holding the machine-wide lock)::

    flock /tmp/carcrawl-bench.lock python benchmarks/store_commit.py

It measures the checkout it lives in; run another checkout's copy to compare.
"""

from __future__ import annotations

import asyncio
import json

from _common import write_result
from stage_costs import sqlite_rates

ROUNDS = 3
N = 20_000


def main() -> int:
    best: dict[str, float] = {}
    for _ in range(ROUNDS):
        r = asyncio.run(sqlite_rates(N, 500))
        for k, v in r.items():
            best[k] = max(best.get(k, 0.0), v)
    print(json.dumps({k: round(v, 1) for k, v in best.items()}))
    write_result("store_commit", {"rows": N, "commit_rows": 500, "rounds": ROUNDS, "best": best})
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
