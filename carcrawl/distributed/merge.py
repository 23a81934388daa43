"""Fold a finished shard into the main output folder: its image files, then its rows.

Files first: each content-addressed file is renamed from ``OUT/shards/NNN/images/...`` to the same
relative path under ``OUT/images/`` (same file system, so a rename, not a copy; a file already
there has the same bytes by construction, so the shard's copy is dropped). Then the rows, in one
transaction (:func:`carcrawl.store.shards.merge_shard`), then the shard folder is removed. A kill
anywhere in between is harmless: a file the main checkpoint does not know yet is ignored, and the
next run merges the same shard again (both steps are idempotent).
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path

from carcrawl.store.shards import image_paths, merge_shard


def move_images(shard_dir: Path, out_dir: Path) -> int:
    """Rename the shard's image files into ``out_dir``; returns how many moved."""
    moved = 0
    made: set[Path] = set()
    for rel in image_paths(shard_dir / "checkpoint.sqlite"):
        src, dst = shard_dir / rel, out_dir / rel
        if not src.exists():
            continue  # moved by an earlier, interrupted merge
        if dst.exists():
            src.unlink()
            continue
        if dst.parent not in made:
            dst.parent.mkdir(parents=True, exist_ok=True)
            made.add(dst.parent)
        os.replace(src, dst)
        moved += 1
    return moved


def merge_into_main(main: Path, shard_dir: Path, out_dir: Path, k: int) -> int:
    """Files, rows, then the shard folder. Returns the candidates whose outcome was merged."""
    move_images(shard_dir, out_dir)
    updated = merge_shard(main, shard_dir / "checkpoint.sqlite", k)
    shutil.rmtree(shard_dir)
    return updated
