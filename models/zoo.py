"""Models by name. Each takes the per-example input shape and the number of classes."""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import nn


class UnknownModelError(ValueError):
    """An unknown model name; the message lists the known ones."""


def _flat_size(features: nn.Module, input_shape: tuple[int, ...]) -> int:
    with torch.no_grad():
        return int(features(torch.zeros(1, *input_shape)).numel())


class TanhCNN(nn.Module):
    """Papernot et al. 2021 (tempered sigmoids): tanh activations suit clipped, noised gradients."""

    def __init__(self, input_shape: tuple[int, ...], num_classes: int) -> None:
        super().__init__()
        if len(input_shape) != 3 or min(input_shape[1:]) < 14:
            raise ValueError(f"cnn needs image inputs of at least C x 14 x 14, got {input_shape}; "
                             "use mlp or logreg for smaller inputs")
        self.features = nn.Sequential(
            nn.Conv2d(input_shape[0], 16, 8, stride=2, padding=3), nn.Tanh(), nn.MaxPool2d(2, 1),
            nn.Conv2d(16, 32, 4, stride=2), nn.Tanh(), nn.MaxPool2d(2, 1), nn.Flatten())
        self.classifier = nn.Sequential(nn.Linear(_flat_size(self.features, input_shape), 32), nn.Tanh(),
                                        nn.Linear(32, num_classes))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.classifier(self.features(x))


def _numel(shape: tuple[int, ...]) -> int:
    n = 1
    for d in shape:
        n *= d
    return n


def mlp(input_shape: tuple[int, ...], num_classes: int, hidden: int = 128) -> nn.Module:
    return nn.Sequential(nn.Flatten(), nn.Linear(_numel(input_shape), hidden), nn.Tanh(),
                         nn.Linear(hidden, num_classes))


def logreg(input_shape: tuple[int, ...], num_classes: int) -> nn.Module:
    return nn.Sequential(nn.Flatten(), nn.Linear(_numel(input_shape), num_classes))


class _Block(nn.Module):
    def __init__(self, cin: int, cout: int, stride: int) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(cin, cout, 3, stride=stride, padding=1, bias=False)
        self.norm1 = nn.GroupNorm(min(16, cout), cout)
        self.conv2 = nn.Conv2d(cout, cout, 3, padding=1, bias=False)
        self.norm2 = nn.GroupNorm(min(16, cout), cout)
        self.act = nn.Tanh()
        self.skip = (nn.Sequential(nn.Conv2d(cin, cout, 1, stride=stride, bias=False), nn.GroupNorm(min(16, cout), cout))
                     if stride != 1 or cin != cout else nn.Identity())

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.act(self.norm1(self.conv1(x)))
        return self.act(self.norm2(self.conv2(out)) + self.skip(x))


class ResNet(nn.Module):
    """A small ResNet with GroupNorm (BatchNorm mixes samples and breaks per-sample DP)."""

    def __init__(self, input_shape: tuple[int, ...], num_classes: int, widths: tuple[int, ...] = (16, 32, 64)) -> None:
        super().__init__()
        if len(input_shape) != 3 or min(input_shape[1:]) < 8:
            raise ValueError(f"resnet needs image inputs of at least C x 8 x 8, got {input_shape}")
        c = input_shape[0]
        self.stem = nn.Sequential(nn.Conv2d(c, widths[0], 3, padding=1, bias=False),
                                  nn.GroupNorm(min(16, widths[0]), widths[0]), nn.Tanh())
        blocks, cin = [], widths[0]
        for i, w in enumerate(widths):
            blocks.append(_Block(cin, w, stride=1 if i == 0 else 2))
            cin = w
        self.blocks = nn.Sequential(*blocks)
        self.head = nn.Sequential(nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(cin, num_classes))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.blocks(self.stem(x)))


MODELS: dict[str, Callable[[tuple[int, ...], int], nn.Module]] = {
    "cnn": TanhCNN,
    "mlp": mlp,
    "logreg": logreg,
    "resnet": ResNet,
}


def build_model(name: str, input_shape: tuple[int, ...], num_classes: int) -> nn.Module:
    if name not in MODELS:
        raise UnknownModelError(f"unknown model {name!r}; known models: {', '.join(sorted(MODELS))}")
    return MODELS[name](tuple(input_shape), int(num_classes))
