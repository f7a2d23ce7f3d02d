"""Bring your own model: specs resolve to zoo, module:factory and entry-point models; auto picks a mode and says why."""

from __future__ import annotations

import sys
import textwrap
from collections.abc import Iterator
from pathlib import Path

import pytest
import torch
from opacus.layers import DPLSTM
from torch import nn

from dpfl.client.bookkeeping import unsupported_layers
from dpfl.client.dp_modes import FASTEST_MODE, ModeChoice, choose_mode, resolve_auto
from dpfl.client.training import TrainSettings
from dpfl.models import (
    MODELS,
    ModelPluginError,
    UnknownModelError,
    build_model,
    check_model_spec,
    plugin_names,
    resolve_model,
)
from dpfl.models.zoo import TanhCNN

USER_MODELS = """
import torch
from torch import nn

class Net(nn.Module):
    def __init__(self, input_shape, num_classes):
        super().__init__()
        self.body = nn.Sequential(nn.Flatten(), nn.Linear(int(torch.tensor(input_shape).prod()), num_classes))

    def forward(self, x):
        return self.body(x)

def make(input_shape, num_classes):
    return Net(input_shape, num_classes)

class Factories:
    @staticmethod
    def small(input_shape, num_classes):
        return nn.Linear(input_shape[0], num_classes)

def wrong_type(input_shape, num_classes):
    return "not a module"

def boom(input_shape, num_classes):
    raise RuntimeError("the factory is broken")

NOT_CALLABLE = 3
"""


@pytest.fixture
def user_dir(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Path]:
    """A folder outside dpfl on sys.path holding the user's modules (forgotten again after the test)."""
    (tmp_path / "mymodels.py").write_text(textwrap.dedent(USER_MODELS))
    (tmp_path / "brokenmodels.py").write_text("import not_a_real_package_xyz\n")
    (tmp_path / "raisingmodels.py").write_text("raise ValueError('bad config at import')\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    for name in ("mymodels", "brokenmodels", "raisingmodels", "entrymodels"):
        monkeypatch.delitem(sys.modules, name, raising=False)
    yield tmp_path
    for name in ("mymodels", "brokenmodels", "raisingmodels", "entrymodels"):
        sys.modules.pop(name, None)


def test_zoo_names_still_build_the_zoo_models() -> None:
    assert type(build_model("cnn", (1, 28, 28), 10)) is TanhCNN
    assert resolve_model("mlp").kind == "zoo"
    for name in MODELS:
        assert resolve_model(name).factory is MODELS[name]


def test_unknown_name_lists_zoo_and_says_how_to_plug_in() -> None:
    with pytest.raises(UnknownModelError) as info:
        build_model("vgg", (1, 28, 28), 10)
    message = str(info.value)
    assert all(name in message for name in MODELS)
    assert "package.module:factory" in message and "dpfl.models" in message
    assert "\n" not in message


def test_module_factory_function_class_and_dotted_attribute(user_dir: Path) -> None:
    model = build_model("mymodels:make", (1, 4, 4), 3)
    assert model(torch.zeros(2, 1, 4, 4)).shape == (2, 3)
    assert type(build_model("mymodels:Net", (6,), 2)).__name__ == "Net"
    assert isinstance(build_model("mymodels:Factories.small", (5,), 4), nn.Linear)
    assert resolve_model("mymodels:make").kind == "module"
    check_model_spec("mymodels:make", (1, 4, 4))  # resolves without building


@pytest.mark.parametrize(("spec", "needles"), [
    ("brokenmodels:make", ["'brokenmodels' does not import", "not_a_real_package_xyz", "PYTHONPATH"]),
    ("raisingmodels:make", ["importing module 'raisingmodels' raised ValueError: bad config at import"]),
    ("not_a_module_anywhere_xyz:make", ["does not import", "No module named"]),
    ("mymodels:missing", ["has no attribute 'missing'", "make", "Net"]),
    ("mymodels:Factories.nope", ["'mymodels:Factories' has no attribute 'nope'"]),
    ("mymodels:NOT_CALLABLE", ["is a int, not callable"]),
    ("mymodels:wrong_type", ["returned a builtins.str, not a torch.nn.Module"]),
    ("mymodels:boom", ["the factory raised RuntimeError: the factory is broken", "input_shape=(3,)"]),
])
def test_plugin_errors_are_one_line_naming_the_problem_and_fix(user_dir: Path, spec: str,
                                                               needles: list[str]) -> None:
    with pytest.raises(ModelPluginError) as info:
        build_model(spec, (3,), 2)
    message = str(info.value)
    assert "\n" not in message, message
    assert spec.split(":")[0] in message
    for needle in needles:
        assert needle in message, message
    assert isinstance(info.value, ValueError)  # callers catching ValueError (preflight) still catch it


def test_entry_point_group_registers_a_model(user_dir: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    (user_dir / "entrymodels.py").write_text("from torch import nn\n\ndef tiny(input_shape, num_classes):\n"
                                             "    return nn.Linear(input_shape[0], num_classes)\n")
    info = user_dir / "dpfl_tiny_plugin-0.1.dist-info"
    info.mkdir()
    (info / "METADATA").write_text("Metadata-Version: 2.1\nName: dpfl-tiny-plugin\nVersion: 0.1\n")
    (info / "entry_points.txt").write_text("[dpfl.models]\ntiny = entrymodels:tiny\nghost = entrymodels:gone\n")
    assert {"tiny", "ghost"} <= set(plugin_names())
    resolved = resolve_model("tiny")
    assert resolved.kind == "entry-point" and "entrymodels:tiny" in resolved.source
    assert isinstance(build_model("tiny", (7,), 3), nn.Linear)
    with pytest.raises(ModelPluginError, match="names a missing attribute"):
        build_model("ghost", (7,), 3)
    with pytest.raises(ModelPluginError, match="registered plug-ins: .*tiny"):
        build_model("nothing-registered-here", (7,), 3)


def test_num_classes_checked_for_plugins_too(user_dir: Path) -> None:
    with pytest.raises(ValueError, match="num_classes must be >= 2"):
        build_model("mymodels:make", (3,), 1)


# --- grad-sample-mode "auto" for any model -------------------------------------------------------------------
class _Scale(nn.Module):
    """A layer owning its own parameter: neither book-keeping nor Opacus hooks know it."""

    def __init__(self, n: int) -> None:
        super().__init__()
        self.weight = nn.Parameter(torch.ones(n))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x * self.weight


class _Recurrent(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.rnn = DPLSTM(4, 8, batch_first=True)
        self.fc = nn.Linear(8, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out, _ = self.rnn(x)
        return self.fc(out[:, -1])


class _Reuse(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.layer = nn.Linear(4, 4)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.layer(self.layer(x))


def test_zoo_models_keep_their_measured_mode() -> None:
    for name in MODELS:
        shape = {"resnet": (3, 32, 32), "lstm": (48,)}.get(name, (1, 28, 28))
        choice = choose_mode(build_model(name, shape, 10))
        assert choice.mode == FASTEST_MODE[name] and "zoo model" in choice.reason


def test_auto_picks_bk_for_linear_and_conv_plugins() -> None:
    model = nn.Sequential(nn.Conv2d(1, 4, 3), nn.GroupNorm(2, 4), nn.Tanh(), nn.Flatten(), nn.Linear(4 * 6 * 6, 3))
    assert unsupported_layers(model) == []
    choice = choose_mode(model, torch.randn(2, 1, 8, 8))
    assert choice == ModeChoice("bk", choice.reason) and "book-keeping supports every trainable layer" in choice.reason


@pytest.mark.filterwarnings("ignore::UserWarning")
@pytest.mark.parametrize(("model", "mode", "needles"), [
    (_Recurrent(), "hooks", ["'rnn' (layer type DPLSTM)", "hook for every trainable layer"]),
    (nn.Sequential(nn.Embedding(10, 4), nn.Flatten(), nn.Linear(20, 3)), "hooks", ["layer type Embedding"]),
    (nn.Sequential(nn.Linear(4, 4), _Scale(4)), "functorch", ["layer type _Scale", "no hook for '1' (_Scale)",
                                                              "functorch"]),
])
def test_auto_picks_an_exact_opacus_mode_otherwise_and_says_why(model: nn.Module, mode: str,
                                                               needles: list[str]) -> None:
    choice = choose_mode(model)
    assert choice.mode == mode
    for needle in needles:
        assert needle in choice.reason, choice.reason


def test_raw_lstm_is_sent_to_the_dp_check_fix() -> None:
    class Raw(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.rnn = nn.LSTM(4, 8, batch_first=True)

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return self.rnn(x)[0][:, -1]

    choice = choose_mode(Raw())
    assert choice.mode == "functorch" and "check_model_for_dp" in choice.reason


def test_bk_trial_step_catches_layer_reuse() -> None:
    assert choose_mode(_Reuse()).mode == "bk"  # statically fine: only a forward pass shows the reuse
    choice = choose_mode(_Reuse(), torch.randn(2, 4))
    assert choice.mode == "hooks" and "called once per forward pass" in choice.reason


def test_resolve_auto_uses_the_choice_and_leaves_explicit_modes() -> None:
    settings = TrainSettings(local_epochs=1, batch_size=8, learning_rate=0.1, momentum=0.0, optimizer="sgd",
                             dp=True, noise_multiplier=1.0, max_grad_norm=1.0, grad_sample_mode="auto")
    assert resolve_auto(settings, nn.Linear(3, 2)).grad_sample_mode == "bk"
    assert resolve_auto(settings, _Reuse(), torch.randn(2, 4)).grad_sample_mode == "hooks"
    explicit = TrainSettings(**{**settings.__dict__, "grad_sample_mode": "functorch"})
    assert resolve_auto(explicit, nn.Linear(3, 2)) is explicit
