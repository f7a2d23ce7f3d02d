"""DP checks before training: Opacus' rules with their fixes, the data's shapes, no mixing of examples in a batch."""

from __future__ import annotations

import pytest
import torch
from opacus.layers import DPLSTM
from opacus.validators import ModuleValidator
from torch import nn

from dpfl.models import MODELS, build_model
from dpfl.models.dp_check import ModelDPError, check_model_for_dp, mixes_examples, validator_problems


def _bn_model() -> nn.Module:
    return nn.Sequential(nn.Conv2d(1, 4, 3), nn.BatchNorm2d(4), nn.ReLU(), nn.Flatten(), nn.Linear(4 * 6 * 6, 3))


class _Named(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(1, 4, 3)
        self.bn1 = nn.BatchNorm2d(4)
        self.head = nn.Sequential(nn.Flatten(), nn.Linear(4 * 6 * 6, 3))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.bn1(self.conv1(x)).relu())


class _BatchCentred(nn.Module):
    """Mixes examples without any layer Opacus' validator knows: batch statistics in forward."""

    def __init__(self) -> None:
        super().__init__()
        self.fc = nn.Linear(4, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(x - x.mean(0, keepdim=True))


@pytest.mark.parametrize("name", sorted(MODELS))
def test_every_zoo_model_passes(name: str) -> None:
    shape = {"resnet": (3, 16, 16), "lstm": (48,)}.get(name, (1, 28, 28))
    result = check_model_for_dp(build_model(name, shape, 10), shape, 10)
    assert result.output_shape == (2, 10) and not result.fixed


def test_batchnorm_is_refused_with_the_layer_and_the_fix_named() -> None:
    with pytest.raises(ModelDPError) as info:
        check_model_for_dp(_Named(), (1, 8, 8), 3)
    message = str(info.value)
    assert "BatchNorm2d at layer 'bn1' mixes examples across a batch: use GroupNorm (ModuleValidator.fix), " \
           "or pass --fix-model" in message
    assert "example 0's output changes when only example 1" in message  # the functional check agrees
    assert "\n" not in message and len(info.value.problems) == 2


def test_fix_replaces_batchnorm_and_says_what_changed() -> None:
    model = _bn_model()
    result = check_model_for_dp(model, (1, 8, 8), 3, fix=True)
    assert result.fixed and len(result.changes) == 1
    assert "layer '1': BatchNorm2d -> GroupNorm(" in result.changes[0]
    assert ModuleValidator.validate(result.model, strict=False) == []
    assert not any(isinstance(m, nn.BatchNorm2d) for m in result.model.modules())
    assert any(isinstance(m, nn.BatchNorm2d) for m in model.modules())  # the caller's model is untouched
    assert not mixes_examples(result.model, (1, 8, 8))


def test_frozen_or_affine_free_batchnorm_is_refused_even_though_opacus_skips_it() -> None:
    frozen = _bn_model()
    for p in frozen[1].parameters():
        p.requires_grad_(False)
    no_affine = nn.Sequential(nn.Linear(4, 3), nn.BatchNorm1d(3, affine=False))
    for model, shape in ((frozen, (1, 8, 8)), (no_affine, (4,))):
        assert ModuleValidator.validate(model, strict=False) == []  # Opacus sees nothing wrong
        with pytest.raises(ModelDPError, match="Opacus' validator and ModuleValidator.fix skip it"):
            check_model_for_dp(model, shape, 3, fix=True)


def test_functional_check_catches_mixing_the_validator_cannot_see() -> None:
    assert validator_problems(_BatchCentred()) == []
    with pytest.raises(ModelDPError, match="mixes examples across a batch.*x - x.mean"):
        check_model_for_dp(_BatchCentred(), (4,), 3)


def test_dropout_is_not_mistaken_for_mixing() -> None:
    model = nn.Sequential(nn.Linear(4, 16), nn.Tanh(), nn.Dropout(0.5), nn.Linear(16, 3))
    assert not mixes_examples(model, (4,))
    check_model_for_dp(model, (4,), 3)


def test_wrong_output_shape_and_wrong_input_shape_are_clear() -> None:
    with pytest.raises(ModelDPError, match=r"output has shape \(2, 3\) for a batch of 2; expected \(2, 5\)"):
        check_model_for_dp(nn.Sequential(nn.Flatten(), nn.Linear(4, 3)), (4,), 5)
    with pytest.raises(ModelDPError) as info:
        check_model_for_dp(nn.Sequential(nn.Flatten(), nn.Linear(4, 3)), (1, 3, 3), 3)
    assert "does not accept the data's inputs (a batch of shape (2, 1, 3, 3)" in str(info.value)
    assert "per-example inputs of shape (1, 3, 3)" in str(info.value)

    class Pair(nn.Module):
        def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
            return x, x

    with pytest.raises(ModelDPError, match="returns a tuple, not a tensor of logits"):
        check_model_for_dp(Pair(), (3,), 3)


def test_check_leaves_buffers_and_mode_alone() -> None:
    model = _bn_model().eval()
    before = model[1].running_mean.clone()
    with pytest.raises(ModelDPError):
        check_model_for_dp(model, (1, 8, 8), 3)
    assert torch.equal(model[1].running_mean, before) and not model.training


@pytest.mark.filterwarnings("ignore::UserWarning")
def test_lstm_is_refused_and_fixed_to_dplstm_keeping_weights() -> None:
    class Recurrent(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.rnn = nn.LSTM(4, 8, batch_first=True)
            self.fc = nn.Linear(8, 3)

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return self.fc(self.rnn(x)[0][:, -1])

    with pytest.raises(ModelDPError, match="LSTM at layer 'rnn' has no per-sample gradients in Opacus: use "
                                           "opacus.layers.DPLSTM"):
        check_model_for_dp(Recurrent(), (6, 4), 3)
    result = check_model_for_dp(Recurrent(), (6, 4), 3, fix=True)
    assert isinstance(result.model.rnn, DPLSTM) and "same weights" in result.changes[0]


def test_token_inputs_with_an_embedding() -> None:
    class Bag(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.emb = nn.Embedding(10, 4)
            self.fc = nn.Linear(4, 3)

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return self.fc(self.emb(x).mean(1))

    assert check_model_for_dp(Bag(), (5,), 3, input_dtype=torch.long).output_shape == (2, 3)
