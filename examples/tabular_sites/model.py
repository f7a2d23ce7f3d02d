"""A data owner's own model for the tabular federation: any ``nn.Module`` factory works with
``--model model:TabularNet`` when this folder is the working directory (or on PYTHONPATH).

dpfl calls ``TabularNet(input_shape, num_classes)``; Opacus' checks run before training. No BatchNorm
(it mixes examples across a batch, which per-sample clipping cannot bound); a plain MLP is exact under
every grad-sample mode.
"""

from __future__ import annotations

from torch import nn


class TabularNet(nn.Sequential):
    """Two-layer perceptron over the scaled features."""

    def __init__(self, input_shape: tuple[int, ...], num_classes: int, hidden: int = 32) -> None:
        (features,) = input_shape
        super().__init__(nn.Linear(features, hidden), nn.ReLU(), nn.Linear(hidden, num_classes))
