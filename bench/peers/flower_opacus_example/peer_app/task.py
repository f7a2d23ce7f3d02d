"""Model, data and the train / test loops of the peer, kept as plain as Flower's Opacus example.

The model and the data are dpfl's own (``models.build_model``, ``simulations.data.datasets``) so that the peer
trains the same tanh CNN on the same client partitions and is scored on the same test set: any speed
or accuracy difference then comes from how the work is run, not from what is computed.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import torch
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

from dpfl.models import build_model
from dpfl.simulations.data.clients import declared_sizes, load_client_data, load_test_set

EVAL_BATCH = 1000


def make_model(cfg: Mapping[str, Any]) -> nn.Module:
    """A fresh model: the peer builds a new one every round, so Opacus never hooks a module twice."""
    _, _, shape, classes = load_test_set(cfg)
    return build_model(str(cfg["model"]), shape, classes)


def train_loader(cfg: Mapping[str, Any], partition_id: int) -> DataLoader:
    """A plain shuffled DataLoader over this client's partition; ``make_private`` turns it into
    Opacus' Poisson-sampling DataLoader."""
    data = load_client_data(cfg, partition_id)
    return DataLoader(TensorDataset(data.train_x, data.train_y), batch_size=int(cfg["batch-size"]),
                      shuffle=True)


def delta_of(cfg: Mapping[str, Any]) -> float:
    """The configured delta, or dpfl's default 1 / (10 x total records) when it is 0."""
    delta = float(cfg["delta"])
    return delta if delta > 0 else 1.0 / (10 * sum(declared_sizes(cfg)))


def make_optimizer(model: nn.Module, cfg: Mapping[str, Any]) -> torch.optim.Optimizer:
    lr = float(cfg["learning-rate"])
    if str(cfg["optimizer"]) == "adam":
        return torch.optim.Adam(model.parameters(), lr=lr)
    return torch.optim.SGD(model.parameters(), lr=lr, momentum=float(cfg["momentum"]))


def train(model: nn.Module, loader: DataLoader, optimizer: torch.optim.Optimizer, epochs: int) -> float:
    """Local epochs over the (Poisson) loader; returns the mean training loss per example."""
    criterion = nn.CrossEntropyLoss()
    model.train()
    total, seen = 0.0, 0
    for _ in range(epochs):
        for images, labels in loader:
            optimizer.zero_grad()
            loss = criterion(model(images), labels)
            loss.backward()
            optimizer.step()
            total += float(loss.detach()) * int(labels.numel())
            seen += int(labels.numel())
    return total / max(seen, 1)


@torch.no_grad()
def test(model: nn.Module, x: torch.Tensor, y: torch.Tensor) -> tuple[float, float]:
    """(mean loss, accuracy) on a held-out set."""
    model.eval()
    loss, correct = 0.0, 0
    for i in range(0, int(y.shape[0]), EVAL_BATCH):
        out = model(x[i:i + EVAL_BATCH])
        loss += float(nn.functional.cross_entropy(out, y[i:i + EVAL_BATCH], reduction="sum"))
        correct += int((out.argmax(1) == y[i:i + EVAL_BATCH]).sum())
    n = int(y.shape[0])
    return loss / n, correct / n
