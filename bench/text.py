"""bench/text: the DP LSTM on Debian's fortunes (`--preset fortunes-lstm`) at per-client epsilon 3, 8 and without DP,
split by author (natural) and IID, side by side. Each leg is one `dpfl simulate` process; prints and writes JSON.

    python bench/text.py [--partitions natural,iid] [--json bench/results/text.json]
"""

from __future__ import annotations

import argparse
import json
import platform
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
LEGS = {"ε = 3": ["--target-epsilon", "3"], "ε = 8": ["--target-epsilon", "8"], "non-private": ["--dp", "false"]}
RUN_NAMES = {"ε = 3": "eps3", "ε = 8": "eps8", "non-private": "nonprivate"}  # run names are ASCII


def run_leg(partition: str, name: str, out: Path) -> dict[str, object]:
    run_name = f"{partition}-{RUN_NAMES[name]}"
    cmd = [sys.executable, "-m", "dpfl.simulations.cli.main", "simulate", "--preset", "fortunes-lstm",
           "--partition", partition, *LEGS[name], "--run-dir", str(out), "--run-name", run_name]
    t0 = time.perf_counter()
    proc = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True)
    wall = time.perf_counter() - t0
    summary = json.loads((out / run_name / "summary.json").read_text()) if (out / run_name / "summary.json").exists() \
        else {}
    row = {"partition": partition, "leg": name, "exit_code": proc.returncode, "wall_seconds": round(wall, 1),
           "accuracy": summary.get("final_accuracy"), "epsilon_max": summary.get("epsilon_max"),
           "delta": summary.get("delta"), "command": "dpfl " + " ".join(cmd[3:-4])}
    print(f"{partition:8s} {name:12s} accuracy {row['accuracy']}  ε {row['epsilon_max']}  {wall:.0f} s", flush=True)
    return row


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--partitions", default="natural,iid")
    parser.add_argument("--json", default=str(ROOT / "bench" / "results" / "text.json"))
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        rows = [run_leg(p, name, Path(tmp)) for p in args.partitions.split(",") for name in LEGS]
    Path(args.json).parent.mkdir(parents=True, exist_ok=True)
    Path(args.json).write_text(json.dumps({"machine": platform.platform(), "results": rows}, indent=1))
    return 0 if all(r["exit_code"] == 0 for r in rows) else 1


if __name__ == "__main__":
    sys.exit(main())
