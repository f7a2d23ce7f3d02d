"""The typed run configuration: schema (options), resolution (run_config), sources (files, flags), presets.

Import from here: ``from dpfl.simulations.config import RunConfig, resolve``; see docs/architecture.md.
"""

from dpfl.simulations.config.options import DEFAULTS, OPTION_BY_KEY, OPTIONS, ConfigError, Option
from dpfl.simulations.config.run_config import RunConfig, resolve
from dpfl.simulations.config.sources import (
    add_config_flags,
    config_from_args,
    explicit_keys,
    load_toml,
    parse_run_config_string,
    read_toml,
    run_config_of,
    sigma_rule_layer,
)

__all__ = [
    "DEFAULTS", "OPTIONS", "OPTION_BY_KEY", "ConfigError", "Option", "RunConfig", "add_config_flags",
    "config_from_args", "explicit_keys", "load_toml", "parse_run_config_string", "read_toml", "resolve",
    "run_config_of", "sigma_rule_layer",
]
