"""carcrawl on one event loop vs ``--workers N`` (Ray), on two workloads, alternating in one run.

- ``throughput``: the vs_img2dataset workload (size mix, mean ~460 KB, unique bodies, 64 hosts,
  20-80 ms, per host 4 / 20 ms): politeness does not bind, so more workers can only help until
  the cores, the disk or the server run out.
- ``polite``: few hosts and a realistic interval (8 hosts, per host 2 transfers and 0.25 s between
  request starts: a budget of 8 / 0.25 = 32 requests/s for the whole crawl). Politeness binds, so
  ``--workers`` must not go faster (each host lives in one shard); img2dataset, which has no
  per-host limits, is run beside it to show what impolite costs the hosts.

For each: the plain single process, ``--workers 1`` and ``--workers 2`` (more needs more cores
than this 2-core box has), each a fresh process measured from outside: images/s over the whole
command (Ray's start-up included) and over the shard phase alone (what N workers scale), CPU
seconds per 1 000 images of the whole tree (Ray's own processes included), and the sandbox
server's CPU seconds during the run (it shares the cores).

    python benchmarks/workers.py                      # both workloads, 2 rounds (~6 min)
    python benchmarks/workers.py --workload polite --rounds 1
"""

from __future__ import annotations

import argparse
import statistics
import sys
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

from _common import (  # noqa: E402
    WORK,
    CrawlKnobs,
    carcrawl_config,
    carcrawl_fetch_cmd,
    carcrawl_json,
    files_under,
    fmt_table,
    remove,
    run_measured,
    start_sandbox,
    write_result,
    write_urls,
)

WORKLOADS: dict[str, dict[str, Any]] = {
    "throughput": {"urls": 4000, "hosts": 64, "latency_ms": (20.0, 80.0), "knobs": CrawlKnobs(64, 4, 0.02)},
    "polite": {"urls": 640, "hosts": 8, "latency_ms": (20.0, 80.0), "knobs": CrawlKnobs(64, 2, 0.25)},
}
SETTINGS = {"single": [], "workers=1": ["--workers", "1"], "workers=2": ["--workers", "2"]}


def run_one(setting: str, urls: Path, sandbox: Any, knobs: CrawlKnobs, out_root: Path) -> dict[str, Any]:
    out = out_root / f"out-{setting}"
    remove(out)
    cfg = carcrawl_config(out_root / "carcrawl.toml", knobs)
    if setting == "img2dataset":
        from vs_img2dataset import I2D_ENV, i2d_cmd

        n = sum(1 for _ in urls.open())
        cmd, env = i2d_cmd(urls, out, n, 256), I2D_ENV
    else:
        cmd, env = carcrawl_fetch_cmd(urls, out, cfg) + SETTINGS[setting], {}
    server0 = sandbox.cpu_seconds_now() or 0.0
    m = run_measured(cmd, env=env, timeout=590)
    server = (sandbox.cpu_seconds_now() or 0.0) - server0
    files, nbytes = files_under(out)
    stats = carcrawl_json(m.stdout).get("stats", {}) if setting != "img2dataset" else {}
    ok = int(stats.get("counts", {}).get("fetched", files)) if stats else files
    phase = float(stats.get("shard_phase_s") or 0.0)
    remove(out)
    return {
        "setting": setting, "rc": m.rc, "ok": ok, "wall_s": m.wall_s, "images_per_s": ok / m.wall_s,
        "phase_s": phase or None, "phase_images_per_s": ok / phase if phase else None,
        "ray_start_s": stats.get("ray_start_s"), "cpu_s": m.cpu_s, "cpu_s_per_1000": 1000 * m.cpu_s / max(ok, 1),
        "mb": nbytes / 1e6, "server_cpu_s": server, "peak_rss_mb": m.peak_rss_mb,
        **({"stderr_tail": m.stderr[-1500:]} if m.rc else {}),
    }


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--workload", choices=[*WORKLOADS, "all"], default="all")
    p.add_argument("--rounds", type=int, default=2)
    p.add_argument("--urls", type=int, default=0, help="override the workload's URL count")
    p.add_argument("--out-root", type=Path, default=WORK / "workers")
    p.add_argument("--img2dataset", action="store_true", help="also run img2dataset on the polite workload")
    a = p.parse_args()
    names = list(WORKLOADS) if a.workload == "all" else [a.workload]
    report: dict[str, Any] = {"command": " ".join(["python", "benchmarks/workers.py", *sys.argv[1:]])}
    for name in names:
        w = WORKLOADS[name]
        n_urls = a.urls or w["urls"]
        settings = list(SETTINGS) + (["img2dataset"] if a.img2dataset and name == "polite" else [])
        if "img2dataset" in settings:
            from vs_img2dataset import i2d_available

            if i2d_available():
                settings.remove("img2dataset")
        sandbox = start_sandbox(hosts=w["hosts"], latency_ms=w["latency_ms"], size_mix=True)
        runs = []
        try:
            urls = a.out_root / f"urls-{name}.txt"
            n = write_urls(urls, sandbox.layout.image_urls(n_urls, size_mix=True))
            for r in range(a.rounds):
                for s in settings:
                    res = run_one(s, urls, sandbox, w["knobs"], a.out_root)
                    res["round"] = r
                    runs.append(res)
                    print(f"{name} round {r} {s:<11} {res['ok']:>5} ok {res['images_per_s']:7.1f} img/s"
                          f" (shard phase {res['phase_images_per_s'] or 0:7.1f}) {res['cpu_s_per_1000']:5.2f} cpu-s/1k"
                          f" server {res['server_cpu_s']:5.1f} cpu-s rc={res['rc']}", flush=True)
        finally:
            sandbox.stop()
        rows = []
        for s in settings:
            rs = [x for x in runs if x["setting"] == s]
            med = {k: statistics.median(x[k] for x in rs) for k in ("images_per_s", "cpu_s_per_1000", "server_cpu_s", "ok")}
            phases = [x["phase_images_per_s"] for x in rs if x["phase_images_per_s"]]
            med["phase_images_per_s"] = statistics.median(phases) if phases else None
            rows.append({"setting": s, **med})
        k = w["knobs"]
        print(f"\n{name}: {n} URLs, {w['hosts']} hosts, per host {k.per_host_concurrency} / {k.per_host_interval} s"
              f" (budget {w['hosts'] / k.per_host_interval:.0f} requests/s), medians of {a.rounds} rounds")
        print(fmt_table(["setting", "images/s (command)", "images/s (shard phase)", "CPU-s / 1000", "server CPU-s", "ok"],
                        [[r["setting"], r["images_per_s"], r["phase_images_per_s"] or "-", r["cpu_s_per_1000"],
                          r["server_cpu_s"], int(r["ok"])] for r in rows]))
        by = {r["setting"]: r for r in rows}
        if by.get("workers=1", {}).get("phase_images_per_s") and by.get("workers=2", {}).get("phase_images_per_s"):
            scale = by["workers=2"]["phase_images_per_s"] / by["workers=1"]["phase_images_per_s"]
            print(f"workers=2 / workers=1 (shard phase): {scale:.2f}x (target >= 1.6x until cores/server/disk run out)")
            report.setdefault("scale_2_over_1", {})[name] = scale
        report[name] = {"urls": n, "hosts": w["hosts"], "knobs": k.as_dict(), "runs": runs, "summary": rows,
                        "budget_requests_per_s": w["hosts"] / k.per_host_interval}
    write_result("workers", report)


if __name__ == "__main__":
    main()
