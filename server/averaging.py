"""What the server does with the averaged client model: the post-processing seam, its steps and the EMA.

``PostProcessing`` is where server-side steps plug in: an ordered list of ``UpdateStep``s turns the
average of the clients' models into the next global model, and an EMA turns that into the released one.
The steps here act only on the aggregate of already-privatised client updates, so they change accuracy,
never epsilon; a server-side DP mechanism (central noise) is a step too, placed before the optimizer, and
books its own release.

- ``ServerOptimizer``: FedAvgM (Hsu et al. 2019). With ``delta_t = average_t - x_t`` it keeps
  ``v_t = momentum * v_{t-1} + delta_t`` and sets ``x_{t+1} = x_t + lr * v_t``; momentum 0 and lr 1 is
  plain FedAvg. Momentum carries the signal of past rounds forward while the clients' independent noise
  partly cancels.
- ``ParameterEma``: the released (evaluated, saved) model is an exponential moving average of the
  training iterates, ``e_t = decay * e_{t-1} + (1 - decay) * x_t`` with ``e_1 = x_1``; clients keep
  training from ``x_t``. Averaging iterates removes part of the DP noise each round adds (De et al. 2022
  average parameters for the same reason).
Only floating-point arrays are averaged or stepped; integer buffers are taken from the newest model.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Protocol

import numpy as np
import torch
from flwr.app import ArrayRecord


def _to_record(keys: list[str], arrays: list[np.ndarray]) -> ArrayRecord:
    # torch.as_tensor keeps 0-d buffers 0-d (np.ascontiguousarray would make them 1-d)
    return ArrayRecord(OrderedDict((k, torch.as_tensor(a).contiguous()) for k, a in zip(keys, arrays, strict=True)))


def _floating(a: np.ndarray) -> bool:
    return bool(np.issubdtype(a.dtype, np.floating))


class UpdateStep(Protocol):
    """One step on the aggregate: (the model sent to the clients, the aggregate so far) -> the new aggregate."""

    def __call__(self, sent: ArrayRecord, aggregate: ArrayRecord) -> ArrayRecord: ...


class ServerOptimizer:
    """Server learning rate and momentum applied to the averaged client model (see module docstring)."""

    def __init__(self, learning_rate: float = 1.0, momentum: float = 0.0) -> None:
        self.learning_rate = float(learning_rate)
        self.momentum = float(momentum)
        self.velocity: list[np.ndarray] | None = None

    @property
    def is_identity(self) -> bool:
        return self.learning_rate == 1.0 and self.momentum == 0.0

    def step(self, sent: ArrayRecord, averaged: ArrayRecord) -> ArrayRecord:
        """The next global model from the one sent to the clients and the average of their models."""
        if self.is_identity:
            return averaged
        old, new = sent.to_numpy_ndarrays(), averaged.to_numpy_ndarrays()
        deltas = [n - o if _floating(o) else np.zeros_like(o) for o, n in zip(old, new, strict=True)]
        if self.velocity is None or self.momentum == 0.0:
            self.velocity = deltas
        else:
            self.velocity = [self.momentum * v + d for v, d in zip(self.velocity, deltas, strict=True)]
        stepped = [o + self.learning_rate * v if _floating(o) else n
                   for o, n, v in zip(old, new, self.velocity, strict=True)]
        return _to_record(list(averaged.keys()), stepped)

    __call__ = step  # an UpdateStep


class ParameterEma:
    """Exponential moving average of the global model over rounds; decay 0 releases the iterate itself."""

    def __init__(self, decay: float = 0.0) -> None:
        self.decay = float(decay)
        self.average: list[np.ndarray] | None = None

    def update(self, iterate: ArrayRecord) -> ArrayRecord:
        """Fold in this round's iterate and return the model to release."""
        if self.decay == 0.0:
            return iterate
        current = iterate.to_numpy_ndarrays()
        if self.average is None:
            self.average = [a.copy() for a in current]
        else:
            self.average = [self.decay * e + (1.0 - self.decay) * x if _floating(x) else x
                            for e, x in zip(self.average, current, strict=True)]
        return _to_record(list(iterate.keys()), [a.astype(x.dtype, copy=False)
                                                 for a, x in zip(self.average, current, strict=True)])


@dataclass
class PostProcessing:
    """The server's seam after aggregation: ``steps`` in order make the next global model from the average,
    ``ema`` makes the released model from the global model."""

    steps: Sequence[UpdateStep] = ()
    ema: ParameterEma = field(default_factory=ParameterEma)

    def next_model(self, sent: ArrayRecord | None, averaged: ArrayRecord) -> ArrayRecord:
        """The global model clients start from next round (``sent`` None: no previous model to step from)."""
        if sent is None:
            return averaged
        out = averaged
        for step in self.steps:
            out = step(sent, out)
        return out

    def release(self, model: ArrayRecord) -> ArrayRecord:
        """The model that is evaluated, saved and reported this round."""
        return self.ema.update(model)

    def tensors(self) -> dict[str, list[torch.Tensor] | None]:
        """What a checkpoint must keep to resume exactly: each server optimizer's velocity and the EMA."""
        out: dict[str, list[torch.Tensor] | None] = {"ema": _tensors(self.ema.average)}
        for k, step in enumerate(self.steps):
            if isinstance(step, ServerOptimizer):
                out[f"velocity-{k}"] = _tensors(step.velocity)
        return out

    def restore(self, tensors: dict[str, object]) -> None:
        """Put back what ``tensors`` returned (a checkpoint's); a missing entry leaves the state empty."""
        self.ema.average = _arrays(tensors.get("ema"))
        for k, step in enumerate(self.steps):
            if isinstance(step, ServerOptimizer):
                step.velocity = _arrays(tensors.get(f"velocity-{k}"))


def _tensors(arrays: list[np.ndarray] | None) -> list[torch.Tensor] | None:
    return None if arrays is None else [torch.from_numpy(np.array(a, copy=True)) for a in arrays]


def _arrays(tensors: object) -> list[np.ndarray] | None:
    if not isinstance(tensors, list):
        return None
    return [t.numpy().copy() for t in tensors if isinstance(t, torch.Tensor)]
