"""bench/accuracy: accuracy at a per-client epsilon, IID vs Dirichlet(0.5), with centralised DP-SGD as the ceiling.

Every federated point is a real `dpfl simulate` run (a fresh process) of one recipe - a named preset or
the defaults - on Fashion-MNIST with 10 clients, sigma calibrated by the clients to the target epsilon at
delta 1e-5 (PLD). Seeds change the partition, the initial model and the client sampling; DP noise comes
from OS entropy as always. Reported: final test accuracy, mean +- sd over seeds, and the largest
per-client epsilon the run itself reports.

The ceiling ("the sqrt(K) rule"): K clients that each add N(0, sigma^2 C^2) to a batch of B clipped
gradients put sqrt(K) times more noise into their average than one party adding it once to the K*B
gradients of the pooled data. So the centralised run uses the pooled training data of the K clients,
batch K*B (the same sampling rate q), the same number of steps (rounds x steps per round), the same
optimizer and learning rate, and noise multiplier sigma * sqrt(K): the same noise per averaged gradient.
Its own (centralised, much smaller) epsilon is reported next to it. The centralised run is IID by
construction; it is run once per seed of the IID runs.

    python bench/accuracy.py [--preset NAME] [--epsilons 1,3,8] [--partitions iid,dirichlet]
                             [--seeds 0,1,2] [--no-centralised] [--set key=value ...]
                             [--json bench/results/accuracy.json]
"""

from __future__ import annotations

import argparse
import json
import math
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]

from dpfl_runs import run_engine  # noqa: E402  (bench/ is on sys.path when run as a script)

DELTA = 1e-5
PARTITIONS = {"iid": {"partition": "iid"}, "dirichlet": {"partition": "dirichlet", "dirichlet-alpha": 0.5}}
BASE = {"dataset": "fashion-mnist", "num-clients": 10, "delta": DELTA, "accountant": "pld",
        "validation-fraction": 0.0}


def _recipe(preset: str, overrides: list[str]) -> dict[str, Any]:
    from dpfl.simulations.config import resolve
    from dpfl.simulations.config.presets import preset_values

    values: dict[str, Any] = preset_values(preset) if preset else {}
    for item in overrides:
        key, _, value = item.partition("=")
        values[key] = value
    return resolve(BASE, values).as_dict()


def federated(cfg: dict[str, Any], name: str, workdir: Path) -> dict[str, Any]:
    job = {k: v for k, v in cfg.items() if v != ""}
    res = run_engine("inprocess", job, workdir, name=name)
    return {"accuracy": res["final_accuracy"], "epsilon_max": res["epsilon_max"], "wall_seconds": res["wall_seconds"],
            "exit_code": res["exit_code"], "error_tail": res["error_tail"]}


def centralised(cfg: dict[str, Any]) -> dict[str, Any]:
    """DP-SGD on the pooled data at the federated run's effective noise (see module docstring)."""
    import torch

    from dpfl.client.randomness import dp_generators
    from dpfl.client.settings import ClientSettings
    from dpfl.client.terms import noise_multiplier_for
    from dpfl.client.training import train_locally
    from dpfl.models import build_model
    from dpfl.models.evaluation import evaluate_model
    from dpfl.privacy import DpSgdRelease, epsilon, steps_per_round
    from dpfl.simulations.data.clients import load_client_data, load_test_set, true_sizes

    t0 = time.perf_counter()
    k = int(cfg["num-clients"])
    sizes = true_sizes(cfg)
    if max(sizes) - min(sizes) > 1:
        raise SystemExit("the centralised ceiling needs equal client sizes (an IID partition)")
    n, batch = min(sizes), int(cfg["batch-size"])  # IID sizes differ by at most one record
    sigma = noise_multiplier_for(ClientSettings.from_config(cfg), n, DELTA)
    rounds, epochs = int(cfg["num-server-rounds"]), int(cfg["local-epochs"])
    q, steps_fed = steps_per_round(n, batch, epochs)
    parts = [load_client_data(cfg, pid) for pid in range(k)]
    x = torch.cat([p.train_x for p in parts])
    y = torch.cat([p.train_y for p in parts])
    central_cfg = {**cfg, "batch-size": k * batch, "local-epochs": rounds * epochs}
    settings = ClientSettings.from_config(central_cfg).train_settings(sigma * math.sqrt(k))
    q_c, steps_c = steps_per_round(int(y.shape[0]), settings.batch_size, settings.local_epochs)
    torch.manual_seed(int(cfg["seed"]))
    test_x, test_y, shape, classes = load_test_set(cfg)
    model = build_model(str(cfg["model"]), shape, classes)
    sampling, noise = dp_generators(deterministic=False, seed=int(cfg["seed"]), partition_id=0, server_round=0,
                                    device=torch.device("cpu"))
    train_locally(model, x, y, settings, sampling_generator=sampling, noise_generator=noise,
                  device=torch.device("cpu"))
    _, acc = evaluate_model(model, test_x, test_y)
    eps_c = epsilon([DpSgdRelease(noise_multiplier=settings.noise_multiplier, sample_rate=q_c, steps=steps_c)],
                    DELTA, "pld")
    return {"accuracy": float(acc), "epsilon": eps_c, "noise_multiplier": settings.noise_multiplier,
            "federated_noise_multiplier": sigma, "sample_rate": q_c, "steps": steps_c,
            "federated_steps": rounds * steps_fed, "federated_sample_rate": q,
            "wall_seconds": time.perf_counter() - t0}


def _mean_sd(values: list[float]) -> tuple[float, float]:
    if not values:
        return float("nan"), float("nan")
    return statistics.fmean(values), statistics.stdev(values) if len(values) > 1 else 0.0


def _summarise(points: list[dict[str, Any]]) -> list[dict[str, Any]]:
    rows = []
    keys = dict.fromkeys((p["partition"], p["target_epsilon"]) for p in points)
    for partition, target in keys:
        mine = [p for p in points if (p["partition"], p["target_epsilon"]) == (partition, target)]
        fed = [p["federated"]["accuracy"] for p in mine if p["federated"].get("accuracy") is not None]
        eps = [p["federated"]["epsilon_max"] for p in mine if p["federated"].get("epsilon_max") is not None]
        cen = [p["centralised"]["accuracy"] for p in mine if p.get("centralised")]
        cen_eps = [p["centralised"]["epsilon"] for p in mine if p.get("centralised")]
        mean, sd = _mean_sd(fed)
        cmean, csd = _mean_sd(cen)
        rows.append({"partition": partition, "target_epsilon": target, "seeds": len(fed), "accuracy_mean": mean,
                     "accuracy_sd": sd, "epsilon_max": max(eps) if eps else None,
                     "centralised_accuracy_mean": cmean if cen else None,
                     "centralised_accuracy_sd": csd if cen else None,
                     "centralised_epsilon": max(cen_eps) if cen_eps else None})
    return rows


def _print_table(rows: list[dict[str, Any]]) -> None:
    print(f"\n{'partition':10s} {'eps':>4s} {'seeds':>5s} {'accuracy':>16s} {'eps reported':>12s} "
          f"{'centralised (same noise)':>26s} {'central eps':>11s} {'gap':>6s}")
    iid = {r["target_epsilon"]: r["accuracy_mean"] for r in rows if r["partition"] == "iid"}
    for r in rows:
        cen = "" if r["centralised_accuracy_mean"] is None else \
            f"{100 * r['centralised_accuracy_mean']:.2f} +- {100 * r['centralised_accuracy_sd']:.2f} %"
        gap = ""
        if r["centralised_accuracy_mean"] is not None:
            gap = f"{100 * (r['centralised_accuracy_mean'] - r['accuracy_mean']):.1f}"
        elif r["partition"] != "iid" and r["target_epsilon"] in iid:
            gap = f"{100 * (iid[r['target_epsilon']] - r['accuracy_mean']):.1f}"
        ceps = "" if r["centralised_epsilon"] is None else f"{r['centralised_epsilon']:.3f}"
        eps = "" if r["epsilon_max"] is None else f"{r['epsilon_max']:.3f}"
        print(f"{r['partition']:10s} {r['target_epsilon']:4g} {r['seeds']:5d} "
              f"{100 * r['accuracy_mean']:7.2f} +- {100 * r['accuracy_sd']:4.2f} % {eps:>12s} {cen:>26s} "
              f"{ceps:>11s} {gap:>6s}")
    print("gap: points the federated mean is below the centralised ceiling (IID rows) or below IID at the same "
          "epsilon (other partitions)")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--preset", default="", help="named recipe (config/presets.py); default: the defaults")
    parser.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="override a recipe key")
    parser.add_argument("--epsilons", default="1,3,8")
    parser.add_argument("--partitions", default="iid,dirichlet")
    parser.add_argument("--seeds", default="0,1,2")
    parser.add_argument("--no-centralised", action="store_true")
    parser.add_argument("--json", default=str(ROOT / "bench" / "results" / "accuracy.json"))
    args = parser.parse_args()
    epsilons = [float(e) for e in args.epsilons.split(",")]
    partitions = [p for p in args.partitions.split(",") if p]
    unknown = sorted(set(partitions) - set(PARTITIONS))
    if unknown:
        parser.error(f"--partitions {','.join(unknown)} is not valid: expected {', '.join(PARTITIONS)}")
    seeds = [int(s) for s in args.seeds.split(",")]
    recipe = _recipe(args.preset, args.set)
    total = len(partitions) * len(epsilons) * len(seeds)
    print(f"recipe: {args.preset or 'defaults'} {' '.join(args.set)}; {total} federated runs"
          f"{'' if args.no_centralised else ' + centralised ceilings'}", flush=True)
    points: list[dict[str, Any]] = []
    started = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="dpfl-accuracy-") as tmp:
        for partition in partitions:
            for target in epsilons:
                for seed in seeds:
                    cfg = {**recipe, **PARTITIONS[partition], "target-epsilon": target, "seed": seed}
                    name = f"{partition}-eps{target:g}-seed{seed}"
                    fed = federated(cfg, name, Path(tmp))
                    point = {"partition": partition, "target_epsilon": target, "seed": seed, "federated": fed}
                    acc, eps = fed["accuracy"], fed["epsilon_max"]
                    line = (f"[{len(points) + 1}/{total}] {name}: accuracy {'-' if acc is None else f'{acc:.4f}'}, "
                            f"eps {'-' if eps is None else f'{eps:.3f}'}, {fed['wall_seconds']:.0f} s")
                    if fed["exit_code"] != 0:
                        line += f"  FAILED: {fed['error_tail'][-300:]}"
                    if partition == "iid" and not args.no_centralised:
                        from dpfl.simulations.config import resolve

                        point["centralised"] = centralised(resolve(cfg).as_dict())
                        c = point["centralised"]
                        line += (f" | centralised {c['accuracy']:.4f} at eps {c['epsilon']:.3f} "
                                 f"(sigma {c['noise_multiplier']:.2f}, {c['wall_seconds']:.0f} s)")
                    print(line, flush=True)
                    points.append(point)
    rows = _summarise(points)
    _print_table(rows)
    result = {"command": "python " + " ".join(sys.argv), "recipe": recipe, "preset": args.preset,
              "overrides": args.set, "delta": DELTA, "points": points, "summary": rows,
              "wall_seconds": time.perf_counter() - started, "cpus": os.cpu_count(),
              "time": time.strftime("%Y-%m-%dT%H:%M:%S")}
    out = Path(args.json)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=2) + "\n")
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
