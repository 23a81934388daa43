"""``carcrawl bench`` end to end on a tiny plan: the sandbox in its own process, the real pipeline,
the real classifier when it loads; the table and the config suggestion are printed. No timing is
asserted (speeds live in benchmarks/)."""

from __future__ import annotations

import pytest

from carcrawl.bench import run_bench, suggest


def test_bench_runs_and_suggests_settings(capsys: pytest.CaptureFixture[str]) -> None:
    rows = run_bench(device="cpu", plan=(60, (8, 16), (4,), 8))
    out = capsys.readouterr().out
    downloads = [r for r in rows if r.part == "download"]
    assert [r.setting for r in downloads] == ["concurrency 8", "concurrency 16"]
    assert all(r.ok == 60 and r.images_per_s > 0 and r.mb_per_s for r in downloads)  # no URL lost
    assert "carcrawl bench" in out and "suggested for config.toml" in out
    assert "[download]\nconcurrency = " in out
    best = suggest(rows, "download")
    assert best is not None and f"concurrency = {best.setting.split()[-1]}" in out
    classify = [r for r in rows if r.part == "classify"]
    if classify:  # the classifier loaded: its row and its suggestion are there too
        assert classify[0].ok == 8 and "batch_size = 4" in out
    else:
        assert "classif" in out
