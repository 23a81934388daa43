"""Shared plumbing of the throughput benchmarks: the workload server, measured runs, results.

- :func:`start_sandbox` runs the sandbox web in its own process (so the client's CPU is measured
  honestly, and the server's is reported apart). Every image body is made unique (the URL's path is
  appended after the image's end marker, which decoders ignore), so a content-addressed writer like
  carcrawl cannot skip writes that a per-URL writer like img2dataset has to do.
- :func:`run_measured` runs one command and reports wall time, CPU seconds (user + system, the
  whole process tree, from ``wait4``) and the peak RSS of the whole tree (children included),
  sampled from ``/proc``.
- :func:`carcrawl_config` writes the config.toml a benchmark crawl uses (loopback allowed: the
  SSRF guard refuses 127.0.0.0/8 unless told otherwise).
"""

from __future__ import annotations

import datetime as _dt
import json
import os
import platform
import shutil
import subprocess
import sys
import threading
import time
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))
# the commands a benchmark starts (carcrawl, the ceiling) run on the interpreter the benchmark was
# started with and import this checkout, whatever environment that is (no ./.venv assumed)
os.environ["PYTHONPATH"] = os.pathsep.join(p for p in (str(ROOT), os.environ.get("PYTHONPATH", "")) if p)

BENCH = ROOT / "benchmarks"
WORK = BENCH / "_work"
RESULTS = BENCH / "results"
PYTHON = sys.executable
CARCRAWL_CMD = [PYTHON, "-m", "carcrawl.cli"]
PAGE = os.sysconf("SC_PAGE_SIZE")
TICKS = os.sysconf("SC_CLK_TCK")


def machine() -> dict[str, Any]:
    """What the numbers were measured on."""
    cpu = ""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    mem_gib = os.sysconf("SC_PHYS_PAGES") * PAGE / 2**30
    return {
        "when": _dt.datetime.now(_dt.UTC).strftime("%Y-%m-%dT%H:%M:%SZ"),
        "python": platform.python_version(),
        "cpus": os.cpu_count(),
        "cpu_model": cpu,
        "memory_gib": round(mem_gib, 1),
        "platform": platform.platform(terse=True),
    }


def compile_checkout() -> None:
    """Byte-compile this checkout's ``carcrawl`` package (``__pycache__``, git-ignored), as
    ``pip install`` does for an installed one. Without it, in an environment that sets
    ``PYTHONDONTWRITEBYTECODE``, every carcrawl start compiles its ~40 modules again (~0.15 CPU-s
    a run here), a cost the installed tools it is compared with (img2dataset) never pay."""
    import compileall

    compileall.compile_dir(str(ROOT / "carcrawl"), quiet=1)


def write_result(name: str, data: Mapping[str, Any]) -> Path:
    """``benchmarks/results/<name>.json`` (written whole, then renamed)."""
    RESULTS.mkdir(parents=True, exist_ok=True)
    path = RESULTS / f"{name}.json"
    tmp = path.with_suffix(".json.tmp")
    tmp.write_text(json.dumps({"benchmark": name, "machine": machine(), **data}, indent=2, default=str) + "\n")
    tmp.replace(path)
    return path


# ------------------------------------------------------------------------------------ the server


def start_sandbox(hosts: int = 64, latency_ms: tuple[float, float] = (20.0, 80.0), *, size_mix: bool = True,
                  unique: bool = True, **kwargs: Any) -> Any:
    """A running sandbox process without faults, every image body unique per URL (see
    :func:`carcrawl.bench.start_bench_sandbox`, which ``carcrawl bench`` uses too)."""
    from carcrawl.bench import start_bench_sandbox

    return start_bench_sandbox(hosts, latency_ms, size_mix=size_mix, unique=unique, **kwargs)


def thumb_urls(layout: Any, n: int) -> list[str]:
    """``n`` distinct URLs of the small thumbnail variant (~10 KB), round-robin over the hosts:
    the per-request cost dominates, which is what the scaling curve is about."""
    hosts = len(layout.host_addresses)
    photos = len(layout.photos)
    return [layout.photo_url((k // hosts + k) % photos, "t", f"t{k:x}", k % hosts) for k in range(n)]


def write_urls(path: Path, urls: Iterable[str]) -> int:
    path.parent.mkdir(parents=True, exist_ok=True)
    n = 0
    with path.open("w") as f:
        for u in urls:
            f.write(u + "\n")
            n += 1
    return n


# ------------------------------------------------------------------------------ carcrawl settings


@dataclass(frozen=True)
class CrawlKnobs:
    """The download settings a benchmark crawl runs with (per-host limits stay on)."""

    concurrency: int = 64
    per_host_concurrency: int = 4
    per_host_interval: float = 0.02
    commit_rows: int = 500
    respect_robots: bool = True

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


def carcrawl_config(path: Path, knobs: CrawlKnobs) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(
        '[crawl]\nallow_networks = ["127.0.0.0/8"]\n'
        f"[download]\nconcurrency = {knobs.concurrency}\nper_host_concurrency = {knobs.per_host_concurrency}\n"
        f"per_host_interval = {knobs.per_host_interval}\nrespect_robots = {str(knobs.respect_robots).lower()}\n"
        "max_retries = 0\n"
        f"[store]\ncommit_rows = {knobs.commit_rows}\n"
        "[classify]\nenabled = false\n"
    )
    return path


def carcrawl_fetch_cmd(urls: Path, out: Path, config: Path, *, fresh: bool = True) -> list[str]:
    cmd = [*CARCRAWL_CMD, "fetch", str(urls), "--out", str(out), "--config", str(config), "--no-classify", "--json"]
    return cmd + (["--fresh"] if fresh else [])


# ------------------------------------------------------------------------------ measured runs


def _tree_rss(root: int) -> int:
    """Bytes resident in ``root`` and all its descendants now."""
    children: dict[int, list[int]] = {}
    rss: dict[int, int] = {}
    for entry in os.scandir("/proc"):
        if not entry.name.isdigit():
            continue
        try:
            with open(f"/proc/{entry.name}/stat", "rb") as f:
                fields = f.read().rsplit(b")", 1)[1].split()
        except OSError:
            continue
        pid = int(entry.name)
        children.setdefault(int(fields[1]), []).append(pid)  # ppid
        rss[pid] = int(fields[21]) * PAGE  # rss in pages
    total, stack = 0, [root]
    while stack:
        pid = stack.pop()
        total += rss.get(pid, 0)
        stack.extend(children.get(pid, ()))
    return total


def process_cpu_seconds(pid: int) -> float | None:
    try:
        with open(f"/proc/{pid}/stat") as f:
            fields = f.read().rsplit(")", 1)[1].split()
    except OSError:
        return None
    return (int(fields[11]) + int(fields[12])) / TICKS


@dataclass
class Measured:
    """One measured command."""

    cmd: list[str]
    rc: int
    wall_s: float
    cpu_s: float  # user + system of the whole tree (wait4 on the child)
    peak_rss_mb: float  # peak of the summed RSS of the tree, sampled every ``sample_s``
    max_single_rss_mb: float  # ru_maxrss: the largest single process
    stdout: str = ""
    stderr: str = ""
    extra: dict[str, Any] = field(default_factory=dict)


def run_measured(cmd: Sequence[str], *, env: Mapping[str, str] | None = None, cwd: Path | None = None,
                 timeout: float = 600.0, sample_s: float = 0.1, log_dir: Path | None = None) -> Measured:
    """Run ``cmd`` to the end; wall, CPU and peak RSS of its whole process tree."""
    log_dir = log_dir or WORK / "logs"
    log_dir.mkdir(parents=True, exist_ok=True)
    tag = f"{int(time.time() * 1000)}"
    out_p, err_p = log_dir / f"{tag}.out", log_dir / f"{tag}.err"
    full_env = {**os.environ, **(env or {})}
    peak = 0
    done = threading.Event()
    with out_p.open("wb") as out_f, err_p.open("wb") as err_f:
        start = time.perf_counter()
        proc = subprocess.Popen(list(cmd), stdout=out_f, stderr=err_f, env=full_env, cwd=cwd)

        def sample() -> None:
            nonlocal peak
            while not done.wait(sample_s):
                peak = max(peak, _tree_rss(proc.pid))

        sampler = threading.Thread(target=sample, daemon=True)
        sampler.start()
        deadline = start + timeout
        status, usage = 0, None
        while True:
            pid, status, usage = os.wait4(proc.pid, os.WNOHANG)
            if pid:
                break
            if time.perf_counter() > deadline:
                proc.kill()
                _, status, usage = os.wait4(proc.pid, 0)
                break
            time.sleep(0.02)
        wall = time.perf_counter() - start
        done.set()
        sampler.join()
        proc.returncode = os.waitstatus_to_exitcode(status)
    assert usage is not None
    return Measured(
        cmd=list(cmd),
        rc=proc.returncode,
        wall_s=wall,
        cpu_s=usage.ru_utime + usage.ru_stime,
        peak_rss_mb=peak / 2**20,
        max_single_rss_mb=usage.ru_maxrss / 1024,
        stdout=out_p.read_text(errors="replace"),
        stderr=err_p.read_text(errors="replace"),
    )


def files_under(path: Path, suffixes: tuple[str, ...] = (".jpg", ".jpeg", ".png", ".webp", ".gif")) -> tuple[int, int]:
    """(image files, their bytes) under ``path``; temp folders are skipped."""
    n = size = 0
    for dirpath, dirnames, filenames in os.walk(path):
        dirnames[:] = [d for d in dirnames if not d.startswith((".", "_tmp"))]
        for name in filenames:
            if name.endswith(suffixes):
                n += 1
                size += os.stat(os.path.join(dirpath, name)).st_size
    return n, size


def remove(path: Path) -> None:
    shutil.rmtree(path, ignore_errors=True)


def carcrawl_json(stdout: str) -> dict[str, Any]:
    """The ``--json`` summary carcrawl prints as its last line."""
    for line in reversed(stdout.strip().splitlines()):
        line = line.strip()
        if line.startswith("{"):
            try:
                return json.loads(line)
            except ValueError:
                continue
    return {}


def disk_write_speed(folder: Path, nbytes: int) -> float:
    """MB/s of a plain buffered write of ``nbytes`` (what an export does: no fsync)."""
    probe = folder / "write-probe.bin"
    block = os.urandom(1 << 20)
    t = time.perf_counter()
    with open(probe, "wb") as f:
        for _ in range(max(1, nbytes >> 20)):
            f.write(block)
    dt = time.perf_counter() - t
    probe.unlink()
    return (max(1, nbytes >> 20)) / dt


def fmt_table(headers: Sequence[str], rows: Iterable[Sequence[Any]]) -> str:
    """A Markdown table (it prints fine on a terminal and pastes into RESULTS.md as is)."""
    def cell(v: Any) -> str:
        if isinstance(v, float):
            return f"{v:,.2f}" if abs(v) < 100 else f"{v:,.0f}"
        if isinstance(v, int):
            return f"{v:,}"
        return str(v)

    lines = ["| " + " | ".join(headers) + " |", "|" + "---|" * len(headers)]
    lines += ["| " + " | ".join(cell(v) for v in r) + " |" for r in rows]
    return "\n".join(lines)
