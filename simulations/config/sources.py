"""Where run-config layers come from: TOML files, Flower's ``--run-config`` string, CLI flags, presets.

The precedence is defaults < --preset < --config file < --run-config < explicit flags; ``resolve`` merges
and validates the layers.
"""

from __future__ import annotations

import argparse
import tomllib
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from dpfl.simulations.config.options import OPTIONS, ConfigError, Scalar
from dpfl.simulations.config.run_config import RunConfig, resolve


def read_toml(path: str | Path, what: str = "config file", error: type[Exception] = ConfigError) -> dict[str, Any]:
    """A TOML file as a dict, or ``error`` naming the file and what is wrong with it."""
    p = Path(path)
    if not p.is_file():
        raise error(f"{what} {str(p)!r} does not exist")
    try:
        return tomllib.loads(p.read_text())
    except tomllib.TOMLDecodeError as exc:
        raise error(f"{what} {str(p)!r} is not valid TOML: {exc}") from None


def load_toml(path: str | Path) -> dict[str, Any]:
    """Read a run config TOML file: top-level keys or a [tool.flwr.app.config]-style table."""
    data = read_toml(path)
    table = data.get("tool", {}).get("flwr", {}).get("app", {}).get("config")
    return dict(table) if isinstance(table, dict) else data


def run_config_of(run_dir: str | Path) -> RunConfig:
    """The run config a run directory's config.json records, validated again. The keys the server adds beside
    the run config (``resolved``, ``privacy-statement``, ``environment``: ``privacy.rundata.RUN_DIRECTORY_KEYS``)
    are dropped; every other key must be a known one."""
    from dpfl.privacy.rundata import CONFIG_FILE, read_config, run_config_values

    config = read_config(run_dir)
    if config is None:
        raise ConfigError(f"{Path(run_dir) / CONFIG_FILE} is missing or not a JSON object")
    return resolve(run_config_values(config))


def parse_run_config_string(text: str) -> dict[str, str]:
    """Parse Flower's ``--run-config "key=value key2=value2"`` form."""
    out: dict[str, str] = {}
    for token in text.split():
        if "=" not in token:
            raise ConfigError(f"--run-config entry {token!r} is not valid: expected key=value")
        key, value = token.split("=", 1)
        out[key.strip()] = value.strip().strip('"').strip("'")
    return out


def add_config_flags(parser: argparse.ArgumentParser) -> None:
    """Every config key becomes a flag of the same name (values are validated later by resolve)."""
    group = parser.add_argument_group("run configuration (every key of the config is a flag)")
    for option in OPTIONS:
        choices = f"; one of: {', '.join(option.choices)}" if option.choices else ""
        help_text = f"{option.help}{choices} (default: {option.default!r})".replace("%", "%%")
        if option.kind is bool:
            group.add_argument(f"--{option.key}", dest=option.key, nargs="?", const="true", default=None,
                               metavar="BOOL", help=help_text)
            group.add_argument(f"--no-{option.key}", dest=option.key, action="store_const", const="false",
                               help=argparse.SUPPRESS)
        else:
            group.add_argument(f"--{option.key}", dest=option.key, default=None, metavar="VALUE",
                               help=help_text)
    from dpfl.simulations.config.presets import PRESETS, preset_help

    parser.add_argument("--preset", default=None, choices=sorted(PRESETS), metavar="NAME",
                        help=f"a named recipe applied before the config file and flags ({preset_help()})")
    parser.add_argument("--config", dest="config_file", default=None, help="TOML file with run config keys")
    parser.add_argument("--run-config", dest="run_config_string", default=None,
                        help='Flower-style overrides: "key=value key2=value2"')


def config_from_args(args: argparse.Namespace) -> RunConfig:
    """Defaults < --preset < --config file < --run-config < explicit flags."""
    from dpfl.simulations.config.presets import preset_values

    preset = preset_values(args.preset) if getattr(args, "preset", None) else {}
    layers: list[Mapping[str, Any]] = []
    if getattr(args, "config_file", None):
        layers.append(load_toml(args.config_file))
    if getattr(args, "run_config_string", None):
        layers.append(parse_run_config_string(args.run_config_string))
    flags = {o.key: getattr(args, o.key) for o in OPTIONS if getattr(args, o.key, None) is not None}
    layers.append(flags)
    # the sigma rule reads only what the user gave: a preset's target epsilon must not override their sigma
    return resolve(preset, *layers, sigma_rule_layer(layers))


def explicit_keys(args: argparse.Namespace) -> set[str]:
    """The keys the user gave (config file, --run-config, flags; not a preset's or the defaults)."""
    given: set[str] = set()
    if getattr(args, "config_file", None):
        given |= {str(k).replace("_", "-") for k in load_toml(args.config_file)}
    if getattr(args, "run_config_string", None):
        given |= {str(k).replace("_", "-") for k in parse_run_config_string(args.run_config_string)}
    return given | {o.key for o in OPTIONS if getattr(args, o.key, None) is not None}


def sigma_rule_layer(layers: Sequence[Mapping[str, Any]]) -> dict[str, Scalar]:
    """An explicit noise multiplier without an explicit target epsilon means: no calibration.
    (The default target is 3; without this rule a given sigma would be silently ignored.)"""
    given = {str(key).replace("_", "-") for layer in layers for key in layer}
    out: dict[str, Scalar] = {}
    for sigma, target in (("noise-multiplier", "target-epsilon"), ("user-noise-multiplier", "user-target-epsilon")):
        if sigma in given and target not in given:
            out[target] = 0.0
    return out
