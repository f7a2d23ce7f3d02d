"""Run one dpfl job the way a user would (a fresh `dpfl` process) and read its figures from the run directory.

Shared by the benchmarks that compare engines or recipes (bench/deployment.py, bench/accuracy.py).
"""

from __future__ import annotations

import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

from dpfl.privacy.rundata import read_metrics, read_summary

ROOT = Path(__file__).resolve().parent.parent  # the checkout: bench/ lives in it
ENGINES = ("inprocess", "launch", "ray")


def engine_command(engine: str, flags: list[str]) -> list[str]:
    base = [sys.executable, "-m", "dpfl.simulations.cli.main"]
    if engine == "launch":
        return [*base, "launch", *flags]
    return [*base, "simulate", "--engine", engine, *flags]


def run_engine(engine: str, job: dict[str, Any], out_dir: Path, name: str = "") -> dict[str, Any]:
    """One run as a user would start it (a fresh `dpfl` process); timings from its run directory."""
    values = {**job, "run-dir": out_dir, "run-name": name or engine}
    flags = [f"--{k}={str(v).lower() if isinstance(v, bool) else v}" for k, v in values.items()]
    t0 = time.perf_counter()
    proc = subprocess.run(engine_command(engine, flags), cwd=ROOT, capture_output=True, text=True)
    wall = time.perf_counter() - t0
    run_path = out_dir / (name or engine)
    rows = read_metrics(run_path)  # [] when the run wrote no round; torn lines skipped
    summary = read_summary(run_path) or {}
    seconds = [float(r["seconds"]) for r in rows if isinstance(r.get("seconds"), int | float)]
    return {
        "engine": engine, "exit_code": proc.returncode, "wall_seconds": wall,
        "round_seconds": seconds,
        "mean_round_seconds": statistics.fmean(seconds) if seconds else None,
        "mean_round_seconds_after_first": statistics.fmean(seconds[1:]) if len(seconds) > 1 else None,
        "server_run_seconds": summary.get("wall_seconds"),
        "final_accuracy": summary.get("final_accuracy"), "epsilon_max": summary.get("epsilon_max"),
        "run_path": str(run_path),
        "error_tail": "" if proc.returncode == 0 else (proc.stdout[-2000:] + proc.stderr[-2000:]),
    }
