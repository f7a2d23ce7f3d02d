"""What a sweep is: its specification (grid or random search), checked, and the points it expands to.

A point is one run (or one invalid combination, kept to be reported), named by a stable hash of its
resolved config, so a re-run recognises finished points. Every private point gets its non-private
baseline (``dp=false``, same setup) as a reference. A random search draws each trial's hyperparameters
from the sweep's seed, but its number of trials K from the operating system's entropy
(``draw_trial_count``): the tuning bound (``dpfl.privacy.tuning``) holds only if K is random and unknown.
"""

from __future__ import annotations

import hashlib
import itertools
import json
import math
import secrets
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from dpfl.privacy import tuning
from dpfl.simulations.config import DEFAULTS, OPTION_BY_KEY, ConfigError, read_toml, resolve, sigma_rule_layer

# Keys that say where a run goes, not what it computes: left out of a point's hash and forced per point.
LOCATION_KEYS = frozenset({"run-dir", "run-name", "state-dir", "workers", "device", "tracker"})
# Keys that only concern the DP mechanism: the non-private baseline drops them (and sets dp=false).
PRIVACY_KEYS = frozenset({"dp", "noise-multiplier", "max-grad-norm", "target-epsilon", "epsilon-budget",
                          "delta",
                          "accountant", "grad-sample-mode", "deterministic-noise"})
# Keys that decide which records each client holds: runs agreeing on these share client identities.
PARTITION_KEYS = ("dataset", "data-dir", "num-clients", "partition", "dirichlet-alpha", "shards-per-client",
                  "validation-fraction", "synthetic-alpha", "synthetic-beta", "seed")
# Keys added with users' own data and models: hashed only when set, so the ids of sweeps started before
# them stay the same (a changed id would re-run and re-charge their points).
ADDED_KEYS = ("data-path", "test-data-path", "label-column", "feature-columns", "client-column", "labels",
              "num-classes", "data-schema", "test-fraction", "image-size", "image-mode", "fix-model")
ADDED_PARTITION_KEYS = ADDED_KEYS[:-1]
DISTRIBUTIONS = (*tuning.DISTRIBUTIONS, "fixed")  # of the number of trials (fixed: exactly `trials`, composed)
TABLES = frozenset({"sweep", "base", "grid", "random"})  # a TOML file with none of them is a plain run config


class SweepError(ValueError):
    """The sweep file or its options are wrong (not one point: the whole sweep); the message says how."""


# --- the sweep specification ------------------------------------------------------------------------------
@dataclass(frozen=True)
class RandomSpec:
    """Random search: how many trials (a mean for random counts) and how each key is drawn."""

    trials: float
    distribution: str = "poisson"
    eta: float = 1.0
    params: dict[str, dict[str, Any]] = field(default_factory=dict)


@dataclass(frozen=True)
class SweepSpec:
    """A checked sweep file: the base config, the grid axes, an optional random search, and [sweep]."""

    name: str
    base: dict[str, Any]
    grid: dict[str, list[Any]]  # axis label -> values (scalars for a config key, tables for linked keys)
    random: RandomSpec | None = None
    seed: int = 0  # seeds the hyperparameter draws of a random search (never the number of trials)
    jobs: int | None = None
    out: str | None = None
    tuning_delta: float | None = None

    @property
    def mode(self) -> str:
        """grid or random: which points are run and which tuning bound applies."""
        return "random" if self.random is not None else "grid"

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    def digest(self) -> str:
        """A random search's plan is only resumed by the spec it was drawn from: this names that spec."""
        text = json.dumps(self.to_dict(), sort_keys=True, default=str)
        return hashlib.sha256(text.encode()).hexdigest()[:16]


def _norm(key: str) -> str:
    return str(key).replace("_", "-")


def _known(key: str, where: str) -> str:
    k = _norm(key)
    if k not in OPTION_BY_KEY:
        raise SweepError(f"{where}: unknown config key {key!r}; known keys: {', '.join(sorted(DEFAULTS))}")
    return k


def _check_axis(label: str, values: Any) -> tuple[str, list[Any]]:
    """A grid axis: ``key = [v1, v2]`` or a linked axis ``label = [{k1 = a, k2 = b}, ...]``."""
    if not isinstance(values, list) or not values:
        raise SweepError(f"[grid] {label}: expected a non-empty list of values, got {values!r}")
    if all(isinstance(v, dict) for v in values):
        linked = [{_known(k, f'[grid] {label}'): x for k, x in v.items()} for v in values]
        if any(not v for v in linked):
            raise SweepError(f"[grid] {label}: a linked value must set at least one key")
        return str(label), linked
    if any(isinstance(v, dict | list) for v in values):
        raise SweepError(f"[grid] {label}: mix of tables and plain values; use all tables (linked keys) or "
                         "all plain values")
    return _known(label, "[grid]"), list(values)


def _check_random_param(key: str, rule: Any) -> tuple[str, dict[str, Any]]:
    k = _known(key, "[random]")
    if isinstance(rule, list):
        rule = {"choices": rule}
    if not isinstance(rule, dict):
        raise SweepError(f"[random] {key}: expected {{low, high, log}} or {{choices = [...]}}, got {rule!r}")
    if "choices" in rule:
        if not isinstance(rule["choices"], list) or not rule["choices"]:
            raise SweepError(f"[random] {key}: choices must be a non-empty list")
        return k, {"choices": list(rule["choices"])}
    try:
        low, high = float(rule["low"]), float(rule["high"])
    except (KeyError, TypeError, ValueError):
        raise SweepError(f"[random] {key}: expected numbers low and high, got {rule!r}") from None
    log_scale = bool(rule.get("log", False))
    if not (math.isfinite(low) and math.isfinite(high) and low < high):
        raise SweepError(f"[random] {key}: expected finite low < high, got low={low}, high={high}")
    if log_scale and low <= 0:
        raise SweepError(f"[random] {key}: log = true needs low > 0, got low={low}")
    if OPTION_BY_KEY[k].kind not in (int, float):
        raise SweepError(f"[random] {key}: low/high needs a numeric key; use choices = [...] for "
                         f"{OPTION_BY_KEY[k].kind.__name__} keys")
    return k, {"low": low, "high": high, "log": log_scale}


def _number(value: Any, where: str, expected: str, kind: type = float) -> Any:
    """A number from the sweep file, or SweepError naming the key (never a bare ValueError traceback)."""
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise SweepError(f"{where}={value!r} is not valid: expected {expected}")
    if kind is int and not float(value).is_integer():
        raise SweepError(f"{where}={value!r} is not valid: expected {expected}")
    return kind(value)


def _table(data: Mapping[str, Any], name: str) -> dict[str, Any]:
    value = data.get(name, {})
    if not isinstance(value, Mapping):
        raise SweepError(f"[{name}] must be a table (key = value lines), got {value!r}")
    return dict(value)


def spec_from_dict(data: Mapping[str, Any], *, default_name: str = "sweep") -> SweepSpec:
    """Build and check a spec from parsed TOML: [sweep], [base], [grid], [random].

    A file with none of those tables is taken as a plain run config: it becomes [base]."""
    if not TABLES & set(data):
        data = {"base": dict(data)}
    unknown = set(data) - TABLES
    if unknown:
        raise SweepError(f"unknown table(s) {', '.join(sorted(unknown))}: a sweep file has [sweep], [base], "
                         "[grid] and [random]")
    meta = _table(data, "sweep")
    base = {_known(k, "[base]"): v for k, v in _table(data, "base").items()}
    grid: dict[str, list[Any]] = {}
    for label, values in _table(data, "grid").items():
        key, checked = _check_axis(label, values)
        grid[key] = checked
    random_spec = None
    if "random" in data:
        raw = _table(data, "random")
        trials = raw.pop("trials", None)
        distribution = str(raw.pop("distribution", "poisson"))
        eta = _number(raw.pop("eta", 1.0), "[random] eta", "a number > -1")
        if distribution not in DISTRIBUTIONS:
            raise SweepError(f"[random] distribution={distribution!r} is not valid: expected one of "
                             f"{', '.join(DISTRIBUTIONS)}")
        if not isinstance(trials, int | float) or isinstance(trials, bool) or not trials > 0:
            raise SweepError(f"[random] trials={trials!r} is not valid: expected a number > 0 (the mean "
                             "number of trials; the exact number with distribution = \"fixed\")")
        if distribution == "fixed" and float(trials) != int(trials):
            raise SweepError(f"[random] trials={trials} must be an integer with distribution = \"fixed\"")
        if distribution == "truncated-negative-binomial" and not (eta > -1 and math.isfinite(eta)):
            raise SweepError(f"[random] eta={eta} is not valid: expected a number > -1")
        if distribution == "truncated-negative-binomial" and float(trials) <= 1:
            raise SweepError("[random] trials must be > 1 for the truncated negative binomial "
                             "(its mean is > 1)")
        params = dict(_check_random_param(k, v) for k, v in raw.items())
        both = set(params) & set(grid)
        if both:
            raise SweepError(f"key(s) {', '.join(sorted(both))} are in both [grid] and [random]; keep one")
        random_spec = RandomSpec(float(trials), distribution, eta, params)
    jobs = meta.get("jobs")
    if jobs is not None and (not isinstance(jobs, int) or jobs < 1):
        raise SweepError(f"[sweep] jobs={jobs!r} is not valid: expected an integer >= 1")
    tuning_delta = meta.get("tuning-delta", meta.get("tuning_delta"))
    if tuning_delta is not None:
        tuning_delta = _number(tuning_delta, "[sweep] tuning-delta", "a number in (0, 1)")
    if tuning_delta is not None and not (0 < tuning_delta < 1):
        raise SweepError(f"[sweep] tuning-delta={tuning_delta!r} is not valid: expected a number in (0, 1)")
    known_meta = {"name", "seed", "jobs", "out", "tuning-delta", "tuning_delta", "description"}
    if set(meta) - known_meta:
        raise SweepError(f"[sweep] unknown key(s) {', '.join(sorted(set(meta) - known_meta))}; known: "
                         f"{', '.join(sorted(known_meta - {'tuning_delta'}))}")
    return SweepSpec(name=str(meta.get("name", default_name)), base=base, grid=grid, random=random_spec,
                     seed=_number(meta.get("seed", 0), "[sweep] seed", "an integer", int), jobs=jobs,
                     out=meta.get("out"), tuning_delta=tuning_delta)


def load_spec(path: str | Path) -> SweepSpec:
    """A sweep TOML file as a checked spec (named after the file unless [sweep] name says otherwise)."""
    return spec_from_dict(read_toml(path, "sweep file", SweepError), default_name=Path(path).stem)


# --- points -------------------------------------------------------------------------------------------------
@dataclass
class Point:
    """One run of the sweep (or one invalid combination, kept to be reported)."""

    id: str
    kind: str  # "private" or "baseline"
    params: dict[str, Any]  # axis label -> value, as swept (what tables and plots show)
    config: dict[str, Any] | None  # resolved flat config; None when invalid
    error: str = ""
    trial: int | None = None  # random search: which trial this point belongs to

    @property
    def valid(self) -> bool:
        return self.config is not None


def _hash(obj: Any) -> str:
    return hashlib.sha256(json.dumps(obj, sort_keys=True, default=str).encode()).hexdigest()[:12]


def point_id(config: Mapping[str, Any]) -> str:
    """Stable name of a point: a hash of its resolved config, without where it runs."""
    return _hash({k: v for k, v in _without_unset_added_keys(config).items() if k not in LOCATION_KEYS})


def partition_id(config: Mapping[str, Any]) -> str:
    """Runs with the same partition id split the records over clients the same way: a client is the same
    records in each of them (what lets the tuning compose per client)."""
    identity = {k: config.get(k) for k in PARTITION_KEYS}
    if config.get("data-path") and not config.get("data-dir"):  # data-dir is data-path's old name
        identity["data-dir"] = config["data-path"]
    identity.update({k: config[k] for k in ADDED_PARTITION_KEYS if k in config and config[k] != DEFAULTS[k]
                     and k != "data-path"})
    return _hash(identity)


def _without_unset_added_keys(config: Mapping[str, Any]) -> dict[str, Any]:
    """``config`` without the keys of ``ADDED_KEYS`` that hold their default; ``data-path`` under its old name."""
    out = {k: v for k, v in config.items() if not (k in ADDED_KEYS and v == DEFAULTS.get(k))}
    if out.get("data-path") and not out.get("data-dir"):
        out["data-dir"] = out.pop("data-path")
    return out


def axis_keys(value: Any, label: str) -> list[str]:
    """The config keys one value of an axis sets: a linked value's own keys, else the axis label."""
    return list(value) if isinstance(value, dict) else [label]


def is_privacy_axis(label: str, values: Sequence[Any]) -> bool:
    """An axis that only changes the DP mechanism: its points share one non-private baseline."""
    keys = {k for v in values for k in axis_keys(v, label)}
    return bool(keys) and keys <= PRIVACY_KEYS


def axes(spec: SweepSpec) -> list[str]:
    """The swept parameters, in the order tables and plots show them: grid axes, then random keys."""
    labels = list(spec.grid)
    if spec.random is not None:
        labels += [k for k in spec.random.params if k not in labels]
    return labels


def _overrides(params: Mapping[str, Any]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for label, value in params.items():
        if isinstance(value, dict):
            out.update(value)
        elif value is not None:
            out[label] = value
    return out


def _make_point(base: Mapping[str, Any], params: dict[str, Any], *, trial: int | None = None) -> Point:
    raw = {**base, **_overrides(params)}
    raw.update(sigma_rule_layer([raw]))
    try:
        cfg = resolve(raw).as_dict()
    except ConfigError as exc:
        kind = "private" if raw.get("dp", True) else "baseline"
        return Point(id="x" + _hash({"invalid": raw})[1:], kind=kind, params=params, config=None,
                     error=str(exc), trial=trial)
    cfg.update({"workers": 1, "state-dir": ""})
    kind = "private" if cfg["dp"] else "baseline"
    return Point(id=point_id(cfg), kind=kind, params=params, config=cfg, trial=trial)


def _baseline_of(base: Mapping[str, Any], params: Mapping[str, Any], *, trial: int | None) -> Point:
    """The same setup without DP: privacy keys dropped (to their defaults), dp=false."""
    stripped: dict[str, Any] = {}
    for label, value in params.items():
        if isinstance(value, dict):
            rest = {k: v for k, v in value.items() if k not in PRIVACY_KEYS}
            stripped[label] = rest or None
        else:
            stripped[label] = None if label in PRIVACY_KEYS else value
    base_np = {k: v for k, v in base.items() if k not in PRIVACY_KEYS}
    point = _make_point({**base_np, "dp": False, "target-epsilon": 0.0}, stripped, trial=trial)
    point.kind = "baseline"
    return point


def _draw(rule: Mapping[str, Any], key: str, rng: np.random.Generator) -> Any:
    if "choices" in rule:
        return rule["choices"][int(rng.integers(len(rule["choices"])))]
    low, high = float(rule["low"]), float(rule["high"])
    x = math.exp(rng.uniform(math.log(low), math.log(high))) if rule["log"] else rng.uniform(low, high)
    if OPTION_BY_KEY[key].kind is int:
        return int(min(max(round(x), math.ceil(low)), math.floor(high)))
    return float(x)


def expand(spec: SweepSpec, *, trials: int | None = None) -> list[Point]:
    """All points of the sweep, baselines included, deduplicated by id, in a stable order.

    ``trials``: the number of random-search trials (drawn by ``draw_trial_count``)."""
    combos: list[tuple[dict[str, Any], int | None]] = []
    if spec.random is None:
        labels = list(spec.grid)
        for values in itertools.product(*(spec.grid[label] for label in labels)):
            combos.append((dict(zip(labels, values, strict=True)), None))
    else:
        if trials is None:
            raise SweepError("a random search needs its number of trials (draw_trial_count)")
        for i in range(trials):
            rng = np.random.default_rng([int(spec.seed), i])
            params: dict[str, Any] = {}
            for label in sorted(spec.grid):
                values = spec.grid[label]
                params[label] = values[int(rng.integers(len(values)))]
            for key in sorted(spec.random.params):
                params[key] = _draw(spec.random.params[key], key, rng)
            combos.append((params, i))
    points: dict[str, Point] = {}
    baselines: dict[str, Point] = {}
    for params, trial in combos:
        point = _make_point(spec.base, params, trial=trial)
        points.setdefault(point.id, point)
        if point.kind == "private":
            b = _baseline_of(spec.base, params, trial=trial)
            if b.id not in points:
                baselines.setdefault(b.id, b)
    for bid, b in baselines.items():
        points.setdefault(bid, b)
    return list(points.values())


# --- number of trials of a random search ------------------------------------------------------------------
def _tnb_sample(eta: float, gamma: float, u: float) -> int:
    """Inverse CDF of D_{eta,gamma}: P[K=k] = (1-gamma)^k / (gamma^-eta - 1) * prod_{l<k} (l+eta)/(l+1) for
    eta != 0, and (1-gamma)^k / (k log(1/gamma)) for eta = 0 (the logarithmic distribution)."""
    k, cumulative, prod = 0, 0.0, 1.0
    while cumulative < u and k < 10_000_000:
        if eta == 0:
            k += 1
            p = (1 - gamma) ** k / (k * math.log(1 / gamma))
        else:
            prod *= (k + eta) / (k + 1)
            k += 1
            p = (1 - gamma) ** k * prod / (gamma ** -eta - 1)
        cumulative += p
    return k


def draw_trial_count(distribution: str, mean: float, eta: float = 1.0,
                     rng: np.random.Generator | None = None) -> int:
    """K for a random search. Drawn from the operating system's entropy by default: the tuning bound
    holds only if K is random and unknown, so it must never come from the sweep's seed."""
    if distribution == "fixed":
        return int(mean)
    rng = rng or np.random.default_rng(secrets.randbits(128))
    if distribution == "poisson":
        return int(rng.poisson(mean))
    return _tnb_sample(eta, tuning.tnb_gamma_for_mean(eta, mean), float(rng.random()))
