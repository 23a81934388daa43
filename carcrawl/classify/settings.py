"""What the classify package needs to know, independent of the config file's layout."""

from __future__ import annotations

import os
from dataclasses import dataclass

from carcrawl.errors import ConfigError


@dataclass(frozen=True, slots=True)
class ClassifySettings:
    """Settings of one classifier (see ``[classify]`` in config.toml for the meaning of each)."""

    model: str = "auto"  # auto | efficientnet_lite0 | resnet50
    weights: str | None = None  # local state_dict file for the model
    device: str = "auto"  # auto | cpu | cuda | cuda:N
    decoder: str = "auto"  # auto | pillow | dali
    batch_size: int = 32
    threads: int = 0  # 0 = sized to the machine
    policy: str = "head"  # head | mass | mass_raw | topk | top1
    top_k: int = 4
    threshold: float = 0.5
    max_pixels: int = 50_000_000
    embeddings: bool = True


def parse_device(text: str) -> tuple[str, int | None]:
    """``auto``, ``cpu``, ``cuda`` or ``cuda:N`` -> (kind, GPU index or None); else ConfigError."""
    kind, sep, index = text.strip().lower().partition(":")
    if kind in ("auto", "cpu", "cuda") and not sep:
        return kind, None
    if kind == "cuda" and index.isdigit():
        return "cuda", int(index)
    raise ConfigError(f"classify.device: {text!r} is not one of auto, cpu, cuda, cuda:N (N = a GPU index)")


def cpu_count() -> int:
    """CPUs this process may run on (cgroup/affinity aware where the OS tells)."""
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except AttributeError:  # not on Linux
        return max(1, os.cpu_count() or 1)


def thread_count(settings: ClassifySettings) -> int:
    return settings.threads if settings.threads > 0 else cpu_count()
