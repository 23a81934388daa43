"""The classifier: decoder + network + vehicle policy, one call per batch, never raising per image.

``classify`` takes one batch (the crawl's classify stage calls it from a worker thread);
``classify_batches`` takes a stream of batches and decodes batch N+1 in a prefetch thread while
batch N is inferred (``carcrawl classify`` and the benchmarks use it; ``classify`` uses it too when
handed more than ``batch_size`` items).

Device and decoder selection (``load_classifier``):

- ``device="auto"``: CUDA when torch sees a GPU, else the CPU. ``"cuda"`` without a GPU is an error.
- ``decoder="auto"``: on CUDA, DALI's mixed (nvJPEG) pipeline when DALI imports and decodes a
  test image on that GPU, else Pillow decode with the model on the GPU; on the CPU, Pillow (or
  Pillow-SIMD when installed): on the 2-core development machine it decoded faster than or as
  fast as DALI's CPU pipeline in every run (e.g. 139 vs 102 images/s; JPEG ``draft`` decodes at
  reduced size, DALI's CPU decoder does not), and end to end the two were within noise
  (benchmarks/RESULTS.md, "Classify: CPU throughput"). ``"dali"`` forces DALI (its CPU pipeline
  on the CPU); ``"pillow"`` forces Pillow.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable, Iterator, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from typing import Any

from carcrawl.classify.decode import DECODE_ERROR, DecodedBatch, PillowDecoder
from carcrawl.classify.head import ExteriorHead, load_head
from carcrawl.classify.networks import Network, load_network
from carcrawl.classify.policy import POLICIES, decide, decide_head, imagenet_labels
from carcrawl.classify.settings import ClassifySettings, parse_device, thread_count
from carcrawl.errors import ConfigError, ModelUnavailableError
from carcrawl.models import Prediction, Verdict

log = logging.getLogger(__name__)

Item = tuple[str, bytes]  # (sha256, encoded image bytes)

# CPU: images per network call. Per CPU-second, EfficientNet-Lite0 ran ~55 images/s at 4 images
# per call and ~25 at 32 (activations of big batches spill out of cache); measured with one
# thread, interleaved, on the 2-core development machine.
CPU_MICRO_BATCH = 4
# CPU: images per pipeline step (decode of step k+1 overlaps inference of step k).
CPU_CHUNK = 8


class Classifier:
    """A loaded model with its decoder and policy. ``name``: the model; ``device``: "cpu" or
    "cuda"; ``decoder``: the decoder's name (pillow, pillow-simd, dali-cpu, dali-gpu (nvjpeg))."""

    def __init__(
        self, settings: ClassifySettings, network: Network, decoder: Any, threads: int, chunk: int, overlap: bool = True,
        head: ExteriorHead | None = None,
    ) -> None:
        self.settings = settings
        self.head = head  # the exterior head (policy "head"); None: ImageNet policies only
        self.network = network
        self._decoder = decoder
        self.name = network.name
        self.device = network.device.type
        self.decoder = decoder.name
        self.threads = threads
        self.chunk = chunk  # images per pipeline step
        self.overlap = overlap  # decode chunk k+1 while chunk k is inferred
        self._prefetch = ThreadPoolExecutor(1, thread_name_prefix="carcrawl-decode")
        self._labels = imagenet_labels()
        self._ranked = max(5, settings.top_k)

    def describe(self) -> str:
        threads = f", {self.threads} threads" if self.device == "cpu" else ""
        return (
            f"{self.name} ({self.network.source}) on {self.device}, decoder {self.decoder}, "
            f"batch {self.settings.batch_size}{threads}, policy {self._policy_text()}"
        )

    def _policy_text(self) -> str:
        s = self.settings
        if s.policy == "head":
            if self.head is None:
                return (f"mass >= {s.threshold:g} (no exterior head for {self.name}: train one with "
                        f"scripts/train_head.py --model {self.name} --write)")
            return f"head p(exterior) >= {s.threshold:g} ({self.head.trained_on})"
        if s.policy == "topk":
            return f"topk k={s.top_k}"
        if s.policy in ("mass", "mass_raw"):
            return f"{s.policy} >= {s.threshold:g}"
        return s.policy

    # -- public -----------------------------------------------------------------------------
    def classify(self, items: Sequence[Item]) -> list[Verdict]:
        """One Verdict per item, in order. Bad images get ``decode_error``/``too_many_pixels``."""
        return next(self.classify_batches([items]))

    def classify_batches(self, batches: Iterable[Sequence[Item]]) -> Iterator[list[Verdict]]:
        """Classify a stream of batches (one list of verdicts per batch, in order).

        Work is pipelined in chunks of ``self.chunk`` images: chunk k+1 decodes in the prefetch
        thread while chunk k is inferred, across batch boundaries too. On the CPU chunks are small
        (one batch of 32 is already pipelined); on the GPU a chunk is a whole batch."""
        done: list[Verdict] = []
        for verdicts, last in self._pipelined(self._chunks(batches)):
            done += verdicts
            if last:
                yield done
                done = []

    def _chunks(self, batches: Iterable[Sequence[Item]]) -> Iterator[tuple[Sequence[Item], bool]]:
        """(chunk, is the last chunk of its batch); an empty batch is one empty chunk."""
        size = max(1, self.chunk)
        for items in batches:
            if not items:
                yield items, True
            for i in range(0, len(items), size):
                yield items[i : i + size], i + size >= len(items)

    def _pipelined(self, chunks: Iterator[tuple[Sequence[Item], bool]]) -> Iterator[tuple[list[Verdict], bool]]:
        pending: tuple[Sequence[Item], bool, Future[DecodedBatch]] | None = None
        for items, last in chunks:
            blobs = [body for _, body in items]
            plan = self._screen(blobs)  # here, not in the decode thread, which only feeds the decoder
            if not self.overlap:
                yield self._verdicts(items, self._decode_safely(blobs, plan)), last
                continue
            decoding = self._prefetch.submit(self._decode_safely, blobs, plan)
            if pending is not None:
                yield self._verdicts(pending[0], pending[2].result()), pending[1]
            pending = (items, last, decoding)
        if pending is not None:
            yield self._verdicts(pending[0], pending[2].result()), pending[1]

    def probabilities(self, blobs: Sequence[bytes]) -> tuple[DecodedBatch, Any]:
        """Decode and run the network: the batch and its softmax rows (numpy, one per
        ``batch.rows`` entry; None when nothing decoded). For policy evaluation and tests."""
        batch, probs, _ = self.embed(blobs)
        return batch, probs

    def embed(self, blobs: Sequence[bytes]) -> tuple[DecodedBatch, Any, Any]:
        """Like ``probabilities``, plus the float32 embeddings (training the exterior head)."""
        import torch

        batch = self._decode_safely(list(blobs))
        if batch.pixels is None:
            return batch, None, None
        logits, features = self.network.forward(batch.pixels)
        return batch, torch.softmax(logits, dim=1).cpu().numpy(), features.cpu().numpy()

    def close(self) -> None:
        self._prefetch.shutdown(wait=True)

    # -- internals --------------------------------------------------------------------------
    def _screen(self, blobs: list[bytes]) -> Any:
        """The decoder's per-image pre-screen (DALI has one), or None."""
        screen = getattr(self._decoder, "screen", None)
        if screen is None:
            return None
        try:
            return screen(blobs)
        except Exception:  # the decoder screens again itself
            log.exception("decoder %s could not screen a batch of %d", self.decoder, len(blobs))
            return None

    def _decode_safely(self, blobs: list[bytes], plan: Any = None) -> DecodedBatch:
        try:
            return self._decoder.decode(blobs) if plan is None else self._decoder.decode(blobs, plan)
        except Exception:  # a decoder bug must not lose the batch: every image gets a reason
            log.exception("decoder %s failed on a batch of %d", self.decoder, len(blobs))
            return DecodedBatch(None, [], [None] * len(blobs), [DECODE_ERROR] * len(blobs))

    def _verdicts(self, items: Sequence[Item], batch: DecodedBatch) -> list[Verdict]:
        import torch

        s = self.settings
        model = self.name
        verdicts: list[Verdict | None] = [None] * len(items)
        if batch.pixels is not None and batch.rows:
            logits, features = self.network.forward(batch.pixels)
            probs = torch.softmax(logits, dim=1)
            top = torch.topk(probs, self._ranked, dim=1)
            top_scores, top_ids = top.values.cpu().tolist(), top.indices.cpu().tolist()
            prob_rows = probs.cpu().numpy()
            embeddings = features.to(torch.float16).cpu().numpy().astype("<f2") if s.embeddings else None
            use_head = s.policy == "head" and self.head is not None
            head_rows = self.head.probabilities(features.cpu().numpy(), prob_rows) if use_head else None
            policy = "mass" if s.policy == "head" else s.policy  # head policy without a head file
            for j, row in enumerate(batch.rows):
                if head_rows is not None and self.head is not None:
                    decision = decide_head(head_rows[j], self.head.classes, prob_rows[j], s.threshold, top_ids[j])
                else:
                    decision = decide(prob_rows[j], policy, top_k=s.top_k, threshold=s.threshold, ranking=top_ids[j])
                top5 = tuple(
                    Prediction(self._labels[c], round(float(p), 6), int(c))
                    for c, p in zip(top_ids[j][:5], top_scores[j][:5], strict=True)
                )
                size = batch.sizes[row]
                verdicts[row] = Verdict(
                    sha256=items[row][0],
                    keep=decision.keep,
                    reason=decision.reason,
                    top5=top5,
                    width=size[0] if size else None,
                    height=size[1] if size else None,
                    embedding=embeddings[j].tobytes() if embeddings is not None else None,
                    model=model,
                    hashes=batch.hashes[row] if row < len(batch.hashes) else None,
                )
        out: list[Verdict] = []
        for i, v in enumerate(verdicts):
            if v is None:
                size = batch.sizes[i] if i < len(batch.sizes) else None
                v = Verdict(
                    sha256=items[i][0],
                    keep=False,
                    reason=batch.errors[i] if i < len(batch.errors) and batch.errors[i] else DECODE_ERROR,
                    width=size[0] if size else None,
                    height=size[1] if size else None,
                    model=model,
                )
            out.append(v)
        return out


def _select_device(settings: ClassifySettings) -> Any:
    import torch

    kind, index = parse_device(settings.device)
    if kind == "cpu":
        return torch.device("cpu")
    if not torch.cuda.is_available():
        if kind == "auto":
            return torch.device("cpu")
        raise ModelUnavailableError(
            f"device = {settings.device}, but torch sees no CUDA GPU (torch.cuda.is_available() is False; "
            f"torch {torch.__version__}, built for CUDA {torch.version.cuda or 'none'}). "
            "Use --device cpu (or auto), or install a CUDA build of torch that matches the driver."
        )
    if index is None:
        return torch.device("cuda", torch.cuda.current_device())
    count = torch.cuda.device_count()
    if index >= count:
        raise ModelUnavailableError(
            f"device = {settings.device}, but torch sees {count} CUDA GPU{'s' if count != 1 else ''} "
            f"(cuda:0{f' .. cuda:{count - 1}' if count > 1 else ''}); CUDA_VISIBLE_DEVICES renumbers them"
        )
    return torch.device("cuda", index)


def _select_decoder(settings: ClassifySettings, network: Network, threads: int, chunk: int) -> Any:
    from carcrawl.classify.dali import DaliDecoder, dali_works

    on_gpu = network.device.type == "cuda"
    pool = ThreadPoolExecutor(threads, thread_name_prefix="carcrawl-pillow") if threads > 1 else None
    pillow = PillowDecoder(network.geometry, settings.max_pixels, pool)
    if settings.decoder == "pillow" or (settings.decoder == "auto" and not on_gpu):
        return pillow
    if settings.decoder not in ("auto", "dali"):
        raise ConfigError(f"classify.decoder: {settings.decoder!r} is not one of auto, pillow, dali")
    device_id = network.device.index if on_gpu else None
    reason = dali_works(network.geometry, device_id)
    if reason is not None:
        if settings.decoder == "dali":
            raise ConfigError(
                f"classify.decoder = dali, but DALI does not work here ({reason}). Install "
                "nvidia-dali-cuda130 (make install does where a wheel exists) or set decoder = \"pillow\"."
            )
        log.info("DALI unavailable (%s); decoding with %s", reason, pillow.name)
        return pillow
    return DaliDecoder(network.geometry, settings.max_pixels, max(1, chunk), threads, device_id, pillow)


def load_classifier(settings: ClassifySettings) -> Classifier:
    """Load the model and decoder ``settings`` ask for; ModelUnavailableError says what was tried."""
    import torch

    if settings.policy not in POLICIES:
        raise ConfigError(f"classify.policy: {settings.policy!r} is not one of {', '.join(POLICIES)}")
    if settings.batch_size < 1:
        raise ConfigError(f"classify.batch_size must be >= 1, got {settings.batch_size}")
    device = _select_device(settings)
    threads = thread_count(settings)
    if device.type == "cpu":
        # Half the cores decode chunk k+1 while the other half infer chunk k, in micro-batches
        # small enough for the activations to stay in cache (see CPU_MICRO_BATCH).
        decode_threads = max(1, threads // 2)
        torch.set_num_threads(max(1, threads - decode_threads))
        chunk = CPU_CHUNK
    else:
        decode_threads, chunk = threads, settings.batch_size
    network = load_network(settings.model, settings.weights, device)
    if device.type == "cpu":
        network.micro_batch = CPU_MICRO_BATCH
    head = None
    if settings.policy == "head":
        try:
            head = load_head(network.name, network.feature_dim)
        except ValueError as e:
            raise ModelUnavailableError(str(e)) from e
        if head is None:
            log.warning("no exterior head for %s: the ImageNet mass policy decides instead (train one with "
                        "scripts/train_head.py --model %s --write)", network.name, network.name)
    decoder = _select_decoder(settings, network, decode_threads, chunk)
    return Classifier(settings, network, decoder, threads, chunk, head=head)
