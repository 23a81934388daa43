"""A stage that fails ends the run: its one-line error, its exit code, nothing committed lost, and
the same command (or a changed one) resumes. The hang this guards against: a classifier that
fails to load while the downloads wait on the full classify queue."""

from __future__ import annotations

import os
import sqlite3
import subprocess
import time
from pathlib import Path
from typing import Any

import pytest
from helpers import IMAGES, carcrawl_cmd, crawl_settings, image_shas, sandbox_in_thread

from carcrawl.config import ClassifyConfig
from carcrawl.errors import ModelUnavailableError
from carcrawl.models import Labels
from carcrawl.pipeline import Job, Pipeline
from carcrawl.urllists import UrlRow

pytestmark = pytest.mark.usefixtures("shared")


def checkpoint_state(db: Path) -> dict[str, int]:
    con = sqlite3.connect(db)
    try:
        assert con.execute("PRAGMA integrity_check").fetchone()[0] == "ok"
        return dict(con.execute("SELECT state, count(*) FROM candidates GROUP BY 1").fetchall())
    finally:
        con.close()


@pytest.mark.timeout(240)
def test_a_classifier_that_cannot_load_ends_the_crawl_with_one_line_and_resume_works(tmp_path: Path) -> None:
    with sandbox_in_thread(photos=IMAGES, hosts=4, latency_ms=(5, 20), fault_rate=0.0) as sb:
        urls = tmp_path / "urls.txt"
        urls.write_text("\n".join(sb.image_urls(2000)) + "\n")
        config = tmp_path / "c.toml"
        config.write_text('[crawl]\nallow_networks = ["127.0.0.0/8"]\n[download]\nper_host_interval = 0.0\n'
                          "queue_size = 4\n[classify]\nenabled = true\ndevice = \"cpu\"\nmodel = \"resnet50\"\n"
                          f'weights = "{tmp_path / "missing.pt"}"\n[store]\ncommit_interval = 0.2\n')
        out = tmp_path / "out"
        cmd = [*carcrawl_cmd(), "fetch", str(urls), "--out", str(out), "--config", str(config), "--quiet"]
        env = {**os.environ, "PYTHONUNBUFFERED": "1"}
        first = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=180)
        assert first.returncode != 0
        assert "Traceback" not in first.stderr, first.stderr[-3000:]
        errors = [line for line in first.stderr.splitlines() if line.startswith("carcrawl: error:")]
        assert len(errors) == 1 and "missing.pt" in errors[0], first.stderr[-3000:]
        states = checkpoint_state(out / "checkpoint.sqlite")
        assert "in_flight" not in states, states
        assert states.get("pending", 0) > 0, states

        second = subprocess.run([*cmd, "--no-classify"], capture_output=True, text=True, env=env, timeout=180)
        assert second.returncode == 0, second.stderr[-3000:]
    assert checkpoint_state(out / "checkpoint.sqlite") == {"done": 2000}
    con = sqlite3.connect(out / "checkpoint.sqlite")
    assert {s for (s,) in con.execute("SELECT sha256 FROM images")} == image_shas(out)
    con.close()


@pytest.mark.timeout(120)
async def test_a_loader_that_raises_while_downloads_wait_on_the_full_queue_does_not_hang(tmp_path: Path) -> None:
    """In process, so the moment is chosen: the loader raises only once the downloads have stalled
    (the checkpoint's done count stops growing: they wait on the full classify queue)."""
    out = tmp_path / "out"
    stalled_at: list[int] = []

    def loader(cfg: ClassifyConfig) -> Any:
        last, still = -1, 0
        while still < 10:
            time.sleep(0.2)
            try:
                done = checkpoint_state(out / "checkpoint.sqlite").get("done", 0)
            except sqlite3.Error:
                continue
            still = still + 1 if done == last and done > 0 else 0
            last = done
        stalled_at.append(last)
        raise ModelUnavailableError("could not load the classifier (the test's loader)")

    with sandbox_in_thread(photos=IMAGES, hosts=4, latency_ms=(0, 5), fault_rate=0.0) as sb:
        rows = [UrlRow(u, Labels(category="c"), i) for i, u in enumerate(sb.image_urls(1500))]
        s = crawl_settings(out, **{"classify.enabled": True, "download.queue_size": 8,
                                   "download.per_host_interval": 0.0, "store.commit_interval": 0.1})
        pipeline = Pipeline(s, Job(urls=lambda: iter(rows), fingerprint="1500"), fresh=True, classifier_loader=loader)
        with pytest.raises(ModelUnavailableError, match="the test's loader"):
            await pipeline.run()
    assert stalled_at and 8 <= stalled_at[0] < 1500, stalled_at  # it stalled on the queue, mid-crawl
    states = checkpoint_state(out / "checkpoint.sqlite")
    assert "in_flight" not in states and states["done"] >= stalled_at[0], states
