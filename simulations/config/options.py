"""The one typed run configuration: every key, its type, default and allowed values.

Keys are Flower's flat kebab-case run-config keys. Defaults here are mirrored into
``pyproject.toml`` ``[tool.flwr.app.config]`` (``python -m dpfl.simulations.config.options --pyproject``
prints the table; a test keeps the two equal) so ``flwr run .`` and ``dpfl simulate`` agree.
Everything is validated before any work starts; an invalid value names key, value and what
is allowed.
"""

from __future__ import annotations

import argparse
import math
import sys
import tomllib
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from dpfl.privacy.policy import PrivacyPolicy

Scalar = bool | int | float | str


class ConfigError(ValueError):
    """A run-config value is wrong; the message names the key, the value and what is allowed."""


@dataclass(frozen=True)
class Option:
    key: str
    default: Scalar
    help: str
    choices: tuple[str, ...] | None = None
    check: Callable[[Any], bool] | None = None
    allowed: str = ""  # words for what `check` accepts

    @property
    def kind(self) -> type:
        return type(self.default)


def _positive(v: float) -> bool:
    return v > 0 and math.isfinite(v)


def _non_negative(v: float) -> bool:
    return v >= 0 and math.isfinite(v)


def _fraction(v: float) -> bool:
    return 0 < v <= 1


def _fraction_or_zero(v: float) -> bool:
    return 0 <= v <= 1


def _open_unit_or_zero(v: float) -> bool:
    return v == 0 or 0 < v < 1


OPTIONS: tuple[Option, ...] = (
    # data
    Option("dataset", "fashion-mnist", "dataset name", choices=("fashion-mnist", "digits", "synthetic")),
    Option("data-dir", "", "directory with the dataset files (empty: the dataset's default location)"),
    Option("num-clients", 10, "number of clients (partitions)", check=lambda v: v >= 1, allowed="an integer >= 1"),
    Option("partition", "iid", "how records are split over clients", choices=("iid", "dirichlet", "shards")),
    Option("dirichlet-alpha", 0.5, "Dirichlet concentration for --partition dirichlet", check=_positive,
           allowed="a number > 0"),
    Option("shards-per-client", 2, "label shards per client for --partition shards", check=lambda v: v >= 1,
           allowed="an integer >= 1"),
    Option("validation-fraction", 0.0, "fraction of each client's records kept for local validation (used only "
           "by client-side evaluation, fraction-evaluate > 0; 0 trains on every record)",
           check=lambda v: 0 <= v < 1, allowed="a number in [0, 1)"),
    Option("synthetic-alpha", 1.0, "Synthetic(alpha, beta): model heterogeneity", check=_non_negative,
           allowed="a number >= 0"),
    Option("synthetic-beta", 1.0, "Synthetic(alpha, beta): data heterogeneity", check=_non_negative,
           allowed="a number >= 0"),
    # model and local training
    Option("model", "cnn", "model name from the zoo (models.MODELS)"),
    Option("num-server-rounds", 30, "federated rounds", check=lambda v: v >= 1, allowed="an integer >= 1"),
    Option("fraction-train", 1.0, "fraction of clients sampled for training each round", check=_fraction,
           allowed="a number in (0, 1]"),
    Option("min-train-clients", 1, "fewest clients a training round needs", check=lambda v: v >= 1,
           allowed="an integer >= 1"),
    Option("fraction-evaluate", 0.0, "fraction of clients for client-side evaluation (0: off; their "
           "metrics are computed on private data and are not DP)", check=_fraction_or_zero,
           allowed="a number in [0, 1]"),
    Option("local-epochs", 1, "local epochs per round (in expectation, with Poisson sampling)",
           check=lambda v: v >= 1, allowed="an integer >= 1"),
    Option("batch-size", 256, "expected batch size (Poisson sampling rate = batch-size / declared records)",
           check=lambda v: v >= 1, allowed="an integer >= 1"),
    Option("optimizer", "sgd", "local optimizer", choices=("sgd", "adam")),
    Option("learning-rate", 0.2, "local learning rate", check=_positive, allowed="a number > 0"),
    Option("momentum", 0.9, "SGD momentum", check=lambda v: 0 <= v < 1, allowed="a number in [0, 1)"),
    Option("server-learning-rate", 1.0, "server step size applied to the averaged update", check=_positive,
           allowed="a number > 0"),
    Option("server-momentum", 0.0, "server momentum on the averaged update (FedAvgM; 0: plain FedAvg)",
           check=lambda v: 0 <= v < 1, allowed="a number in [0, 1)"),
    Option("ema-decay", 0.0, "the released model is an exponential moving average of the global models over "
           "rounds with this decay (0: the last model); post-processing, no privacy cost",
           check=lambda v: 0 <= v < 1, allowed="a number in [0, 1)"),
    Option("aggregation-weights", "declared", "FedAvg weights: declared dataset sizes (public by "
           "declaration) or uniform", choices=("declared", "uniform")),
    # differential privacy
    Option("dp", True, "train with DP-SGD (false: plain SGD on the same code path, no guarantee)"),
    Option("noise-multiplier", 1.0, "DP-SGD noise multiplier sigma, used when target-epsilon is 0 (on the "
           "command line, giving --noise-multiplier without --target-epsilon turns calibration off)",
           check=_positive, allowed="a number > 0"),
    Option("max-grad-norm", 1.0, "per-sample clipping norm C", check=_positive, allowed="a number > 0"),
    Option("target-epsilon", 3.0, "calibrate sigma so each client ends at this epsilon after its most rounds "
           "(0: off, use noise-multiplier)",
           check=_non_negative, allowed="a number >= 0 (0 turns calibration off)"),
    Option("epsilon-budget", 0.0, "per-client epsilon budget enforced before each release (0: none)",
           check=_non_negative, allowed="a number >= 0 (0 means no budget)"),
    Option("max-participations", 0, "most rounds one client may train in (0: num-server-rounds)",
           check=lambda v: v >= 0, allowed="an integer >= 0"),
    Option("delta", 0.0, "delta of the (epsilon, delta) guarantee (0: 1 / (10 x total declared records))",
           check=_open_unit_or_zero, allowed="0 (auto) or a number in (0, 1)"),
    Option("accountant", "pld", "accountant for reported epsilon", choices=("pld", "prv", "rdp")),
    Option("grad-sample-mode", "auto", "how per-sample gradients are computed (auto: the fastest exact mode "
           "measured for the model, see bench/dp_step.py)", choices=("auto", "bk", "hooks", "ghost", "functorch")),
    Option("private-metrics", False, "also send loss/accuracy on clients' private data (NOT covered by DP)"),
    Option("deterministic-noise", False, "TEST ONLY: seed noise from --seed; the run is NOT PRIVATE"),
    # run
    Option("seed", 42, "seed for partitioning, model init and client selection (never for DP noise)"),
    Option("device", "auto", "where clients train", choices=("auto", "cpu", "cuda")),
    Option("run-dir", "runs", "parent directory of run directories"),
    Option("run-name", "", "run directory name (empty: time stamp)"),
    Option("state-dir", "", "directory for durable client ledgers (empty: <run dir>/client-state)"),
    Option("round-timeout", 600.0, "seconds the server waits for replies in one round", check=_positive,
           allowed="a number > 0"),
    Option("workers", 0, "in-process engine: worker processes (0: min(cores, clients))",
           check=lambda v: v >= 0, allowed="an integer >= 0"),
)

OPTION_BY_KEY: dict[str, Option] = {o.key: o for o in OPTIONS}
DEFAULTS: dict[str, Scalar] = {o.key: o.default for o in OPTIONS}


def _coerce(option: Option, value: Any) -> Scalar:
    """Turn a CLI/TOML/Flower value into the option's type, or raise ConfigError."""
    kind = option.kind
    bad = ConfigError(f"{option.key}={value!r} is not valid: expected {_allowed_words(option)}")
    if kind is bool:
        if isinstance(value, bool):
            return value
        if isinstance(value, str) and value.lower() in ("true", "1", "yes", "on", "false", "0", "no", "off"):
            return value.lower() in ("true", "1", "yes", "on")
        if isinstance(value, int) and value in (0, 1):
            return bool(value)
        raise bad
    if kind is int:
        if isinstance(value, bool):
            raise bad
        if isinstance(value, int):
            return value
        if isinstance(value, float) and value.is_integer():
            return int(value)
        if isinstance(value, str):
            try:
                return int(value)
            except ValueError:
                raise bad from None
        raise bad
    if kind is float:
        if isinstance(value, bool):
            raise bad
        if isinstance(value, int | float):
            return float(value)
        if isinstance(value, str):
            try:
                return float(value)
            except ValueError:
                raise bad from None
        raise bad
    if isinstance(value, str):
        return value
    raise bad


def _allowed_words(option: Option) -> str:
    if option.choices:
        return "one of " + ", ".join(option.choices)
    if option.allowed:
        return option.allowed
    return {bool: "true or false", int: "an integer", float: "a number", str: "a string"}[option.kind]


@dataclass(frozen=True)
class RunConfig:
    """A resolved, validated run configuration (a flat kebab-case mapping underneath)."""

    values: Mapping[str, Scalar] = field(default_factory=lambda: dict(DEFAULTS))

    def __hash__(self) -> int:  # usable as a cache key for per-process data
        return hash(tuple(sorted(self.values.items())))

    def __getitem__(self, key: str) -> Any:
        return self.values[key]

    def get(self, key: str, default: Any = None) -> Any:
        return self.values.get(key, default)

    def as_dict(self) -> dict[str, Scalar]:
        return dict(self.values)

    def replace(self, **changes: Scalar) -> RunConfig:
        merged = dict(self.values)
        merged.update({k.replace("_", "-"): v for k, v in changes.items()})
        return resolve(merged)

    @property
    def max_participations(self) -> int:
        return self.policy.participation_cap

    @property
    def not_private(self) -> bool:
        """True when the run's outputs carry no DP guarantee (DP off or deterministic noise)."""
        return self.policy.not_private

    @property
    def policy(self) -> PrivacyPolicy:
        """The privacy rules of this run (delta, participation cap, budget, statement): dpfl.privacy.policy."""
        from dpfl.privacy.policy import PrivacyPolicy  # privacy pulls in dp-accounting: not for `--help`

        return PrivacyPolicy.from_config(self.values)


def resolve(*layers: Mapping[str, Any], strict: bool = True) -> RunConfig:
    """Merge defaults with the given layers (later wins), coerce and validate every key.

    ``strict`` rejects unknown keys (a typo must not silently fall back to a default).
    """
    merged: dict[str, Scalar] = dict(DEFAULTS)
    for layer in layers:
        for raw_key, value in layer.items():
            key = str(raw_key).replace("_", "-")
            option = OPTION_BY_KEY.get(key)
            if option is None:
                if strict:
                    raise ConfigError(f"unknown config key {raw_key!r}; known keys: {', '.join(sorted(DEFAULTS))}")
                continue
            merged[key] = _coerce(option, value)
    for option in OPTIONS:
        value = merged[option.key]
        if option.choices and value not in option.choices:
            raise ConfigError(f"{option.key}={value!r} is not valid: expected {_allowed_words(option)}")
        if option.check is not None and not option.check(value):
            raise ConfigError(f"{option.key}={value!r} is not valid: expected {_allowed_words(option)}")
    _check_combinations(merged)
    return RunConfig(merged)


def _check_combinations(values: Mapping[str, Scalar]) -> None:
    """Cross-key rules that single-key checks cannot see."""
    from dpfl.models import MODELS  # models depends on nothing of ours

    if values["model"] not in MODELS:
        raise ConfigError(f"model={values['model']!r} is not valid: expected one of {', '.join(sorted(MODELS))}")
    rounds = int(values["num-server-rounds"])
    if int(values["max-participations"]) > rounds:
        raise ConfigError(
            f"max-participations={values['max-participations']} is not valid: expected at most "
            f"num-server-rounds ({rounds}), or 0 for num-server-rounds"
        )
    if int(values["min-train-clients"]) > int(values["num-clients"]):
        raise ConfigError(
            f"min-train-clients={values['min-train-clients']} is not valid: expected at most num-clients "
            f"({values['num-clients']})"
        )
    if float(values["fraction-evaluate"]) > 0 and float(values["validation-fraction"]) == 0:
        raise ConfigError(f"fraction-evaluate={values['fraction-evaluate']} needs a local validation split to "
                          "evaluate on: set validation-fraction > 0 (e.g. 0.1)")
    if float(values["epsilon-budget"]) and not values["dp"]:
        raise ConfigError("epsilon-budget needs dp=true: without DP there is no epsilon to budget")


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
        help_text = f"{option.help} (default: {option.default!r})"
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


def sigma_rule_layer(layers: Sequence[Mapping[str, Any]]) -> dict[str, Scalar]:
    """An explicit noise multiplier without an explicit target epsilon means: no calibration.
    (The default target is 3; without this rule a given sigma would be silently ignored.)"""
    given = {str(key).replace("_", "-") for layer in layers for key in layer}
    return {"target-epsilon": 0.0} if "noise-multiplier" in given and "target-epsilon" not in given else {}


def pyproject_table() -> str:
    """The [tool.flwr.app.config] body for pyproject.toml."""
    import tomli_w

    return tomli_w.dumps(dict(DEFAULTS))


def markdown_table() -> str:
    """The configuration reference of the README."""
    rows = ["| key (also a flag) | default | allowed | meaning |", "|---|---|---|---|"]
    for o in OPTIONS:
        default = str(o.default).lower() if isinstance(o.default, bool) else repr(o.default)
        rows.append(f"| `{o.key}` | `{default}` | {_allowed_words(o)} | {o.help} |")
    return "\n".join(rows)


if __name__ == "__main__":  # pragma: no cover - maintenance helper
    if "--pyproject" in sys.argv:
        print(pyproject_table())
    if "--markdown" in sys.argv:
        print(markdown_table())
