"""Content-addressed image files: ``images/ab/cd/<sha256>.<ext>``, written to a temp name and
renamed, so identical bytes are stored once and a kill never leaves a half-written file under a
real name. Writes are batched into one thread hop per batch (not one per file): at thousands of
images per second the hop, not the disk, is what costs. The batches run on the store's own two
threads, not the loop's default executor: more threads creating and renaming files in the one
temp folder at once cost more kernel time (lock contention on that folder) than they gain.
"""

from __future__ import annotations

import asyncio
import errno
import hashlib
import os
import re
import uuid
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

from carcrawl.errors import DiskFullError
from carcrawl.store import StoredImage

EXTENSIONS = {"jpeg": "jpg", "png": "png", "gif": "gif", "webp": "webp", "bmp": "bmp", "tiff": "tif", "avif": "avif", "heic": "heic"}
TMP_DIR = ".tmp"
_SHA256 = re.compile(r"[0-9a-f]{64}")


_SHA256_LINES = re.compile(r"(?:[0-9a-f]{64}\n)*")


def relative_path(sha256: str, fmt: str) -> str:
    """Where an image lives, relative to the output folder. Only hex digits reach the path."""
    if _SHA256.fullmatch(sha256) is None:
        raise ValueError(f"not a sha256 hex digest: {sha256[:80]!r}")
    return "images/" + _layout(sha256, EXTENSIONS.get(fmt, "bin"))


def _layout(sha256: str, ext: str) -> str:
    return f"{sha256[:2]}/{sha256[2:4]}/{sha256}.{ext}"


def relative_paths(shas: Sequence[str], formats: Sequence[str], prefix: str = "") -> list[str]:
    """:func:`relative_path` of many images (joined to ``prefix``), their digests checked with one
    regex match for all (a Parquet manifest's page: one match per image was 8 us each)."""
    if _SHA256_LINES.fullmatch("".join(f"{s}\n" for s in shas)) is None:
        bad = next(s for s in shas if _SHA256.fullmatch(s) is None)
        raise ValueError(f"not a sha256 hex digest: {bad[:80]!r}")
    base = os.path.join(prefix, "images", "")
    ext = EXTENSIONS.get
    return [base + _layout(sha, ext(fmt, "bin")) for sha, fmt in zip(shas, formats, strict=True)]


@dataclass(slots=True)
class _Pending:
    sha256: str | None
    fmt: str
    body: bytes
    future: asyncio.Future[StoredImage]


class ImageFiles:
    """Batches file writes: ``await write(...)`` resolves once the bytes are renamed into place.

    The writes run on ``threads`` threads of the store's own (started on the first write);
    :meth:`close` waits for what is being written and ends them."""

    def __init__(self, out_dir: Path, batch: int = 64, linger: float = 0.005, threads: int = 2):
        self.out_dir = Path(out_dir)
        self.tmp = self.out_dir / "images" / TMP_DIR
        self.batch = batch
        self.linger = linger
        self.threads = threads
        self._pending: list[_Pending] = []
        self._flush_handle: asyncio.TimerHandle | None = None
        self._writing: set[asyncio.Task[None]] = set()
        self._executor: ThreadPoolExecutor | None = None
        # image folders known to exist (made or met by a write): a batch skips their mkdir; a
        # folder removed meanwhile is made again when the rename into it fails
        self._folders: set[Path] = set()

    def prepare(self) -> int:
        """Create folders and remove temp files a killed run left behind. Returns how many."""
        self.tmp.mkdir(parents=True, exist_ok=True)
        removed = 0
        for p in self.tmp.iterdir():
            p.unlink(missing_ok=True)
            removed += 1
        return removed

    async def write(self, sha256: str | None, fmt: str, body: bytes) -> StoredImage:
        """Store ``body``; its sha256 (the file name) is computed in the writer thread when not
        given: hashing a 500 KB body costs ~0.3 ms, and hashlib releases the GIL, so there it
        runs beside the event loop instead of on it."""
        fut: asyncio.Future[StoredImage] = asyncio.get_running_loop().create_future()
        self._pending.append(_Pending(sha256, fmt, body, fut))
        if len(self._pending) >= self.batch:
            self._start_flush()
        elif self._flush_handle is None:
            self._flush_handle = asyncio.get_running_loop().call_later(self.linger, self._start_flush)
        return await fut

    def _start_flush(self) -> None:
        if self._flush_handle is not None:
            self._flush_handle.cancel()
            self._flush_handle = None
        items, self._pending = self._pending, []
        if items:
            task = asyncio.get_running_loop().create_task(self._flush(items))
            self._writing.add(task)
            task.add_done_callback(self._writing.discard)

    def _pool(self) -> ThreadPoolExecutor:
        if self._executor is None:
            self._executor = ThreadPoolExecutor(self.threads, thread_name_prefix="carcrawl-files")
        return self._executor

    async def _flush(self, items: list[_Pending]) -> None:
        try:
            batch = [(i.sha256, i.fmt, i.body) for i in items]
            results = await asyncio.get_running_loop().run_in_executor(self._pool(), self._write_batch, batch)
        except BaseException as e:  # noqa: BLE001 - hand the error to every waiter
            err = e if isinstance(e, Exception) else RuntimeError(str(e))
            for i in items:
                if not i.future.done():
                    i.future.set_exception(err)
            return
        for i, r in zip(items, results, strict=True):
            if not i.future.done():
                i.future.set_result(r)

    def _write_batch(self, items: list[tuple[str | None, str, bytes]]) -> list[StoredImage]:
        out = []
        folders = self._folders  # shared by the writer threads: a race costs one extra mkdir
        for given, fmt, body in items:
            sha = given or hashlib.sha256(body).hexdigest()
            rel = relative_path(sha, fmt)
            final = self.out_dir / rel
            if not final.exists():  # the same bytes are stored once (and a stat is cheap)
                parent = final.parent
                if parent not in folders:
                    parent.mkdir(parents=True, exist_ok=True)
                    folders.add(parent)
                tmp = self.tmp / f"{sha}.{uuid.uuid4().hex[:8]}.part"
                try:
                    with open(tmp, "wb") as f:
                        f.write(body)
                    try:
                        os.replace(tmp, final)
                    except FileNotFoundError:  # its folder was removed since it was made
                        if not tmp.exists():
                            raise
                        parent.mkdir(parents=True, exist_ok=True)
                        os.replace(tmp, final)
                except OSError as e:
                    tmp.unlink(missing_ok=True)
                    if e.errno in (errno.ENOSPC, errno.EDQUOT):
                        raise DiskFullError(
                            f"{self.out_dir}: no space left on the device; everything committed so far is kept. "
                            "Free some space and run the same command again to resume."
                        ) from None
                    raise
            out.append(StoredImage(sha, rel, fmt))
        return out

    async def drain(self) -> None:
        self._start_flush()
        while self._writing:
            await asyncio.gather(*list(self._writing), return_exceptions=True)

    async def close(self) -> None:
        """Write what is waiting, then end the writer threads (a later write starts new ones)."""
        await self.drain()
        executor, self._executor = self._executor, None
        if executor is not None:
            executor.shutdown(wait=True)  # nothing is left to run: this only joins idle threads

    def read(self, rel_path: str) -> bytes:
        return (self.out_dir / rel_path).read_bytes()
