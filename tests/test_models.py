"""Every zoo model must build, be Opacus-valid, and take a DP-SGD step with per-sample gradients."""

from __future__ import annotations

import pytest
import torch
from opacus.grad_sample import GradSampleModule, GradSampleModuleFastGradientClipping
from opacus.optimizers import DPOptimizer
from opacus.validators import ModuleValidator
from torch import nn

from dpfl.models import (
    INPUT_REQUIREMENTS,
    MODELS,
    IncompatibleInputError,
    UnknownModelError,
    build_model,
    check_input_shape,
)

# (model, input shape) pairs each model is meant for, plus other shapes it must also accept.
CASES = [
    ("cnn", (1, 28, 28)), ("cnn", (3, 32, 32)), ("cnn", (1, 14, 14)),
    ("mlp", (1, 28, 28)), ("mlp", (1, 8, 8)), ("mlp", (60,)),
    ("logreg", (1, 28, 28)), ("logreg", (60,)),
    ("resnet", (3, 32, 32)), ("resnet", (1, 28, 28)), ("resnet", (1, 8, 8)),
    ("lstm", (48,)), ("lstm", (12,)),
]
NUM_CLASSES = 10


def _batch(shape: tuple[int, ...], n: int = 5) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(0)
    return torch.randn(n, *shape, generator=g), torch.randint(0, NUM_CLASSES, (n,), generator=g)


def test_every_registered_model_is_covered() -> None:
    assert {name for name, _ in CASES} == set(MODELS) == set(INPUT_REQUIREMENTS)


@pytest.mark.parametrize(("name", "shape"), CASES)
def test_builds_validates_and_forwards(name: str, shape: tuple[int, ...]) -> None:
    model = build_model(name, shape, NUM_CLASSES)
    assert ModuleValidator.validate(model, strict=True) == []
    assert not any(isinstance(m, nn.modules.batchnorm._BatchNorm) for m in model.modules())
    x, _ = _batch(shape)
    assert model(x).shape == (5, NUM_CLASSES)


def test_cnn_matches_papernot_architecture_on_28x28() -> None:
    model = build_model("cnn", (1, 28, 28), NUM_CLASSES)
    convs = [m for m in model.modules() if isinstance(m, nn.Conv2d)]
    linears = [m for m in model.modules() if isinstance(m, nn.Linear)]
    assert [(c.in_channels, c.out_channels, c.kernel_size, c.stride, c.padding) for c in convs] == [
        (1, 16, (8, 8), (2, 2), (3, 3)), (16, 32, (4, 4), (2, 2), (0, 0))]
    assert [(lin.in_features, lin.out_features) for lin in linears] == [(32 * 4 * 4, 32), (32, NUM_CLASSES)]
    assert sum(isinstance(m, nn.Tanh) for m in model.modules()) == 3


@pytest.mark.filterwarnings("ignore:Full backward hook is firing")  # inputs need no grad: expected
@pytest.mark.parametrize(("name", "shape"), CASES)
def test_one_dp_sgd_step_with_per_sample_gradients(name: str, shape: tuple[int, ...]) -> None:
    torch.manual_seed(0)
    model = build_model(name, shape, NUM_CLASSES)
    before = [p.detach().clone() for p in model.parameters()]
    gsm = GradSampleModule(model, loss_reduction="mean")
    optimizer = DPOptimizer(torch.optim.SGD(gsm.parameters(), lr=0.1), noise_multiplier=1.0,
                            max_grad_norm=1.0, expected_batch_size=5)
    x, y = _batch(shape)
    nn.functional.cross_entropy(gsm(x), y).backward()
    for pname, p in gsm.named_parameters():
        if p.requires_grad:
            assert p.grad_sample is not None, pname
            assert p.grad_sample.shape == (5, *p.shape), pname
    optimizer.step()
    assert all(not torch.equal(b, p) for b, p in zip(before, model.parameters(), strict=True))


@pytest.mark.parametrize("name", ["mlp", "cnn"])
def test_ghost_clipping_wraps(name: str) -> None:
    shape = (1, 28, 28)
    gsm = GradSampleModuleFastGradientClipping(build_model(name, shape, NUM_CLASSES), max_grad_norm=1.0,
                                               use_ghost_clipping=True, loss_reduction="mean")
    x, _ = _batch(shape)
    assert gsm(x).shape == (5, NUM_CLASSES)


def test_unknown_model_lists_known_names() -> None:
    with pytest.raises(UnknownModelError) as info:
        build_model("vgg", (1, 28, 28), NUM_CLASSES)
    for name in MODELS:
        assert name in str(info.value)
    assert isinstance(info.value, ValueError)


@pytest.mark.parametrize(("name", "shape", "needed"), [
    ("cnn", (1, 8, 8), "14"), ("cnn", (60,), "14"), ("resnet", (60,), "8"), ("resnet", (3, 4, 4), "8")])
def test_too_small_or_flat_inputs_name_the_model_and_minimum(name: str, shape: tuple[int, ...],
                                                            needed: str) -> None:
    with pytest.raises(IncompatibleInputError) as info:
        build_model(name, shape, NUM_CLASSES)
    assert repr(name) in str(info.value) and needed in str(info.value) and "mlp" in str(info.value)
    with pytest.raises(IncompatibleInputError):
        check_input_shape(name, shape)


def test_check_input_shape_accepts_what_builds() -> None:
    for name, shape in CASES:
        check_input_shape(name, shape)


def test_fast_max_pool_matches_max_pool_with_and_without_autograd() -> None:
    from dpfl.models.zoo import FastMaxPool2d

    x = torch.randn(5, 3, 11, 8, requires_grad=True)
    stock, fast = nn.MaxPool2d(2, 1), FastMaxPool2d(2, 1)
    with torch.no_grad():
        assert torch.equal(fast(x), stock(x))  # the fast inference path
    g = torch.randn(5, 3, 10, 7)
    assert torch.equal(torch.autograd.grad(fast(x), x, g)[0], torch.autograd.grad(stock(x), x, g)[0])
    with torch.no_grad():  # other shapes take the stock path
        assert torch.equal(FastMaxPool2d(3, 2)(x), nn.MaxPool2d(3, 2)(x))
