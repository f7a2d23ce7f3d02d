"""A data owner's own CNN for ``--model cnn:SmallCNN`` (this folder the working directory or on PYTHONPATH).

GroupNorm, not BatchNorm: BatchNorm mixes the examples of a batch, so per-sample clipping could not bound
one record's influence and dpfl refuses it under DP (``--fix-model`` would swap it for GroupNorm).
"""

from __future__ import annotations

from torch import nn


class SmallCNN(nn.Module):
    """Two convolutions and a linear head, for small greyscale or colour images (C x H x W)."""

    def __init__(self, input_shape: tuple[int, ...], num_classes: int, width: int = 16) -> None:
        super().__init__()
        channels, height, width_px = input_shape
        self.features = nn.Sequential(
            nn.Conv2d(channels, width, 3, padding=1), nn.GroupNorm(4, width), nn.ReLU(),
            nn.Conv2d(width, 2 * width, 3, padding=1, stride=2), nn.GroupNorm(4, 2 * width), nn.ReLU(),
        )
        self.head = nn.Linear(2 * width * ((height + 1) // 2) * ((width_px + 1) // 2), num_classes)

    def forward(self, x):  # noqa: ANN001, ANN201 - nn.Module's signature
        return self.head(self.features(x).flatten(1))
