"""Round time of `dpfl launch` (real Flower processes over HTTP) vs `dpfl simulate` (in-process) for one job.

Both engines run the same ServerApp and ClientApp, so the difference is the price of deployment: a
fresh ``flwr-clientapp`` process per message (Python, torch and opacus imported every round), Flower's
3-second polling on both sides, and serialization over HTTP. Round time is the ServerApp's own
measurement (metrics.jsonl "seconds": sample, train, aggregate, evaluate), identical in meaning for both;
wall time adds start-up (process launch, SuperNode registration, imports) and shut-down.

    python bench/deployment.py                       # 10 clients, 3 rounds, fashion-mnist (else digits)
    python bench/deployment.py --clients 4 --rounds 2 --dataset digits --engines inprocess,launch,ray

Writes bench/results/deployment.json.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
FASHION_MNIST = Path("/usr/share/datasets/fashion-mnist")

from dpfl_runs import ENGINES, run_engine  # noqa: E402  (bench/ is on sys.path when run as a script)


def _fmt(value: float | None, unit: str = "s") -> str:
    return "—" if value is None else f"{value:.1f} {unit}".strip()


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--clients", type=int, default=10)
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--dataset", default="fashion-mnist" if FASHION_MNIST.is_dir() else "digits")
    p.add_argument("--model", default="mlp")
    p.add_argument("--batch-size", type=int, default=64)
    p.add_argument("--engines", default="inprocess,launch",
                   help=f"comma-separated, from {', '.join(ENGINES)} (ray: Flower's simulation engine)")
    p.add_argument("--output", default=str(ROOT / "bench" / "results" / "deployment.json"))
    args = p.parse_args(argv)
    engines = [e.strip() for e in args.engines.split(",") if e.strip()]
    unknown = sorted(set(engines) - set(ENGINES))
    if unknown:
        p.error(f"--engines {','.join(unknown)} is not valid: expected {', '.join(ENGINES)}")
    job = {"dataset": args.dataset, "model": args.model, "num-clients": args.clients,
           "num-server-rounds": args.rounds, "batch-size": args.batch_size, "seed": 1, "delta": 1e-5,
           "round-timeout": 600}
    load_before = os.getloadavg()
    results = []
    with tempfile.TemporaryDirectory(prefix="dpfl-bench-") as tmp:
        for engine in engines:
            print(f"running {engine} ...", flush=True)
            results.append(run_engine(engine, job, Path(tmp)))
    by = {r["engine"]: r for r in results}

    print(f"\n{args.clients} clients · {args.rounds} rounds · {args.dataset} · model {args.model} · "
          f"{os.cpu_count()} cores (load {load_before[0]:.1f} before)")
    header = f"{'':28}" + "".join(f"{e:>16}" for e in engines)
    print(header)
    rows = (("mean round time", "mean_round_seconds"),
            ("mean round time, rounds 2+", "mean_round_seconds_after_first"),
            ("server run (rounds + eval)", "server_run_seconds"),
            ("wall time (whole command)", "wall_seconds"))
    for label, key in rows:
        print(f"{label:28}" + "".join(f"{_fmt(by[e][key]):>16}" for e in engines))
    accuracy = {e: "—" if by[e]["final_accuracy"] is None else f"{by[e]['final_accuracy']:.4f}"
                for e in engines}
    print(f"{'final accuracy':28}" + "".join(f"{accuracy[e]:>16}" for e in engines))
    if "inprocess" in by and by["inprocess"]["mean_round_seconds"]:
        for e in engines:
            if e != "inprocess" and by[e]["mean_round_seconds"]:
                ratio = by[e]["mean_round_seconds"] / by["inprocess"]["mean_round_seconds"]
                print(f"{e}: {ratio:.1f}x the in-process round time")
    for r in results:
        if r["exit_code"] != 0:
            print(f"\n{r['engine']} FAILED (exit {r['exit_code']}):\n{r['error_tail']}")

    out = Path(args.output)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps({
        "job": job, "engines": results, "machine": {"cpus": os.cpu_count(), "platform": platform.platform(),
                                                     "python": platform.python_version(),
                                                     "loadavg_before": load_before},
        "time": time.strftime("%Y-%m-%dT%H:%M:%S"),
    }, indent=2) + "\n")
    print(f"\nwrote {out}")
    return 0 if all(r["exit_code"] == 0 for r in results) else 1


if __name__ == "__main__":
    sys.exit(main())
