"""Beyond one event loop: a crawl split into shards that Ray runs on several processes or machines.

Each shard is today's single-process pipeline with its own checkpoint under ``OUT/shards/NNN/``;
candidates are partitioned by host, so each host lives in exactly one shard and per-host
politeness holds across all workers by construction. Search runs once, in the driver, so each
engine's token bucket is global. Finished shards are merged into the main checkpoint, which stays
the one dataset that ``status``, ``export``, ``report``, ``review`` and ``refine`` read.

- ``plan``: which shard a URL belongs to, where shards live, the settings a shard runs with;
- ``worker``: runs one shard inside a Ray task (the pipeline as a black box, stop by file);
- ``merge``: folds a finished shard's files and rows into the main output folder;
- ``driver``: the command's side: search pass, split, Ray scheduling, signals, progress, summary.

Ray is an optional extra (``pip install 'carcrawl[ray]'``); nothing here imports it at module
level, and the single-process default never imports this package.
"""
