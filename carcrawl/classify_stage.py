"""The classify stage: a batch consumer on the bounded queue from the download stage.

It takes verified bytes, gathers a batch (``batch_size`` items or ``batch_timeout`` seconds,
whichever first), skips images already judged, hands the batch to the classifier in one thread
hop, and writes verdicts. On resume it first classifies images a killed run stored but never
judged (their bytes are read back from disk, one thread hop per batch). The model loads in a
thread while the first downloads run, so the network never waits for it.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Callable
from typing import Any

from carcrawl.config import ClassifyConfig
from carcrawl.download import ClassifyItem
from carcrawl.errors import CarcrawlError, ModelUnavailableError
from carcrawl.filestore import ImageFiles
from carcrawl.stats import Stats
from carcrawl.store import Store

log = logging.getLogger(__name__)


def classifier_settings(cfg: ClassifyConfig) -> Any:
    """The classify package's settings from our config section (imported lazily: torch)."""
    from carcrawl.classify import ClassifySettings

    return ClassifySettings(
        model=cfg.model,
        weights=cfg.weights or None,
        device=cfg.device,
        decoder=cfg.decoder,
        batch_size=cfg.batch_size,
        threads=cfg.threads,
        policy=cfg.policy,
        top_k=cfg.top_k,
        threshold=cfg.threshold,
        max_pixels=cfg.max_pixels,
        embeddings=cfg.embeddings,
    )


def load_classifier(cfg: ClassifyConfig) -> Any:
    """Load the configured model; any failure becomes one clear ModelUnavailableError."""
    try:
        from carcrawl.classify import load_classifier as _load

        return _load(classifier_settings(cfg))
    except CarcrawlError:
        raise
    except Exception as e:
        raise ModelUnavailableError(
            f"could not load the classifier ({cfg.model} on {cfg.device}): {type(e).__name__}: {e}. "
            "Run with --no-classify to download only, or see README: Models."
        ) from e


class ClassifyStage:
    def __init__(
        self,
        store: Store,
        files: ImageFiles,
        cfg: ClassifyConfig,
        stats: Stats,
        queue: asyncio.Queue[ClassifyItem | None],
        loader: Callable[[ClassifyConfig], Any] = load_classifier,
        on_ready: Callable[[str], None] | None = None,
        depth: int = 0,
    ):
        self.store = store
        self.files = files
        self.cfg = cfg
        self.stats = stats
        self.queue = queue
        self._loader = loader
        self._on_ready = on_ready
        self._classifier_task: asyncio.Task[Any] | None = None
        self._depth = depth
        self._slots: asyncio.Semaphore | None = None
        self._inflight: set[asyncio.Task[None]] = set()
        self._busy: set[str] = set()  # shas in a batch in flight: never classified twice at once
        self._error: BaseException | None = None
        self.stopping = False

    def stop(self) -> None:
        """A drain: finish the batches in flight, judge nothing more. Images stored but not judged
        stay ``pending`` and are the backlog of the next run; the queue is still emptied, so no
        download waits on it."""
        self.stopping = True

    def start_loading(self) -> None:
        """Load the model in a thread now, so it is ready when the first bytes arrive."""
        if self._classifier_task is None:
            self._classifier_task = asyncio.create_task(asyncio.to_thread(self._loader, self.cfg))

    async def loaded(self) -> None:
        """Wait for the model: a loader that raises ends the run at once with its message (the
        pipeline owns this task), instead of leaving downloads blocked on a full queue."""
        self.start_loading()
        assert self._classifier_task is not None
        try:
            await asyncio.shield(self._classifier_task)
        except asyncio.CancelledError:
            if not self._classifier_task.done():
                self._classifier_task.cancel()  # the thread finishes on its own; nobody waits for it
            raise

    async def classifier(self) -> Any:
        self.start_loading()
        assert self._classifier_task is not None
        clf = await self._classifier_task
        if self._on_ready is not None:
            self._on_ready(clf.describe())
            self._on_ready = None
        return clf

    async def run(self) -> None:
        """Classify the backlog, then the queue until its sentinel (``None``)."""
        self.start_loading()
        await self._backlog()
        closed = False
        while not closed:
            batch: list[ClassifyItem] = []
            item = await self.queue.get()
            if item is None:
                break
            if self.stopping:
                continue  # left for the next run's backlog
            batch.append(item)
            deadline = time.monotonic() + self.cfg.batch_timeout
            while len(batch) < self.cfg.batch_size:
                timeout = deadline - time.monotonic()
                if timeout <= 0:
                    break
                try:
                    nxt = await asyncio.wait_for(self.queue.get(), timeout)
                except TimeoutError:
                    break
                if nxt is None:
                    closed = True
                    break
                batch.append(nxt)
            if self.stopping:
                continue
            try:
                await self._submit([(i.sha256, i.body) for i in batch])
            except asyncio.CancelledError:
                for t in self._inflight:
                    t.cancel()
                raise
        await self._drain()

    async def _submit(self, items: list[tuple[str, bytes]]) -> None:
        """Classify a batch, with up to ``depth`` batches in flight: on the GPU the next batch
        decodes (the classifier's decode thread) while this one runs the network. On the CPU
        the depth is 1: the classifier already pipelines decode and inference inside a batch,
        and a second batch would only fight it for the same cores."""
        if self._slots is None:
            clf = await self.classifier()
            depth = self._depth or (2 if getattr(clf, "device", "cpu") == "cuda" else 1)
            self._slots = asyncio.Semaphore(depth)
        await self._slots.acquire()
        task = asyncio.create_task(self._classify(items))
        self._inflight.add(task)

        def done(t: asyncio.Task[None]) -> None:
            self._inflight.discard(t)
            assert self._slots is not None
            self._slots.release()
            if not t.cancelled() and t.exception() is not None and self._error is None:
                self._error = t.exception()

        task.add_done_callback(done)
        if self._error is not None:
            await self._drain()

    async def _drain(self) -> None:
        if self._inflight:
            await asyncio.gather(*self._inflight, return_exceptions=True)
        if self._error is not None:
            raise self._error

    async def _backlog(self) -> None:
        after = ""
        while not self.stopping:
            images = await self.store.images_awaiting_verdict(after, self.cfg.batch_size)
            if not images:
                return
            after = images[-1].sha256

            def read_all(imgs=images) -> list[tuple[str, bytes]]:
                out = []
                for im in imgs:
                    with contextlib.suppress(OSError):
                        out.append((im.sha256, self.files.read(im.path)))
                return out

            await self._classify(await asyncio.to_thread(read_all))

    async def _classify(self, items: list[tuple[str, bytes]]) -> None:
        known = await self.store.known_verdicts([sha for sha, _ in items])
        seen: set[str] = set()
        todo = []
        for sha, body in items:
            if sha not in known and sha not in seen and sha not in self._busy:
                seen.add(sha)
                todo.append((sha, body))
        if not todo:
            return
        clf = await self.classifier()
        self._busy |= seen
        try:
            verdicts = await asyncio.to_thread(clf.classify, todo)
        finally:
            self._busy -= seen
        self.store.record_verdicts(verdicts)
        kept = sum(1 for v in verdicts if v.keep)
        self.stats.inc("classified", len(verdicts))
        self.stats.inc("kept", kept)
        for v in verdicts:
            if not v.keep:
                self.stats.reason("classifier:" + v.reason.split(":", 1)[0])
