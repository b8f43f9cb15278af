"""`flashfit doctor` on a healthy deployment: wall time of a full run (goal: under 5 s).

Deploys a real stack (server image, nginx image, the deploy engine) in a temp folder with the
integration tests' DoctorStack, runs doctor several times, prints the wall times and the slowest
checks, and removes the stack. No timed assertions: it prints.

    .venv/bin/python benchmarks/bench_doctor.py [runs]
"""

from __future__ import annotations

import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

GOAL_S = 5.0


def main() -> int:
    runs = int(sys.argv[1]) if len(sys.argv) > 1 else 5
    from flashfit_ops.doctor.api import run_doctor
    from flashfit_ops.doctor.result import counts
    from tests.integration.ops.test_doctor_live import DoctorStack

    with tempfile.TemporaryDirectory(prefix="bench-doctor-") as folder:
        stack = DoctorStack(Path(folder))
        try:
            started = time.perf_counter()
            stack.up()
            stack.ingest()
            stack.backup()
            print(f"stack up in {time.perf_counter() - started:.1f}s (project {stack.project}, image tag {stack.tag})")
            walls = []
            per_check: dict[str, list[float]] = {}
            for _ in range(runs):
                results, wall = run_doctor(stack.config_path)
                walls.append(wall)
                for r in results:
                    per_check.setdefault(r.check, []).append(r.duration_ms)
                tally = counts(results)
            print(f"in-process runs: {runs}; last: {tally}")
            print(f"doctor wall time (in process): median {statistics.median(walls):.2f}s, "
                  f"min {min(walls):.2f}s, max {max(walls):.2f}s; goal under {GOAL_S:.0f}s "
                  f"-> {statistics.median(walls) / GOAL_S:.2f} of the goal")
            slowest = sorted(per_check.items(), key=lambda kv: -statistics.median(kv[1]))[:5]
            print("slowest checks (median ms): " + ", ".join(f"{n} {statistics.median(v):.0f}" for n, v in slowest))
            cli = [str(Path(sys.executable).parent / "flashfit"), "doctor", "-c", str(stack.config_path)]
            cli_walls = []
            for _ in range(3):
                t = time.perf_counter()
                done = subprocess.run(cli, capture_output=True, text=True)
                cli_walls.append(time.perf_counter() - t)
            print(f"`flashfit doctor` command (process start included): median {statistics.median(cli_walls):.2f}s, "
                  f"exit {done.returncode}")
            print(done.stdout.rstrip().splitlines()[-1])
        finally:
            stack.close()
    return 0


if __name__ == "__main__":
    sys.exit(main())
