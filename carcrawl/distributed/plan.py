"""Where shards live and which shard a URL belongs to.

The shard of a URL is a stable hash (BLAKE2b, not Python's salted ``hash``) of its politeness
key (:func:`carcrawl.net.host_key`), so every URL of a host lands in the same shard, in every
process and on every machine, and that shard's pipeline is the only one that talks to the host.
"""

from __future__ import annotations

import dataclasses
import hashlib
from pathlib import Path

from carcrawl.config import Settings
from carcrawl.net import host_key
from carcrawl.store import shards

STOP_FILE = "STOP"  # written by the driver: "drain" (first Ctrl-C) or "now" (second)


def shard_of(url: str, shards: int) -> int:
    """The shard (0 .. shards-1) that owns ``url``'s host."""
    digest = hashlib.blake2b(host_key(url).encode("utf-8", "surrogatepass"), digest_size=8).digest()
    return int.from_bytes(digest, "big") % shards


def shards_root(settings: Settings) -> Path:
    return shards.shards_root(settings.checkpoint_path)


def shard_dir(settings: Settings, k: int) -> Path:
    return shards_root(settings) / shards.shard_name(k)


def shard_checkpoint(settings: Settings, k: int) -> Path:
    return shard_dir(settings, k) / "checkpoint.sqlite"


def stop_file(settings: Settings) -> Path:
    return shards_root(settings) / STOP_FILE


def shard_settings(settings: Settings, k: int, threads: int) -> Settings:
    """The settings one shard's pipeline runs with: its own folder and checkpoint, no search
    sources (the driver searched), and the classifier's CPU threads shared out between the
    workers of a machine (``threads`` > 0) instead of each sizing itself to the whole machine."""
    crawl = dataclasses.replace(settings.crawl, out=str(shard_dir(settings, k)), checkpoint="", sources=["urls"])
    classify = settings.classify
    if classify.threads == 0 and threads > 0:
        classify = dataclasses.replace(classify, threads=threads)
    return dataclasses.replace(settings, crawl=crawl, classify=classify)
