"""Content-addressed image files on a real folder: the writer threads, the folders, dedup."""

from __future__ import annotations

import asyncio
import hashlib
import shutil
import threading
from pathlib import Path

import pytest

from carcrawl.filestore import ImageFiles, relative_path, relative_paths


def _writer_threads() -> list[threading.Thread]:
    return [t for t in threading.enumerate() if t.name.startswith("carcrawl-files")]


async def test_close_ends_the_writer_threads_and_a_later_write_starts_new_ones(tmp_path: Path) -> None:
    files = ImageFiles(tmp_path, batch=4, threads=2)
    files.prepare()
    bodies = [f"image {i}".encode() * 100 for i in range(10)]
    stored = [await files.write(None, "jpeg", b) for b in bodies[:1]]
    assert 1 <= len(_writer_threads()) <= 2
    stored += await asyncio.gather(*(files.write(None, "jpeg", b) for b in bodies[1:]))
    assert len(_writer_threads()) <= 2
    await files.close()
    assert _writer_threads() == []
    for s, b in zip(stored, bodies, strict=True):
        assert s.sha256 == hashlib.sha256(b).hexdigest()
        assert files.read(s.path) == b
    again = await files.write(None, "png", b"later")
    assert files.read(again.path) == b"later"
    await files.close()
    assert _writer_threads() == []
    assert list((tmp_path / "images" / ".tmp").iterdir()) == []


async def test_a_folder_removed_after_a_write_is_made_again(tmp_path: Path) -> None:
    """The writer remembers the folders it made; one removed meanwhile (by hand, by a cleanup)
    must not lose the next image that belongs in it."""
    files = ImageFiles(tmp_path)
    files.prepare()
    first, second = "abcd" + "0" * 60, "abcd" + "1" * 60  # the same images/ab/cd folder
    a = await files.write(first, "jpeg", b"first")
    shutil.rmtree(tmp_path / "images" / "ab")
    b = await files.write(second, "jpeg", b"second")
    assert files.read(b.path) == b"second"
    assert not (tmp_path / a.path).exists()
    # the same bytes again: stored once, the file left as it is
    c = await files.write(second, "jpeg", b"ignored: the name says these are the same bytes")
    assert c == b and files.read(c.path) == b"second"
    await files.close()


@pytest.mark.parametrize("bad", [["a" * 63 + "\n" + "b" * 64], ["../" + "a" * 61], ["a" * 63, "a" * 65], ["A" * 64]])
def test_a_page_of_paths_refuses_what_one_path_refuses(bad: list[str]) -> None:
    """The batched check (one regex over the page) lets no digest through that the per-image one refuses."""
    with pytest.raises(ValueError, match="not a sha256 hex digest"):
        relative_paths(bad, ["jpeg"] * len(bad))
    with pytest.raises(ValueError, match="not a sha256 hex digest"):
        for sha in bad:
            relative_path(sha, "jpeg")


def test_a_page_of_paths_is_the_paths_one_by_one() -> None:
    shas = [f"{k:064x}" for k in range(5)]
    formats = ["jpeg", "png", "webp", "weird", "gif"]
    assert relative_paths(shas, formats, "..") == [f"../{relative_path(s, f)}" for s, f in zip(shas, formats, strict=True)]
