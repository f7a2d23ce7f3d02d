"""The run config: defaults mirror pyproject, bad values are rejected with a useful message."""

from __future__ import annotations

import subprocess
import sys
import tomllib
from pathlib import Path

import pytest

from dpfl.simulations.config import DEFAULTS, ConfigError, parse_run_config_string, resolve

ROOT = Path(__file__).resolve().parents[1]


def test_pyproject_defaults_equal_schema() -> None:
    table = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["flwr"]["app"]["config"]
    assert table == DEFAULTS


def test_the_configuration_doc_shows_the_schema() -> None:
    from dpfl.simulations.config.options import markdown_table

    assert markdown_table().strip() in (ROOT / "docs" / "configuration.md").read_text()


def test_defaults_resolve() -> None:
    cfg = resolve()
    assert cfg["num-clients"] == 10 and cfg["dp"] is True


@pytest.mark.parametrize(
    ("overrides", "needle"),
    [
        ({"num-clients": 0}, "num-clients=0"),
        ({"noise-multiplier": -1}, "noise-multiplier=-1"),
        ({"fraction-train": 1.5}, "fraction-train=1.5"),
        ({"delta": 1.0}, "delta=1.0"),
        ({"dataset": "imagenet"}, "fashion-mnist, digits, synthetic"),
        ({"model": "gpt"}, "cnn"),
        ({"num-server-rounds": "ten"}, "an integer"),
        ({"dp": "maybe"}, "true or false"),
        ({"learning-rate": float("nan")}, "learning-rate"),
        ({"nosie-multiplier": 1.0}, "unknown config key 'nosie-multiplier'"),
        ({"max-participations": 20, "num-server-rounds": 5}, "max-participations=20"),
        ({"dp": False, "epsilon-budget": 3.0}, "needs dp=true"),
        ({"fraction-evaluate": 0.5}, "set validation-fraction > 0"),
    ],
)
def test_bad_values_name_key_value_and_allowed(overrides: dict, needle: str) -> None:
    with pytest.raises(ConfigError) as info:
        resolve(overrides)
    assert needle in str(info.value)


def test_string_values_are_coerced() -> None:
    cfg = resolve(parse_run_config_string("num-clients=3 dp=false learning-rate=0.05 partition=dirichlet"))
    assert cfg["num-clients"] == 3 and cfg["dp"] is False and cfg["learning-rate"] == 0.05


def test_cli_rejects_bad_value_with_exit_code_2() -> None:
    proc = subprocess.run([sys.executable, "-m", "dpfl.simulations.cli.main", "simulate", "--num-clients", "-3"],
                          capture_output=True, text=True, cwd=ROOT, timeout=120)
    assert proc.returncode == 2
    assert "num-clients=-3" in proc.stderr and "Traceback" not in proc.stderr
    assert len(proc.stderr.strip().splitlines()) == 1


def test_explicit_noise_multiplier_turns_calibration_off() -> None:
    from dpfl.simulations.cli.main import build_parser
    from dpfl.simulations.config import config_from_args

    assert config_from_args(build_parser().parse_args(["simulate"]))["target-epsilon"] == 3.0
    cfg = config_from_args(build_parser().parse_args(["simulate", "--noise-multiplier", "1.2"]))
    assert cfg["target-epsilon"] == 0.0 and cfg["noise-multiplier"] == 1.2
    args = ["simulate", "--noise-multiplier", "1.2", "--target-epsilon", "2"]
    cfg = config_from_args(build_parser().parse_args(args))
    assert cfg["target-epsilon"] == 2.0


def test_cli_config_file_and_flag_precedence(tmp_path: Path) -> None:
    from dpfl.simulations.cli.main import build_parser
    from dpfl.simulations.config import config_from_args

    toml = tmp_path / "run.toml"
    toml.write_text('num-clients = 4\nbatch-size = 32\n')
    args = build_parser().parse_args(["simulate", "--config", str(toml), "--batch-size", "16"])
    cfg = config_from_args(args)
    assert cfg["num-clients"] == 4 and cfg["batch-size"] == 16


def test_preset_is_a_layer_under_the_users_own_values(tmp_path: Path) -> None:
    from dpfl.simulations.cli.main import build_parser
    from dpfl.simulations.config import config_from_args
    from dpfl.simulations.config.presets import PRESETS

    name = "fashion-mnist-accurate"
    cfg = config_from_args(build_parser().parse_args(["simulate", "--preset", name]))
    assert {k: cfg[k] for k in PRESETS[name].values} == pytest.approx(PRESETS[name].values)
    toml = tmp_path / "run.toml"
    toml.write_text("num-server-rounds = 3\n")
    cfg = config_from_args(build_parser().parse_args(["simulate", "--preset", name, "--config", str(toml),
                                                      "--batch-size", "64"]))
    assert (cfg["num-server-rounds"], cfg["batch-size"], cfg["learning-rate"]) == (3, 64, 0.2)
    # the user's explicit sigma turns the preset's calibration off, as it does the default's
    cfg = config_from_args(build_parser().parse_args(["simulate", "--preset", name, "--noise-multiplier", "1.5"]))
    assert cfg["target-epsilon"] == 0.0 and cfg["noise-multiplier"] == 1.5


def test_unknown_preset_is_a_usage_error_listing_the_known_ones(capsys: pytest.CaptureFixture[str]) -> None:
    from dpfl.simulations.cli.main import main

    with pytest.raises(SystemExit) as exc:
        main(["simulate", "--preset", "fastest-ever"])
    assert exc.value.code == 2
    assert "fashion-mnist-accurate" in capsys.readouterr().err
