"""Benchmark: the Fashion-MNIST privacy/utility sweep (sweeps/fashion-mnist-epsilon.toml) with --jobs 2.

Prints the wall time and the results table, and writes bench/results/sweep.json. The full sweep is
6 points of 5 rounds (about 10-15 minutes on 2 cores); ``--reduced`` keeps 1 round and epsilon {1, 8}
(3 points, a few minutes) for a quick check.

    python bench/sweep.py            # full
    python bench/sweep.py --reduced  # quick
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import sys
import time
from dataclasses import replace
from pathlib import Path

from rich.console import Console

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from dpfl.simulations.cli.sweep import RichSweepProgress, print_results  # noqa: E402
from dpfl.simulations.sweeps.runner import run_sweep  # noqa: E402
from dpfl.simulations.sweeps.spec import axes, load_spec  # noqa: E402

FASHION_MNIST = Path("/usr/share/datasets/fashion-mnist")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--config", default=str(ROOT / "sweeps" / "fashion-mnist-epsilon.toml"))
    parser.add_argument("--jobs", type=int, default=2)
    parser.add_argument("--reduced", action="store_true", help="1 round, target epsilon {1, 8}: 3 points")
    parser.add_argument("--out", default=str(ROOT / "bench" / "results" / "sweep-run"))
    parser.add_argument("--results", default=str(ROOT / "bench" / "results" / "sweep.json"))
    args = parser.parse_args(argv)
    console = Console(highlight=False)
    results = Path(args.results)
    results.parent.mkdir(parents=True, exist_ok=True)
    if not FASHION_MNIST.is_dir():
        console.print(f"skipped: Fashion-MNIST is not installed at {FASHION_MNIST} (apt install "
                      "dataset-fashion-mnist)")
        results.write_text(json.dumps({"skipped": f"no dataset at {FASHION_MNIST}"}, indent=2) + "\n")
        return 0
    spec = load_spec(args.config)
    if args.reduced:
        spec = replace(spec, base={**spec.base, "num-server-rounds": 1},
                       grid={**spec.grid, "target-epsilon": [1.0, 8.0]})
    out = Path(args.out)
    if out.exists():
        shutil.rmtree(out)  # a benchmark measures a cold sweep, never a resumed one
    console.print(f"[bold]bench/sweep.py[/] · {Path(args.config).name}{' (reduced)' if args.reduced else ''} · "
                  f"jobs {args.jobs} · {os.cpu_count()} cores")
    t0 = time.perf_counter()
    outcome = run_sweep(spec, out, jobs=args.jobs, progress=RichSweepProgress(console))
    wall = time.perf_counter() - t0
    print_results(console, outcome, axes(spec))
    console.print(f"[bold]wall time[/] {wall:.1f} s for {len(outcome.rows)} points with --jobs {args.jobs}")
    keep = ("id", "kind", "status", "params", "final_accuracy", "best_accuracy", "epsilon", "delta",
            "noise_multiplier", "rounds_completed", "wall_seconds", "error")
    config = Path(args.config).resolve()
    results.write_text(json.dumps({
        "benchmark": "sweep", "config": str(config.relative_to(ROOT) if config.is_relative_to(ROOT) else config),
        "reduced": args.reduced, "jobs": args.jobs, "cores": os.cpu_count(),
        "machine": platform.machine(), "python": platform.python_version(), "wall_seconds": wall,
        "points": [{k: r[k] for k in keep} for r in outcome.rows],
        "tuning": outcome.tuning.to_dict() if outcome.tuning else None,
        "sweep_dir": str(out),
    }, indent=2, default=str) + "\n")
    console.print(f"wrote {results}")
    return 0 if outcome.failed == 0 else 1


if __name__ == "__main__":
    sys.exit(main())
