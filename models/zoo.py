"""Models by name. Each factory takes the per-example input shape and the number of classes.

Every model must be usable with Opacus per-sample gradients, so nothing here mixes examples within a
batch: no BatchNorm (GroupNorm where normalisation helps), no running statistics.
"""

from __future__ import annotations

import math
from collections.abc import Callable

import torch
from torch import nn

from dpfl.models.text import VOCABULARY_SIZE, TextLSTM

ModelFactory = Callable[[tuple[int, ...], int], nn.Module]

CNN_MIN_SIZE = 14  # smallest H and W the tanh CNN's two strided convs and pools can reduce to >= 1x1
RESNET_MIN_SIZE = 8


class UnknownModelError(ValueError):
    """An unknown model name; the message lists the known ones so the user can fix the config."""


class IncompatibleInputError(ValueError):
    """A model cannot take inputs of this shape; the message names the model and what it needs."""


def _numel(shape: tuple[int, ...]) -> int:
    return math.prod(shape)


def _require_image(model: str, input_shape: tuple[int, ...], min_size: int) -> None:
    """Fail early with a fix, instead of a shape error deep inside a forward pass."""
    if len(input_shape) != 3 or min(input_shape[1:]) < min_size or input_shape[0] < 1:
        raise IncompatibleInputError(
            f"model {model!r} needs image inputs of shape C x H x W with H, W >= {min_size}, got "
            f"{tuple(input_shape)}; use 'mlp' or 'logreg', which take any input shape")


class FastMaxPool2d(nn.MaxPool2d):
    """``nn.MaxPool2d`` with a fast inference path for the 2 x 2, stride 1 pooling of the tanh CNN: without
    autograd, the elementwise maximum of four shifted views gives the same values 18-37x faster than
    PyTorch's CPU kernel for this shape (which also computes argmax indices). Training takes the stock path,
    so gradients are exactly nn.MaxPool2d's. Server-side evaluation is most of a small round's time."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if (not torch.is_grad_enabled() and self.kernel_size in (2, (2, 2)) and self.stride in (1, (1, 1))
                and self.padding in (0, (0, 0)) and self.dilation in (1, (1, 1)) and not self.ceil_mode
                and not self.return_indices):
            rows = torch.maximum(x[..., :-1, :], x[..., 1:, :])
            return torch.maximum(rows[..., :-1], rows[..., 1:])
        return super().forward(x)


class TanhCNN(nn.Module):
    """Papernot et al. 2021 (tempered sigmoids): tanh keeps activations bounded, so clipped, noised
    gradients lose less signal than with ReLU. Sized for 28x28; other sizes >= 14x14 work too."""

    def __init__(self, input_shape: tuple[int, ...], num_classes: int) -> None:
        super().__init__()
        _require_image("cnn", input_shape, CNN_MIN_SIZE)
        self.features = nn.Sequential(
            nn.Conv2d(input_shape[0], 16, 8, stride=2, padding=3), nn.Tanh(), FastMaxPool2d(2, 1),
            nn.Conv2d(16, 32, 4, stride=2), nn.Tanh(), FastMaxPool2d(2, 1), nn.Flatten())
        with torch.no_grad():  # flatten size from a dummy forward: 32*4*4 for 28x28
            flat = int(self.features(torch.zeros(1, *input_shape)).shape[1])
        self.classifier = nn.Sequential(nn.Linear(flat, 32), nn.Tanh(), nn.Linear(32, num_classes))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.classifier(self.features(x))


class MLP(nn.Sequential):
    """One tanh hidden layer: a baseline for any input shape (features or small images)."""

    def __init__(self, input_shape: tuple[int, ...], num_classes: int, hidden: int = 128) -> None:
        super().__init__(nn.Flatten(), nn.Linear(_numel(input_shape), hidden), nn.Tanh(),
                         nn.Linear(hidden, num_classes))


class LogReg(nn.Sequential):
    """Multinomial logistic regression: convex, so DP and FL effects are not confounded by optimisation."""

    def __init__(self, input_shape: tuple[int, ...], num_classes: int) -> None:
        super().__init__(nn.Flatten(), nn.Linear(_numel(input_shape), num_classes))


def _group_norm(channels: int) -> nn.GroupNorm:
    """GroupNorm normalises within one example (BatchNorm would leak across the batch under DP)."""
    return nn.GroupNorm(math.gcd(16, channels), channels)


class BasicBlock(nn.Module):
    """Two 3x3 convs with GroupNorm and a (projected when the shape changes) skip connection."""

    def __init__(self, cin: int, cout: int, stride: int) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(cin, cout, 3, stride=stride, padding=1, bias=False)
        self.norm1 = _group_norm(cout)
        self.conv2 = nn.Conv2d(cout, cout, 3, padding=1, bias=False)
        self.norm2 = _group_norm(cout)
        self.act = nn.ReLU()
        self.skip: nn.Module = nn.Identity()
        if stride != 1 or cin != cout:
            self.skip = nn.Sequential(nn.Conv2d(cin, cout, 1, stride=stride, bias=False), _group_norm(cout))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.act(self.norm1(self.conv1(x)))
        return self.act(self.norm2(self.conv2(out)) + self.skip(x))


class ResNet(nn.Module):
    """ResNet-8 (CIFAR style: 3x3 stem, one basic block per stage, widths 16/32/64) with GroupNorm,
    the usual small DP-CIFAR-10 backbone: few parameters keep the DP noise per coordinate tolerable."""

    def __init__(self, input_shape: tuple[int, ...], num_classes: int,
                 widths: tuple[int, ...] = (16, 32, 64)) -> None:
        super().__init__()
        _require_image("resnet", input_shape, RESNET_MIN_SIZE)
        self.stem = nn.Sequential(nn.Conv2d(input_shape[0], widths[0], 3, padding=1, bias=False),
                                  _group_norm(widths[0]), nn.ReLU())
        blocks: list[nn.Module] = []
        cin = widths[0]
        for i, width in enumerate(widths):
            blocks.append(BasicBlock(cin, width, stride=1 if i == 0 else 2))
            cin = width
        self.blocks = nn.Sequential(*blocks)
        self.head = nn.Sequential(nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(cin, num_classes))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.blocks(self.stem(x)))


MODELS: dict[str, ModelFactory] = {
    "cnn": TanhCNN,
    "mlp": MLP,
    "logreg": LogReg,
    "resnet": ResNet,
    "lstm": TextLSTM,
}

# What each model accepts, for config validation before any data is loaded.
INPUT_REQUIREMENTS: dict[str, str] = {
    "cnn": f"C x H x W images with H, W >= {CNN_MIN_SIZE} (designed for 1 x 28 x 28)",
    "mlp": "any shape (flattened)",
    "logreg": "any shape (flattened)",
    "resnet": f"C x H x W images with H, W >= {RESNET_MIN_SIZE} (designed for 3 x 32 x 32)",
    "lstm": f"token ids, shape L (a sequence of length L; ids 0..{VOCABULARY_SIZE - 1}, 0 pads)",
}


def _known(name: str) -> None:
    if name not in MODELS:
        raise UnknownModelError(f"unknown model {name!r}; known models: {', '.join(sorted(MODELS))}")


def check_input_shape(name: str, input_shape: tuple[int, ...]) -> None:
    """Raise UnknownModelError / IncompatibleInputError without building anything (cheap config check)."""
    _known(name)
    shape = tuple(int(d) for d in input_shape)
    if name == "cnn":
        _require_image(name, shape, CNN_MIN_SIZE)
    elif name == "resnet":
        _require_image(name, shape, RESNET_MIN_SIZE)
    elif name == "lstm" and (len(shape) != 1 or shape[0] < 1):
        raise IncompatibleInputError(f"model 'lstm' needs token-id sequences of shape L, got {shape}; use a text "
                                     "dataset (--dataset fortunes)")


def build_model(name: str, input_shape: tuple[int, ...], num_classes: int) -> nn.Module:
    """A freshly initialised model (seed torch beforehand for reproducible weights)."""
    check_input_shape(name, input_shape)
    if int(num_classes) < 2:
        raise ValueError(f"num_classes must be >= 2, got {num_classes}")
    return MODELS[name](tuple(int(d) for d in input_shape), int(num_classes))
