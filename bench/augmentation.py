"""bench/augmentation: what augmentation multiplicity (`--augmentations K`) gains on Fashion-MNIST at per-client
epsilon = 3, K = 1 against K = 4, over seeds, each run a `dpfl simulate` process; the ledgers are checked equal.

    python bench/augmentation.py [--ks 1,4] [--seeds 1,2,3] [--rounds 10] [--json bench/results/augmentation.json]
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

ROOT = Path(__file__).resolve().parent.parent


def run(k: int, seed: int, rounds: int, out: Path) -> dict[str, object]:
    name = f"k{k}-s{seed}"
    cmd = [sys.executable, "-m", "dpfl.simulations.cli.main", "simulate", "--dataset", "fashion-mnist",
           "--num-clients", "10", "--model", "cnn", "--num-server-rounds", str(rounds), "--target-epsilon", "3",
           "--augmentations", str(k), "--seed", str(seed), "--run-dir", str(out), "--run-name", name]
    t0 = time.perf_counter()
    proc = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True)
    wall = time.perf_counter() - t0
    summary = json.loads((out / name / "summary.json").read_text())
    ledger = [{f: json.loads(line)[f] for f in ("noise_multiplier", "sample_rate", "steps", "epsilon")}
              for line in (out / name / "ledgers" / "client-000.jsonl").read_text().splitlines()]
    print(f"K = {k} seed {seed}: accuracy {summary['final_accuracy']:.4f}, ε {summary['epsilon_max']:.3f}, "
          f"{wall:.0f} s", flush=True)
    return {"k": k, "seed": seed, "exit_code": proc.returncode, "accuracy": summary["final_accuracy"],
            "epsilon_max": summary["epsilon_max"], "wall_seconds": round(wall, 1), "ledger": ledger,
            "command": "dpfl " + " ".join(cmd[3:-4])}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--ks", default="1,4")
    parser.add_argument("--seeds", default="1,2,3")
    parser.add_argument("--rounds", type=int, default=10)
    parser.add_argument("--json", default=str(ROOT / "bench" / "results" / "augmentation.json"))
    args = parser.parse_args()
    ks, seeds = [int(v) for v in args.ks.split(",")], [int(v) for v in args.seeds.split(",")]
    with tempfile.TemporaryDirectory() as tmp:
        rows = [run(k, s, args.rounds, Path(tmp)) for s in seeds for k in ks]
    summary = {}
    for k in ks:
        accs = [float(r["accuracy"]) for r in rows if r["k"] == k]
        summary[k] = {"mean": statistics.mean(accs), "stdev": statistics.stdev(accs) if len(accs) > 1 else 0.0}
        print(f"K = {k}: {100 * summary[k]['mean']:.2f} ± {100 * summary[k]['stdev']:.2f} % over seeds {seeds}")
    same = all(r["ledger"] == next(o["ledger"] for o in rows if o["seed"] == r["seed"] and o["k"] == ks[0])
               for r in rows)
    print(f"ledgers identical across K for every seed: {same}")
    Path(args.json).parent.mkdir(parents=True, exist_ok=True)
    Path(args.json).write_text(json.dumps({"machine": platform.platform(), "summary": summary,
                                           "ledgers_identical": same, "runs": rows}, indent=1))
    return 0 if same and all(r["exit_code"] == 0 for r in rows) else 1


if __name__ == "__main__":
    sys.exit(main())
