"""bench/first_run: how long a newcomer's first command takes, `dpfl simulate --preset quick`, as they run it.

Each repetition is a fresh `dpfl` process from the shell's point of view (interpreter start, imports, data,
calibration, training, the privacy report), timed from launch to exit, in a fresh run directory. The target
(issue 16) is 30 s on this 2-core machine; the script prints every repetition and the median, checks the
report exists and that the run's epsilon is below its target, and writes JSON.

    python bench/first_run.py [--reps 3] [--json bench/results/first_run.json]
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from dpfl.privacy.rundata import read_summary

ROOT = Path(__file__).resolve().parent.parent
TARGET_SECONDS = 30.0


def one_run(out: Path) -> dict[str, object]:
    t0 = time.perf_counter()
    proc = subprocess.run([sys.executable, "-m", "dpfl.simulations.cli.main", "simulate", "--preset", "quick",
                           "--run-dir", str(out), "--run-name", "quick"], cwd=ROOT, capture_output=True, text=True)
    wall = time.perf_counter() - t0
    summary = read_summary(out / "quick") or {}
    return {"exit_code": proc.returncode, "wall_seconds": wall, "epsilon_max": summary.get("epsilon_max"),
            "final_accuracy": summary.get("final_accuracy"),
            "report": (out / "quick" / "report" / "report.html").is_file(),
            "error_tail": "" if proc.returncode == 0 else proc.stdout[-1500:] + proc.stderr[-1500:]}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--reps", type=int, default=3)
    parser.add_argument("--json", default=str(ROOT / "bench" / "results" / "first_run.json"))
    args = parser.parse_args()
    runs = []
    for rep in range(args.reps):
        with tempfile.TemporaryDirectory(prefix="dpfl-first-run-") as tmp:
            run = one_run(Path(tmp))
        runs.append(run)
        print(f"run {rep + 1}/{args.reps}: {run['wall_seconds']:.1f} s wall, exit {run['exit_code']}, "
              f"accuracy {run['final_accuracy']}, ε {run['epsilon_max']}, report {run['report']}")
        if run["exit_code"] != 0:
            print(run["error_tail"], file=sys.stderr)
            return 1
    median = statistics.median(float(r["wall_seconds"]) for r in runs)
    ok = median <= TARGET_SECONDS and all(r["report"] for r in runs)
    print(f"median {median:.1f} s (target <= {TARGET_SECONDS:.0f} s): {'met' if ok else 'MISSED'}")
    result = {"command": "dpfl simulate --preset quick", "runs": runs, "median_wall_seconds": median,
              "target_seconds": TARGET_SECONDS, "met": ok, "machine": platform.platform(),
              "python": platform.python_version()}
    Path(args.json).parent.mkdir(parents=True, exist_ok=True)
    Path(args.json).write_text(json.dumps(result, indent=2) + "\n")
    print(f"wrote {args.json}")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
