"""FROZEN reference: the best plain Python loop (no Flower) doing exactly dpfl's work.

Same data and partitions, same local DP-SGD (client.training.train_locally), same FedAvg with
declared weights, same server-side evaluation and the same cumulative accounting, run on a pool
of one-thread worker processes (two on 2 cores) that are started once. `bench/speed.py` times
dpfl against it; keep it unchanged so figures stay comparable across commits.
"""

from __future__ import annotations

import argparse
import json
import multiprocessing as mp
import time
from collections import OrderedDict
from typing import Any

import torch

_STATE: dict[str, Any] = {}


def _init(cfg: dict[str, Any]) -> None:
    torch.set_num_threads(1)
    _STATE["cfg"] = cfg


def _train_client(args: tuple[int, int, dict[str, torch.Tensor]]) -> tuple[int, dict[str, torch.Tensor], int, dict]:
    from dpfl.client.randomness import dp_generators
    from dpfl.client.training import TrainSettings, train_locally
    from dpfl.models import build_model
    from dpfl.simulations.data.clients import load_client_data, load_test_set

    pid, server_round, weights = args
    cfg = _STATE["cfg"]
    data = load_client_data(cfg, pid)
    _, _, shape, classes = load_test_set(cfg)
    model = build_model(cfg["model"], shape, classes)
    model.load_state_dict(weights)
    settings = TrainSettings(local_epochs=cfg["local-epochs"], batch_size=cfg["batch-size"],
                             learning_rate=cfg["learning-rate"], momentum=cfg["momentum"],
                             optimizer=cfg["optimizer"], dp=cfg["dp"], noise_multiplier=cfg["noise-multiplier"],
                             max_grad_norm=cfg["max-grad-norm"], grad_sample_mode=cfg["grad-sample-mode"])
    sampling, noise = dp_generators(deterministic=False, seed=0, partition_id=pid, server_round=server_round,
                                    device=torch.device("cpu"))
    outcome = train_locally(model, data.train_x, data.train_y, settings, sampling_generator=sampling,
                            noise_generator=noise, device=torch.device("cpu"))
    release = {"noise_multiplier": cfg["noise-multiplier"], "sample_rate": outcome.sample_rate,
               "steps": outcome.steps}
    return pid, model.state_dict(), int(data.train_y.shape[0]), release


def run_plain(cfg: dict[str, Any], workers: int) -> dict[str, Any]:
    from dpfl.models import build_model
    from dpfl.models.evaluation import evaluate_model
    from dpfl.privacy import DpSgdRelease, epsilon
    from dpfl.simulations.data.clients import declared_sizes, load_test_set

    t0 = time.perf_counter()
    torch.set_num_threads(1)
    test_x, test_y, shape, classes = load_test_set(cfg)
    torch.manual_seed(cfg["seed"])
    model = build_model(cfg["model"], shape, classes)
    weights = OrderedDict((k, v.clone()) for k, v in model.state_dict().items())
    delta = cfg["delta"] or 1.0 / (10 * sum(declared_sizes(cfg)))
    ledgers: dict[int, list[DpSgdRelease]] = {}
    rounds = []
    with mp.get_context("spawn").Pool(workers, initializer=_init, initargs=(cfg,)) as pool:
        pool.map(_noop, range(workers))
        t_ready = time.perf_counter()
        for r in range(1, cfg["num-server-rounds"] + 1):
            t_round = time.perf_counter()
            results = pool.map(_train_client, [(k, r, weights) for k in range(cfg["num-clients"])])
            total = sum(n for _, _, n, _ in results)
            weights = OrderedDict((k, sum(sd[k].double() * (n / total) for _, sd, n, _ in results).to(v.dtype))
                                  for k, v in weights.items())
            model.load_state_dict(weights)
            loss, acc = evaluate_model(model, test_x, test_y)
            eps = 0.0
            if cfg["dp"]:
                for pid, _, _, rel in results:
                    ledgers.setdefault(pid, []).append(DpSgdRelease(rel["noise_multiplier"], rel["sample_rate"],
                                                                    rel["steps"], round=r))
                eps = max(epsilon(v, delta, cfg["accountant"]) for v in ledgers.values())
            rounds.append({"round": r, "accuracy": acc, "loss": loss, "epsilon_max": eps,
                           "seconds": time.perf_counter() - t_round})
    return {"wall_seconds": time.perf_counter() - t0, "startup_seconds": t_ready - t0, "rounds": rounds,
            "final_accuracy": rounds[-1]["accuracy"], "epsilon_max": rounds[-1]["epsilon_max"]}


def _noop(_: int) -> None:
    return None


def main() -> None:
    from dpfl.simulations.config import resolve

    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--run-config", default="", help='"key=value ..." overrides')
    args = parser.parse_args()
    from dpfl.simulations.config import parse_run_config_string

    cfg = resolve(parse_run_config_string(args.run_config)).as_dict()
    print(json.dumps(run_plain(cfg, args.workers), indent=2))


if __name__ == "__main__":
    main()
