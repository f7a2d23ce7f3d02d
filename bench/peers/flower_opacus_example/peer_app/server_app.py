"""peer_app ServerApp: FedAvg over the clients, the global model scored on the test set every round.

Per-round wall time, accuracy and the largest per-round epsilon the clients report are written to the
run config's ``timing-file`` (JSON) for bench/peers/flower_opacus_example/run.py.
"""

from __future__ import annotations

import json
import time
from pathlib import Path

import torch
from flwr.app import ArrayRecord, ConfigRecord, Context, MetricRecord, RecordDict
from flwr.serverapp import Grid, ServerApp
from flwr.serverapp.strategy import FedAvg

from dpfl.simulations.data.clients import load_test_set
from peer_app.task import make_model, test

torch.set_num_threads(1)

app = ServerApp()


def max_epsilon_and_mean_loss(replies: list[RecordDict], weight_key: str) -> MetricRecord:
    """epsilon must be aggregated with max (FedAvg's default would average it); loss is weighted."""
    metrics = [r["metrics"] for r in replies]
    total = sum(float(m[weight_key]) for m in metrics)
    loss = sum(float(m["train-loss"]) * float(m[weight_key]) for m in metrics) / max(total, 1.0)
    return MetricRecord({"epsilon-max": max(float(m["epsilon"]) for m in metrics), "train-loss": loss})


@app.main()
def main(grid: Grid, context: Context) -> None:
    cfg = context.run_config
    t_start = time.perf_counter()
    test_x, test_y, _, _ = load_test_set(cfg)
    model = make_model(cfg)
    rounds: list[dict[str, float]] = []
    last = [time.perf_counter()]

    def evaluate(server_round: int, arrays: ArrayRecord) -> MetricRecord:
        model.load_state_dict(arrays.to_torch_state_dict())
        loss, accuracy = test(model, test_x, test_y)
        now = time.perf_counter()
        if server_round > 0:  # round 0 scores the initial model; a round ends with its evaluation
            rounds.append({"round": server_round, "seconds": now - last[0], "accuracy": accuracy, "loss": loss})
        last[0] = now
        return MetricRecord({"accuracy": accuracy, "loss": loss})

    num_clients = int(cfg["num-clients"])
    strategy = FedAvg(fraction_train=float(cfg["fraction-train"]), fraction_evaluate=0.0,
                      min_train_nodes=1, min_evaluate_nodes=0, min_available_nodes=num_clients,
                      train_metrics_aggr_fn=max_epsilon_and_mean_loss)
    result = strategy.start(grid=grid, initial_arrays=ArrayRecord(model.state_dict()),
                            num_rounds=int(cfg["num-server-rounds"]),
                            train_config=ConfigRecord({"lr": float(cfg["learning-rate"])}),
                            evaluate_fn=evaluate)
    for row in rounds:
        train_metrics = result.train_metrics_clientapp.get(int(row["round"]))
        row["epsilon_max"] = float(train_metrics["epsilon-max"]) if train_metrics else float("nan")
    out = {"rounds": rounds, "wall_seconds_inner": time.perf_counter() - t_start}
    if str(cfg["timing-file"]):
        Path(str(cfg["timing-file"])).write_text(json.dumps(out, indent=2))
