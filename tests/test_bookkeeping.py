"""client.bookkeeping clips exactly: for every supported layer shape, p.grad equals a per-sample loop's
clipped sum (float64, C = the median per-sample norm so both branches of the clip are used), and it
refuses what it cannot clip with a message that names the fix."""

from __future__ import annotations

import statistics

import pytest
import torch
from torch import nn

from dpfl.client import bookkeeping
from dpfl.client.bookkeeping import BookKeepingClipper, UnsupportedLayerError
from dpfl.models import build_model

TOL = 1e-10


def _loop_clipped_sum(model: nn.Module, x: torch.Tensor, y: torch.Tensor) -> tuple[torch.Tensor, float]:
    """(sum_i min(1, C / (||g_i|| + 1e-6)) g_i over the trainable parameters, C) with C = median norm."""
    params = [p for p in model.parameters() if p.requires_grad]
    grads = []
    for i in range(x.shape[0]):
        loss = nn.functional.cross_entropy(model(x[i:i + 1]), y[i:i + 1])
        grads.append(torch.cat([g.reshape(-1) for g in torch.autograd.grad(loss, params)]))
    max_grad_norm = statistics.median(float(g.norm()) for g in grads)
    total = sum(g * min(1.0, max_grad_norm / (float(g.norm()) + bookkeeping.NORM_EPS)) for g in grads)
    return total, max_grad_norm


def _bk_clipped_sum(model: nn.Module, x: torch.Tensor, y: torch.Tensor, max_grad_norm: float) -> torch.Tensor:
    clipper = BookKeepingClipper(model, max_grad_norm)
    try:
        loss = clipper.clipped_backward(model(x), y)
    finally:
        clipper.close()
    with torch.no_grad():
        assert float(loss) == pytest.approx(float(nn.functional.cross_entropy(model(x), y, reduction="sum")))
    return torch.cat([p.grad.reshape(-1) for p in model.parameters() if p.requires_grad])


class _Sequence(nn.Module):
    """Linear layers on (N, T, d) inputs: the per-position case of the Linear rule."""

    def __init__(self) -> None:
        super().__init__()
        self.embed = nn.Linear(5, 4)
        self.head = nn.Linear(12, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(torch.tanh(self.embed(x)).flatten(1))


def _odd_conv() -> nn.Module:
    return nn.Sequential(nn.Conv2d(2, 3, (3, 2), stride=(2, 1), padding=(1, 2), dilation=(2, 1)), nn.Tanh(),
                         nn.GroupNorm(1, 3), nn.Flatten(), nn.LazyLinear(4))


CASES = {
    "cnn": (lambda: build_model("cnn", (1, 28, 28), 10), (1, 28, 28), 10),
    "resnet": (lambda: build_model("resnet", (3, 16, 16), 10), (3, 16, 16), 10),
    "sequence": (_Sequence, (3, 5), 3),
    "odd-conv": (_odd_conv, (2, 9, 7), 4),
}


@pytest.mark.parametrize("ghost", [False, True], ids=["materialised", "ghost-norm"])
@pytest.mark.parametrize("case", list(CASES))
def test_clipped_sum_equals_per_sample_loop(case: str, ghost: bool, monkeypatch: pytest.MonkeyPatch) -> None:
    if ghost:  # force the T x T ghost norm for every convolution and per-position Linear layer
        monkeypatch.setattr(bookkeeping, "MATERIALISE_LIMIT", 0)
    factory, shape, classes = CASES[case]
    torch.manual_seed(3)
    model = factory().to(torch.float64)
    x, y = torch.randn(12, *shape, dtype=torch.float64), torch.randint(0, classes, (12,))
    model(x)  # materialise lazy layers
    want, max_grad_norm = _loop_clipped_sum(model, x, y)
    got = _bk_clipped_sum(model, x, y, max_grad_norm)
    assert float((got - want).norm() / want.norm()) < TOL


def test_frozen_layers_are_left_alone() -> None:
    torch.manual_seed(0)
    model = build_model("cnn", (1, 28, 28), 10).to(torch.float64)
    for p in model.features.parameters():
        p.requires_grad_(False)
    x, y = torch.randn(8, 1, 28, 28, dtype=torch.float64), torch.randint(0, 10, (8,))
    want, max_grad_norm = _loop_clipped_sum(model, x, y)
    got = _bk_clipped_sum(model, x, y, max_grad_norm)
    assert float((got - want).norm() / want.norm()) < TOL
    assert all(p.grad is None for p in model.features.parameters())


def test_empty_batch_gives_zero_gradient() -> None:
    model = build_model("cnn", (1, 28, 28), 10)
    x, y = torch.zeros(0, 1, 28, 28), torch.zeros(0, dtype=torch.long)
    got = _bk_clipped_sum(model, x, y, 1.0)
    assert got.abs().sum() == 0 and got.numel() == sum(p.numel() for p in model.parameters())


def test_hooks_are_removed_on_close() -> None:
    model = build_model("mlp", (4,), 3)
    BookKeepingClipper(model, 1.0).close()
    assert all(not m._forward_hooks for m in model.modules())


@pytest.mark.parametrize("model", [
    nn.Sequential(nn.Flatten(), nn.Linear(4, 4), nn.LayerNorm(4), nn.Linear(4, 2)),
    nn.Sequential(nn.Conv2d(4, 4, 3, groups=2), nn.Flatten(), nn.Linear(4, 2)),
    nn.Sequential(nn.Conv2d(1, 2, 3, padding="same"), nn.Flatten(), nn.Linear(50, 2)),
], ids=["layernorm", "grouped-conv", "same-padding"])
def test_unsupported_layers_are_refused_with_the_fix(model: nn.Module) -> None:
    with pytest.raises(UnsupportedLayerError, match="grad-sample-mode 'hooks'"):
        BookKeepingClipper(model, 1.0)


def test_in_place_change_of_a_layer_output_is_refused() -> None:
    model = nn.Sequential(nn.Linear(4, 4), nn.ReLU(inplace=True), nn.Linear(4, 2))
    clipper = BookKeepingClipper(model, 1.0)
    with pytest.raises(UnsupportedLayerError, match="in place"):
        clipper.clipped_backward(model(torch.randn(3, 4)), torch.tensor([0, 1, 0]))


def test_a_layer_called_twice_is_refused() -> None:
    layer = nn.Linear(4, 4)

    class Twice(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.layer = layer

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return self.layer(torch.tanh(self.layer(x)))

    model = Twice()
    clipper = BookKeepingClipper(model, 1.0)
    with pytest.raises(UnsupportedLayerError, match="once per forward"):
        clipper.clipped_backward(model(torch.randn(3, 4)), torch.tensor([0, 1, 3]))
