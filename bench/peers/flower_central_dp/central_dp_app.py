"""Flower 1.42's own user-level DP, for bench/user_level.py: ``DifferentialPrivacyServerSideFixedClipping``
around ``FedAvg`` with its accounted mode (``flwr.serverapp.RdpAccountant``).

In accounted mode Flower refuses sampling amplification (``SamplingMethod.NO_AMPLIFICATION``) and unequal
weights, so every client reports ``num-examples = 1`` and the noise multiplier has to make epsilon small
without any help from sampling: ``noise_multiplier_for`` finds the smallest one Flower's own accountant accepts
for the target. The clients train exactly like dpfl's user-level clients (same model, data partitions, plain
SGD recipe); the server clips on its side, as Flower's server-side wrapper does. Run on dpfl's in-process grid
so both legs use the same engine and only the mechanism differs.
"""

from __future__ import annotations

import json
import time
from pathlib import Path

import torch
from flwr.app import ArrayRecord, ConfigRecord, Context, Message, MetricRecord, RecordDict
from flwr.clientapp import ClientApp
from flwr.serverapp import Grid, PrivacyConfig, RdpAccountant, ServerApp
from flwr.serverapp.strategy import DifferentialPrivacyServerSideFixedClipping, FedAvg
from flwr.supercore.privacy_accounting import GaussianPrivacyEvent, NeighboringRelation, SamplingMethod
from torch import nn

from dpfl.models import build_model
from dpfl.models.evaluation import evaluate_model
from dpfl.simulations.data.clients import load_client_data, load_test_set

client_app = ClientApp()
server_app = ServerApp()


def _model(cfg: dict) -> nn.Module:
    _, _, shape, classes = load_test_set(cfg)
    return build_model(str(cfg["model"]), shape, classes)


def flower_accountant(delta: float, population: int) -> RdpAccountant:
    return RdpAccountant(PrivacyConfig(target_delta=delta, population_size=population,
                                       neighboring_relation=NeighboringRelation.ADD_OR_REMOVE_ONE,
                                       sampling_method=SamplingMethod.NO_AMPLIFICATION))


def flower_epsilon(sigma: float, rounds: int, cohort: int, delta: float, population: int) -> float:
    """Flower's own accountant's epsilon after ``rounds`` releases of its strategy's Gaussian."""
    accountant = flower_accountant(delta, population)
    for _ in range(rounds):
        accountant.compose(GaussianPrivacyEvent(noise_multiplier=sigma, sample_size=cohort, population_size=population))
    return float(accountant.get_privacy_spent().epsilon)


def noise_multiplier_for(target: float, rounds: int, cohort: int, delta: float, population: int) -> float:
    """The smallest sigma (to 0.5 %) at which Flower's accountant ends at or below ``target``."""
    lo, hi = 0.1, 1.0
    while flower_epsilon(hi, rounds, cohort, delta, population) > target:
        lo, hi = hi, hi * 2
    while hi / lo > 1.005:
        mid = (lo * hi) ** 0.5
        lo, hi = (mid, hi) if flower_epsilon(mid, rounds, cohort, delta, population) > target else (lo, mid)
    return hi


@client_app.train()
def train(msg: Message, context: Context) -> Message:
    cfg = dict(context.run_config)
    data = load_client_data(cfg, int(context.node_config["partition-id"]))
    model = _model(cfg)
    model.load_state_dict(msg.content["arrays"].to_torch_state_dict())
    optimizer = torch.optim.SGD(model.parameters(), lr=float(cfg["learning-rate"]), momentum=float(cfg["momentum"]))
    batch = int(cfg["batch-size"])
    model.train()
    for _ in range(int(cfg["local-epochs"])):
        order = torch.randperm(int(data.train_y.shape[0]))
        for i in range(0, len(order), batch):
            idx = order[i:i + batch]
            optimizer.zero_grad()
            nn.functional.cross_entropy(model(data.train_x[idx]), data.train_y[idx]).backward()
            optimizer.step()
    return Message(RecordDict({"arrays": ArrayRecord(model.state_dict()),
                               "metrics": MetricRecord({"num-examples": 1})}), reply_to=msg)


@server_app.main()
def main(grid: Grid, context: Context) -> None:
    cfg = dict(context.run_config)
    test_x, test_y, _, _ = load_test_set(cfg)
    model = _model(cfg)
    population, rounds = int(cfg["num-clients"]), int(cfg["num-server-rounds"])
    cohort = round(float(cfg["fraction-train"]) * population)
    delta = float(cfg["user-delta"])
    sigma = float(cfg["user-noise-multiplier"])
    accountant = flower_accountant(delta, population)
    strategy = DifferentialPrivacyServerSideFixedClipping(
        FedAvg(fraction_train=float(cfg["fraction-train"]), fraction_evaluate=0.0, min_train_nodes=cohort,
               min_evaluate_nodes=0, min_available_nodes=population),
        noise_multiplier=sigma, clipping_norm=float(cfg["user-clip-norm"]), num_sampled_clients=cohort,
        accountant=accountant)
    history: list[dict] = []
    t0 = time.perf_counter()

    def evaluate(server_round: int, arrays: ArrayRecord) -> MetricRecord:
        model.load_state_dict(arrays.to_torch_state_dict())
        loss, accuracy = evaluate_model(model, test_x, test_y)
        if server_round > 0:
            history.append({"round": server_round, "accuracy": accuracy, "loss": loss,
                            "epsilon": float(accountant.get_privacy_spent().epsilon)})
        return MetricRecord({"accuracy": accuracy})

    strategy.start(grid=grid, initial_arrays=ArrayRecord(model.state_dict()), num_rounds=rounds,
                   train_config=ConfigRecord({}), evaluate_fn=evaluate)
    Path(str(cfg["timing-file"])).write_text(json.dumps({
        "rounds": history, "wall_seconds_inner": time.perf_counter() - t0, "noise_multiplier": sigma,
        "epsilon": float(accountant.get_privacy_spent().epsilon), "delta": delta}))
