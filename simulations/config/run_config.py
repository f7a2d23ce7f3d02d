"""The resolved run config: layers merged over the defaults, every key coerced and checked, cross-key rules.

Built once at the composition root (the CLI, or the Flower apps from ``context.run_config``); server and
client get typed settings made from it (``server/settings.py``, ``client/settings.py``).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from dpfl.simulations.config.options import (
    BUILT_IN_DATASETS,
    DEFAULTS,
    OPTION_BY_KEY,
    OPTIONS,
    ConfigError,
    Scalar,
    allowed_words,
    coerce,
)

if TYPE_CHECKING:
    from dpfl.privacy.policy import PrivacyPolicy


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
            merged[key] = coerce(option, value)
    for option in OPTIONS:
        value = merged[option.key]
        if option.choices and value not in option.choices:
            raise ConfigError(f"{option.key}={value!r} is not valid: expected {allowed_words(option)}")
        if option.check is not None and not option.check(value):
            raise ConfigError(f"{option.key}={value!r} is not valid: expected {allowed_words(option)}")
    _merge_data_path_alias(merged)
    _check_combinations(merged)
    return RunConfig(merged)


def _merge_data_path_alias(values: dict[str, Scalar]) -> None:
    """``data-dir`` is the old name of ``data-path``: one value survives, under the new name."""
    old, new = str(values["data-dir"]), str(values["data-path"])
    if old and new and old != new:
        raise ConfigError(f"data-dir={old!r} and data-path={new!r} disagree: data-dir is the old name of "
                          f"data-path; give only data-path")
    values["data-path"], values["data-dir"] = new or old, ""


def _check_combinations(values: Mapping[str, Scalar]) -> None:
    """Cross-key rules that single-key checks cannot see."""
    from dpfl.models import MODELS, is_module_spec, plugin_names  # models depends on nothing of ours

    model = str(values["model"])
    if model not in MODELS and not is_module_spec(model) and model not in plugin_names():
        plugins = plugin_names()
        raise ConfigError(f"model={model!r} is not valid: expected one of {', '.join(sorted(MODELS))}"
                          f"{', ' + ', '.join(plugins) if plugins else ''} or your own 'package.module:factory'")
    if values["partition"] == "by-column" and values["dataset"] in BUILT_IN_DATASETS:
        raise ConfigError(f"partition='by-column' needs records that name their owner: a csv/parquet/hf-disk file "
                          f"with client-column, an npz with a 'client' array, or a loader returning train_clients; "
                          f"dataset={values['dataset']!r} has none")
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
    if values["privacy-unit"] == "client":
        _check_user_level(values)
    if float(values["epsilon-budget"]) and not values["dp"]:
        raise ConfigError("epsilon-budget needs dp=true: without DP there is no epsilon to budget")


def _check_user_level(values: Mapping[str, Scalar]) -> None:
    """User-level DP-FedAvg: every client may be sampled every round (the accounting assumes it), and the
    clipped-count noise must leave room for the updates' (server/user_level.py)."""
    if int(values["max-participations"]):
        raise ConfigError(f"max-participations={values['max-participations']} is not valid with "
                          "privacy-unit='client': Poisson client sampling is accounted for every round, so there "
                          "is no participation cap (set 0)")
    if values["adaptive-clipping"] and float(values["clipped-count-stddev"]):
        from dpfl.server.user_level import UserLevelError, update_noise_multiplier

        if not float(values["user-target-epsilon"]):
            try:
                update_noise_multiplier(float(values["user-noise-multiplier"]), float(values["clipped-count-stddev"]))
            except UserLevelError as exc:
                raise ConfigError(str(exc)) from None
