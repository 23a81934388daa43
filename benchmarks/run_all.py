"""``make bench``: the throughput benchmarks one after the other, each bounded by a timeout.

    python benchmarks/run_all.py            # ~15 min on a 2-core box
    python benchmarks/run_all.py --quick    # ~5 min: smaller sizes, one round

Each benchmark prints its own table and writes ``benchmarks/results/<name>.json``; the write-up is
``benchmarks/RESULTS.md``. img2dataset is installed into ``benchmarks/_work/i2d-venv`` and the plot
and profiler tools into ``benchmarks/_work/tools-venv`` on first use (never project dependencies);
when pip cannot reach a registry, those parts say so and the rest still runs.
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import time
from pathlib import Path

BENCH = Path(__file__).resolve().parent
WORK = BENCH / "_work"


def ensure_venv(name: str, packages: list[str]) -> bool:
    """Create ``_work/<name>`` with ``packages`` once; False (with the reason printed) on failure."""
    venv = WORK / name
    stamp = venv / ".installed"
    if stamp.exists():
        return True
    print(f"installing {' '.join(packages)} into {venv.relative_to(BENCH.parent)} ...", flush=True)
    try:
        subprocess.run(["python3", "-m", "venv", str(venv)], check=True)
        subprocess.run([str(venv / "bin" / "pip"), "install", "-q", *packages], check=True, timeout=900)
    except (subprocess.CalledProcessError, subprocess.TimeoutExpired, OSError) as e:
        print(f"could not install {packages}: {e}", flush=True)
        return False
    stamp.touch()
    return True


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--quick", action="store_true")
    a = p.parse_args()
    WORK.mkdir(parents=True, exist_ok=True)
    if (WORK / "i2d-venv" / "bin" / "img2dataset").exists():
        (WORK / "i2d-venv" / ".installed").touch()
    if (WORK / "tools-venv" / "bin" / "py-spy").exists():
        (WORK / "tools-venv" / ".installed").touch()
    ensure_venv("i2d-venv", ["img2dataset"])
    ensure_venv("tools-venv", ["matplotlib", "py-spy"])
    py = sys.executable
    plan = [
        ("stage costs", [py, "benchmarks/stage_costs.py"], 300),
        ("carcrawl vs img2dataset vs ceiling",
         [py, "benchmarks/vs_img2dataset.py", "--urls", "2000" if a.quick else "4000",
          "--rounds", "1" if a.quick else "2"], 590),
        ("memory", [py, "benchmarks/memory.py", *(["--sizes", "1000", "5000"] if a.quick else [])], 590),
        ("scaling curve", [py, "benchmarks/scaling.py", *(["--sizes", "1000", "10000"] if a.quick else [])], 590),
    ]
    failed = []
    for title, cmd, timeout in plan:
        print(f"\n=== {title}: {' '.join(cmd[1:])}", flush=True)
        start = time.perf_counter()
        try:
            rc = subprocess.run(cmd, cwd=BENCH.parent, timeout=timeout).returncode
        except subprocess.TimeoutExpired:
            rc = 124
        print(f"=== {title}: rc={rc} in {time.perf_counter() - start:.0f}s", flush=True)
        if rc != 0:
            failed.append(title)
    if failed:
        raise SystemExit(f"failed: {', '.join(failed)}")


if __name__ == "__main__":
    main()
