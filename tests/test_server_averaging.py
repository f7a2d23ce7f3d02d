"""Server momentum (FedAvgM) and the EMA of released models follow their formulas exactly, leave integer
buffers alone, and reduce to plain FedAvg when switched off."""

from __future__ import annotations

from collections import OrderedDict

import numpy as np
import pytest
import torch
from flwr.app import ArrayRecord

from dpfl.server.averaging import ParameterEma, PostProcessing, ServerOptimizer


def _record(w: float, steps: int) -> ArrayRecord:
    return ArrayRecord(OrderedDict([("w", torch.full((2, 2), w, dtype=torch.float32)),
                                    ("count", torch.tensor(steps, dtype=torch.int64))]))


def _w(record: ArrayRecord) -> float:
    return float(record.to_numpy_ndarrays()[0][0, 0])


def test_plain_fedavg_returns_the_average_unchanged() -> None:
    averaged = _record(3.0, 1)
    assert ServerOptimizer(1.0, 0.0).step(_record(1.0, 0), averaged) is averaged


def test_momentum_and_learning_rate_follow_fedavgm() -> None:
    lr, beta = 0.5, 0.9
    opt = ServerOptimizer(lr, beta)
    x0 = 1.0
    x1 = _w(opt.step(_record(x0, 0), _record(3.0, 1)))  # d1 = 2: v1 = 2, x1 = 1 + 0.5 * 2
    assert x1 == pytest.approx(2.0)
    out = opt.step(_record(x1, 1), _record(x1 - 1.0, 7))  # d2 = -1: v2 = 0.9 * 2 - 1 = 0.8
    assert _w(out) == pytest.approx(x1 + lr * 0.8)
    assert int(out.to_numpy_ndarrays()[1]) == 7  # integer buffers come from the newest average
    assert out.to_numpy_ndarrays()[0].dtype == np.float32


def test_ema_is_the_exponential_average_of_iterates() -> None:
    ema = ParameterEma(0.75)
    iterates = [1.0, 5.0, -3.0]
    want = iterates[0]
    for i, x in enumerate(iterates):
        if i:
            want = 0.75 * want + 0.25 * x
        released = ema.update(_record(x, i))
        assert _w(released) == pytest.approx(want)
        assert int(released.to_numpy_ndarrays()[1]) == i
    assert released.to_numpy_ndarrays()[0].dtype == np.float32


def test_ema_off_releases_the_iterate() -> None:
    iterate = _record(2.0, 0)
    assert ParameterEma(0.0).update(iterate) is iterate


def test_post_processing_applies_its_steps_in_order_then_the_ema() -> None:
    """The seam: steps see the sent model and the aggregate so far; the EMA makes the released model."""
    calls: list[str] = []

    def add_one(sent: ArrayRecord, aggregate: ArrayRecord) -> ArrayRecord:
        calls.append("add")
        return _record(_w(aggregate) + 1.0, 0)

    def double(sent: ArrayRecord, aggregate: ArrayRecord) -> ArrayRecord:
        calls.append("double")
        return _record(2.0 * _w(aggregate), 0)

    post = PostProcessing(steps=[add_one, double, ServerOptimizer(1.0, 0.0)], ema=ParameterEma(0.5))
    model = post.next_model(_record(0.0, 0), _record(3.0, 0))
    assert calls == ["add", "double"] and _w(model) == 8.0
    assert _w(post.next_model(None, _record(3.0, 0))) == 3.0  # nothing to step from
    assert _w(post.release(model)) == 8.0  # first EMA value is the model
    assert _w(post.release(_record(0.0, 1))) == 4.0
