"""bench/speed: the reference task through dpfl and through the plain loop, side by side in one run.

Reference task: Fashion-MNIST, 10 IID clients x 6,000 images, all clients every round, 10 rounds,
1 local epoch, batch 64, SGD lr 0.1 momentum 0.9, sigma 1.0, C 1.0, tanh CNN. Cross-device task:
100 clients x 600 images, 10 sampled per round, 5 rounds.

    python bench/speed.py [--task reference|cross-device|both] [--engines inprocess,ray,plain,peer]
                          [--rounds N] [--json bench/results/speed.json]

Each engine runs in its own process (start-up included in wall time) one after the other; the
figures that matter are the ratios printed at the end, measured in this one run.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]

from dpfl_runs import run_engine  # noqa: E402  (bench/ is on sys.path when run as a script)

TASKS = {
    "reference": {"dataset": "fashion-mnist", "num-clients": 10, "partition": "iid", "num-server-rounds": 10,
                  "fraction-train": 1.0, "local-epochs": 1, "batch-size": 64, "optimizer": "sgd",
                  "learning-rate": 0.1, "momentum": 0.9, "noise-multiplier": 1.0, "target-epsilon": 0.0,
                  "max-grad-norm": 1.0, "model": "cnn", "validation-fraction": 0.0, "delta": 1e-5},
    "cross-device": {"dataset": "fashion-mnist", "num-clients": 100, "partition": "iid", "num-server-rounds": 5,
                     "fraction-train": 0.1, "local-epochs": 1, "batch-size": 64, "optimizer": "sgd",
                     "learning-rate": 0.1, "momentum": 0.9, "noise-multiplier": 1.0, "target-epsilon": 0.0,
                     "max-grad-norm": 1.0, "model": "cnn", "validation-fraction": 0.0, "delta": 1e-5},
}


def _run_config(cfg: dict) -> str:
    return " ".join(f"{k}={str(v).lower() if isinstance(v, bool) else v}" for k, v in cfg.items())


def _dpfl(cfg: dict, engine: str, workdir: Path) -> dict:
    res = run_engine(engine, cfg, workdir, name=f"{engine}-{int(time.time() * 1000)}")
    if res["exit_code"] != 0:
        return {"error": res["error_tail"], "wall_seconds": res["wall_seconds"]}
    return {k: res[k] for k in ("wall_seconds", "round_seconds", "final_accuracy", "epsilon_max")}


def _plain(cfg: dict, workers: int) -> dict:
    code = ("import json,sys; sys.path.insert(0, 'bench'); from plain_loop import run_plain; "
            "from dpfl.simulations.config import resolve; "
            f"print(json.dumps(run_plain(resolve({cfg!r}).as_dict(), {workers})))")
    t0 = time.perf_counter()
    proc = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True)
    wall = time.perf_counter() - t0
    if proc.returncode != 0:
        return {"error": proc.stderr[-2000:], "wall_seconds": wall}
    out = json.loads(proc.stdout.strip().splitlines()[-1])
    return {"wall_seconds": wall, "round_seconds": [r["seconds"] for r in out["rounds"]],
            "final_accuracy": out["final_accuracy"], "epsilon_max": out["epsilon_max"]}


def _peer(cfg: dict, workdir: Path) -> dict:
    script = ROOT / "bench" / "peers" / "flower_opacus_example" / "run.py"
    if not script.exists():
        return {"error": "bench/peers/flower_opacus_example is not present"}
    t0 = time.perf_counter()
    peer_cfg = {k: v for k, v in cfg.items() if k != "target-epsilon"}  # the peer has no calibration
    proc = subprocess.run([sys.executable, str(script), "--run-config", _run_config(peer_cfg), "--out",
                           str(workdir / "peer.json")], cwd=ROOT, capture_output=True, text=True)
    wall = time.perf_counter() - t0
    if proc.returncode != 0:
        return {"error": proc.stderr[-2000:], "wall_seconds": wall}
    out = json.loads((workdir / "peer.json").read_text())
    return {"wall_seconds": wall, **out}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--task", choices=[*TASKS, "both"], default="reference")
    parser.add_argument("--engines", default="inprocess,plain,ray,peer")
    parser.add_argument("--rounds", type=int, default=0, help="override the task's number of rounds")
    parser.add_argument("--workers", type=int, default=2, help="plain loop worker processes")
    parser.add_argument("--json", default=str(ROOT / "bench" / "results" / "speed.json"))
    args = parser.parse_args()
    tasks = list(TASKS) if args.task == "both" else [args.task]
    results: dict[str, dict] = {}
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        for task in tasks:
            cfg = dict(TASKS[task])
            if args.rounds:
                cfg["num-server-rounds"] = args.rounds
            results[task] = {"config": cfg}
            for engine in args.engines.split(","):
                print(f"[{task}] running {engine} ...", flush=True)
                if engine in ("inprocess", "ray"):
                    res = _dpfl(cfg, engine, work)
                elif engine == "plain":
                    res = _plain(cfg, args.workers)
                elif engine == "peer":
                    res = _peer(cfg, work)
                else:
                    raise SystemExit(f"unknown engine {engine!r}")
                results[task][engine] = res
                print(f"[{task}] {engine}: {_line(res)}", flush=True)
            _ratios(results[task])
    Path(args.json).parent.mkdir(parents=True, exist_ok=True)
    Path(args.json).write_text(json.dumps(results, indent=2))
    print(f"wrote {args.json}")


def _line(res: dict) -> str:
    if "error" in res:
        return "FAILED: " + res["error"].strip().splitlines()[-1]
    rounds = res.get("round_seconds") or [float("nan")]
    mean_round = sum(rounds) / len(rounds)
    eps = res.get("epsilon_max")
    return (f"wall {res['wall_seconds']:.1f} s, mean round {mean_round:.2f} s, accuracy {res['final_accuracy']:.4f}, "
            f"eps {eps if eps is None else round(eps, 3)}")


def _ratios(task_results: dict) -> None:
    ok = {k: v for k, v in task_results.items() if k != "config" and "error" not in v}
    ratios = {}
    if "plain" in ok:
        for k in ok:
            if k != "plain":
                ratios[f"{k}/plain wall"] = ok[k]["wall_seconds"] / ok["plain"]["wall_seconds"]
    if "peer" in ok:
        for k in ok:
            if k != "peer":
                ratios[f"{k}/peer wall"] = ok[k]["wall_seconds"] / ok["peer"]["wall_seconds"]
    task_results["ratios"] = ratios
    for name, value in ratios.items():
        print(f"  {name}: {value:.3f}")


if __name__ == "__main__":
    main()
