"""Content-addressed image files: ``images/ab/cd/<sha256>.<ext>``, written to a temp name and
renamed, so identical bytes are stored once and a kill never leaves a half-written file under a
real name. Writes are batched into one thread hop per batch (not one per file): at thousands of
images per second the hop, not the disk, is what costs.
"""

from __future__ import annotations

import asyncio
import errno
import hashlib
import os
import re
import uuid
from dataclasses import dataclass
from pathlib import Path

from carcrawl.errors import DiskFullError
from carcrawl.store import StoredImage

EXTENSIONS = {"jpeg": "jpg", "png": "png", "gif": "gif", "webp": "webp", "bmp": "bmp", "tiff": "tif", "avif": "avif", "heic": "heic"}
TMP_DIR = ".tmp"
_SHA256 = re.compile(r"[0-9a-f]{64}")


def relative_path(sha256: str, fmt: str) -> str:
    """Where an image lives, relative to the output folder. Only hex digits reach the path."""
    if _SHA256.fullmatch(sha256) is None:
        raise ValueError(f"not a sha256 hex digest: {sha256[:80]!r}")
    return f"images/{sha256[:2]}/{sha256[2:4]}/{sha256}.{EXTENSIONS.get(fmt, 'bin')}"


@dataclass(slots=True)
class _Pending:
    sha256: str | None
    fmt: str
    body: bytes
    future: asyncio.Future[StoredImage]


class ImageFiles:
    """Batches file writes: ``await write(...)`` resolves once the bytes are renamed into place."""

    def __init__(self, out_dir: Path, batch: int = 64, linger: float = 0.005):
        self.out_dir = Path(out_dir)
        self.tmp = self.out_dir / "images" / TMP_DIR
        self.batch = batch
        self.linger = linger
        self._pending: list[_Pending] = []
        self._flush_handle: asyncio.TimerHandle | None = None
        self._writing: set[asyncio.Task[None]] = set()

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

    async def _flush(self, items: list[_Pending]) -> None:
        try:
            results = await asyncio.to_thread(self._write_batch, [(i.sha256, i.fmt, i.body) for i in items])
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
        made: set[Path] = set()
        for given, fmt, body in items:
            sha = given or hashlib.sha256(body).hexdigest()
            rel = relative_path(sha, fmt)
            final = self.out_dir / rel
            if not final.exists():
                parent = final.parent
                if parent not in made:
                    parent.mkdir(parents=True, exist_ok=True)
                    made.add(parent)
                tmp = self.tmp / f"{sha}.{uuid.uuid4().hex[:8]}.part"
                try:
                    with open(tmp, "wb") as f:
                        f.write(body)
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

    def read(self, rel_path: str) -> bytes:
        return (self.out_dir / rel_path).read_bytes()
