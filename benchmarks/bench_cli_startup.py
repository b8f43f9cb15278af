"""Startup time of `flashfit --help` against `python -c "import typer"`, measured side by side.

    .venv/bin/python benchmarks/bench_cli_startup.py [--runs 15]

Runs the two commands alternately (so machine drift hits both) and prints medians and the
median of the per-pair ratios. A ratio near 1 means flashfit adds little beyond typer itself.
"""

from __future__ import annotations

import argparse
import statistics
import subprocess
import sys
import time
from pathlib import Path

FLASHFIT = [sys.executable, "-m", "flashfit_ops.cli", "--help"]
BASELINE = [sys.executable, "-c", "import typer"]


def timed(argv: list[str]) -> float:
    start = time.perf_counter()
    subprocess.run(argv, check=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    return time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=15)
    args = parser.parse_args()
    cwd = Path(__file__).resolve().parent.parent
    timed(FLASHFIT), timed(BASELINE)  # warm the page cache
    pairs = []
    for _ in range(args.runs):
        pairs.append((timed(FLASHFIT), timed(BASELINE)))
    ours = [a for a, _ in pairs]
    base = [b for _, b in pairs]
    ratios = [a / b for a, b in pairs]
    print(f"runs: {args.runs} (cwd {cwd})")
    print(f"flashfit --help        median {statistics.median(ours) * 1000:7.1f} ms  min {min(ours) * 1000:7.1f} ms")
    print(f"python -c 'import typer' median {statistics.median(base) * 1000:5.1f} ms  min {min(base) * 1000:7.1f} ms")
    print(f"ratio flashfit/typer   median {statistics.median(ratios):.2f}  (min {min(ratios):.2f}, max {max(ratios):.2f})")


if __name__ == "__main__":
    main()
