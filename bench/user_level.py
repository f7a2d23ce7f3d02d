"""bench/user_level: user-level DP for a cross-device federation, side by side in one run.

Fashion-MNIST over N clients (Dirichlet(0.5) label split; 1,000 clients hold about 60 records each), an
expected 100 clients per round, user-level epsilon 3 at delta 1e-5 after R rounds, the same tanh CNN and local
recipe (plain SGD) in every leg:

- **dpfl**: ``dpfl simulate --privacy-unit client`` (Poisson cohorts, client-side clipping, the server's noise,
  sigma calibrated with amplification by sampling; server momentum is post-processing);
- **flower**: Flower 1.42's ``DifferentialPrivacyServerSideFixedClipping`` in its accounted mode (RDP, no
  sampling amplification, uniform weights), sigma the smallest its own accountant accepts for the same epsilon,
  run on dpfl's in-process grid (bench/peers/flower_central_dp) so only the mechanism differs;
- **non-private**: dpfl's FedAvg with dp = false, the same cohorts' size, the same recipe.

dpfl's legs use server learning rate 0.5 with momentum 0.9 and an EMA (0.9) of the global model, all
post-processing of the noised aggregate (free under DP); Flower's leg is its DP wrapper around stock FedAvg,
as its documentation shows it.

Every epsilon is recomputed with dp-accounting: dpfl's from ``ledgers/server.jsonl`` (PLD of the ledger's own
Poisson-subsampled Gaussians), Flower's as R compositions of its Gaussian (no sampling, PLD).

    python bench/user_level.py [--clients 1000] [--rounds 100] [--legs dpfl,flower,nonprivate]
                               [--json bench/results/user_level.json]
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
from typing import Any

import dp_accounting

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "bench" / "peers" / "flower_central_dp"))

from central_dp_app import flower_epsilon, noise_multiplier_for  # noqa: E402

from dpfl.privacy.rundata import read_metrics, read_summary  # noqa: E402

TARGET_EPSILON, DELTA, COHORT = 3.0, 1e-5, 100
RECIPE = {"dataset": "fashion-mnist", "model": "cnn", "partition": "dirichlet", "dirichlet-alpha": 0.5,
          "batch-size": 10, "local-epochs": 1, "learning-rate": 0.1, "momentum": 0.0, "validation-fraction": 0.0,
          "min-train-clients": 1, "seed": 0}
DPFL = {"privacy-unit": "client", "dp": False, "user-target-epsilon": TARGET_EPSILON, "user-delta": DELTA,
        "user-clip-norm": 0.3, "server-momentum": 0.9, "server-learning-rate": 0.5, "ema-decay": 0.9}
LEGS = ("dpfl", "flower", "nonprivate")


def _flags(values: dict[str, Any]) -> list[str]:
    return [f"--{k}={str(v).lower() if isinstance(v, bool) else v}" for k, v in values.items()]


def _pld_of_ledger(path: Path) -> float:
    entries = [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
    acc = dp_accounting.pld.PLDAccountant(value_discretization_interval=1e-4)
    for e in entries:
        acc.compose(dp_accounting.SelfComposedDpEvent(dp_accounting.PoissonSampledDpEvent(
            e["sample_rate"], dp_accounting.GaussianDpEvent(e["noise_multiplier"])), e["steps"]))
    return float(acc.get_epsilon(entries[-1]["delta"]))


def run_dpfl(values: dict[str, Any], out: Path, name: str) -> dict[str, Any]:
    cmd = [sys.executable, "-m", "dpfl.simulations.cli.main", "simulate", *_flags(values), "--run-dir", str(out),
           "--run-name", name]
    t0 = time.perf_counter()
    proc = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True)
    wall = time.perf_counter() - t0
    run = out / name
    summary, rows = read_summary(run) or {}, read_metrics(run)
    result: dict[str, Any] = {"exit_code": proc.returncode, "wall_seconds": wall,
                              "final_accuracy": summary.get("final_accuracy"),
                              "best_accuracy": max((r["accuracy"] for r in rows), default=None),
                              "accuracy_per_round": [r["accuracy"] for r in rows],
                              "command": "dpfl simulate " + " ".join(_flags(values))}
    if proc.returncode != 0:
        result["error_tail"] = proc.stdout[-2000:] + proc.stderr[-2000:]
    ledger = run / "ledgers" / "server.jsonl"
    if ledger.exists():
        result.update({"epsilon_printed": summary.get("user_epsilon"), "epsilon_dp_accounting": _pld_of_ledger(ledger),
                       "noise_multiplier": summary.get("user_noise_multiplier")})
    return result


def run_flower(values: dict[str, Any], out: Path) -> dict[str, Any]:
    population, rounds = int(values["num-clients"]), int(values["num-server-rounds"])
    sigma = noise_multiplier_for(TARGET_EPSILON, rounds, COHORT, DELTA, population)
    cfg = {**values, "privacy-unit": "client", "dp": False, "user-noise-multiplier": sigma, "user-delta": DELTA,
           "user-clip-norm": DPFL["user-clip-norm"]}
    config, timing = out / "flower-config.json", out / "flower-out.json"
    config.write_text(json.dumps(cfg))
    t0 = time.perf_counter()
    proc = subprocess.run([sys.executable, str(ROOT / "bench" / "peers" / "flower_central_dp" / "run.py"),
                           "--config", str(config), "--out", str(timing)], cwd=ROOT, capture_output=True, text=True)
    wall = time.perf_counter() - t0
    if proc.returncode != 0 or not timing.exists():
        return {"exit_code": proc.returncode, "wall_seconds": wall, "error_tail": proc.stderr[-3000:]}
    got = json.loads(timing.read_text())
    rows = got["rounds"]
    event = dp_accounting.SelfComposedDpEvent(dp_accounting.GaussianDpEvent(sigma), rounds)
    recomputed = dp_accounting.pld.PLDAccountant(value_discretization_interval=1e-4).compose(event).get_epsilon(DELTA)
    return {"exit_code": 0, "wall_seconds": wall, "noise_multiplier": sigma, "epsilon_printed": got["epsilon"],
            "epsilon_flower_accountant_check": flower_epsilon(sigma, rounds, COHORT, DELTA, population),
            "epsilon_dp_accounting": float(recomputed), "final_accuracy": rows[-1]["accuracy"] if rows else None,
            "best_accuracy": max((r["accuracy"] for r in rows), default=None),
            "accuracy_per_round": [r["accuracy"] for r in rows],
            "command": f"python bench/peers/flower_central_dp/run.py (sigma {sigma:.4g}, C {DPFL['user-clip-norm']})"}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--clients", type=int, default=1000)
    parser.add_argument("--rounds", type=int, default=100)
    parser.add_argument("--legs", default=",".join(LEGS))
    parser.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                        help="override a recipe key (every leg)")
    parser.add_argument("--json", default=str(ROOT / "bench" / "results" / "user_level.json"))
    args = parser.parse_args()
    legs = [leg for leg in args.legs.split(",") if leg]
    if unknown := sorted(set(legs) - set(LEGS)):
        parser.error(f"--legs {','.join(unknown)}: expected some of {', '.join(LEGS)}")
    recipe = {**RECIPE, **dict(item.split("=", 1) for item in args.set), "num-clients": args.clients,
              "num-server-rounds": args.rounds, "fraction-train": COHORT / args.clients}
    results: dict[str, Any] = {}
    with tempfile.TemporaryDirectory(prefix="dpfl-user-level-") as tmp:
        for leg in legs:
            print(f"{leg}: running ({args.clients} clients, {args.rounds} rounds)...", flush=True)
            if leg == "dpfl":
                results[leg] = run_dpfl({**recipe, **DPFL}, Path(tmp), "dpfl")
            elif leg == "nonprivate":
                server = {k: DPFL[k] for k in ("server-momentum", "server-learning-rate", "ema-decay")}
                results[leg] = run_dpfl({**recipe, "dp": False, **server}, Path(tmp), "nonprivate")
            else:
                results[leg] = run_flower(recipe, Path(tmp))
            r = results[leg]
            print(f"  exit {r['exit_code']}, {r['wall_seconds']:.0f} s, accuracy {r.get('final_accuracy')}, "
                  f"sigma {r.get('noise_multiplier')}, epsilon {r.get('epsilon_printed')} "
                  f"(dp-accounting {r.get('epsilon_dp_accounting')})", flush=True)
            if r["exit_code"] != 0:
                print(r.get("error_tail", ""), file=sys.stderr)
    print(f"\n| leg | σ | final accuracy | ε printed | ε dp-accounting | wall |  ({args.clients} clients, "
          f"{args.rounds} rounds, expected cohort {COHORT}, δ = {DELTA:g})")
    print("|---|---|---|---|---|---|")
    for leg, r in results.items():
        def f(v: Any, spec: str) -> str:
            return format(v, spec) if isinstance(v, int | float) else "—"
        print(f"| {leg} | {f(r.get('noise_multiplier'), '.3f')} | {f(r.get('final_accuracy'), '.4f')} | "
              f"{f(r.get('epsilon_printed'), '.3f')} | {f(r.get('epsilon_dp_accounting'), '.3f')} | "
              f"{f(r['wall_seconds'], '.0f')} s |")
    Path(args.json).parent.mkdir(parents=True, exist_ok=True)
    Path(args.json).write_text(json.dumps({"clients": args.clients, "rounds": args.rounds, "cohort": COHORT,
                                           "target_epsilon": TARGET_EPSILON, "delta": DELTA, "recipe": recipe,
                                           "legs": results, "machine": platform.platform()}, indent=2) + "\n")
    print(f"wrote {args.json}")
    return 0 if all(r["exit_code"] == 0 for r in results.values()) else 1


if __name__ == "__main__":
    sys.exit(main())
