"""Privacy/utility sweeps: expand a grid (or a random search) over run options, run every point,
resume, collect results, and account honestly for the tuning itself.

A sweep directory holds one run directory per point, named by a stable hash of the point's resolved
config, so a re-run (``--resume``) recognises finished points and only reruns failed or incomplete ones.
Every point is validated with ``resolve`` before anything runs; an invalid point is recorded as failed
with the message while the others run. Each private setting gets its non-private baseline (``dp=false``,
same setup) as a reference: it is never a candidate for selection.

Choosing the best point of a sweep trained on the same private data spends privacy too. A grid composes
every private run's releases (``tuning_epsilon``); a random search with a random number of trials uses
Papernot & Steinke (ICLR 2022): see ``poisson_tuning_rdp`` and ``tnb_tuning_rdp``.
"""

from __future__ import annotations

import concurrent.futures as cf
import contextlib
import hashlib
import io
import itertools
import json
import logging
import math
import multiprocessing as mp
import os
import secrets
import shutil
import tarfile
import tempfile
import time
import traceback
import uuid
import warnings
from collections import Counter
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from concurrent.futures.process import BrokenProcessPool
from dataclasses import asdict, dataclass, field
from functools import lru_cache
from pathlib import Path
from typing import Any

import numpy as np

from dpfl.simulations.config.options import DEFAULTS, OPTION_BY_KEY, ConfigError, read_toml, resolve, sigma_rule_layer

log = logging.getLogger("dpfl.sweep")

PLAN_VERSION = 1
# Keys that say where a run goes, not what it computes: left out of a point's hash and forced per point.
LOCATION_KEYS = frozenset({"run-dir", "run-name", "state-dir", "workers", "device"})
# Keys that only concern the DP mechanism: the non-private baseline drops them (and sets dp=false).
PRIVACY_KEYS = frozenset({"dp", "noise-multiplier", "max-grad-norm", "target-epsilon", "epsilon-budget",
                          "delta",
                          "accountant", "grad-sample-mode", "deterministic-noise"})
# Keys that decide which records each client holds: runs agreeing on these share client identities.
PARTITION_KEYS = ("dataset", "data-dir", "num-clients", "partition", "dirichlet-alpha", "shards-per-client",
                  "validation-fraction", "synthetic-alpha", "synthetic-beta", "seed")
DISTRIBUTIONS = ("poisson", "truncated-negative-binomial", "fixed")
RDP_ORDERS: tuple[float, ...] = tuple([1 + x / 10.0 for x in range(1, 100)] + list(range(12, 257)))
PLD_DISCRETIZATION = 1e-4
MAX_POOL_RESTARTS = 3


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
        return "random" if self.random is not None else "grid"

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    def digest(self) -> str:
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


def spec_from_dict(data: Mapping[str, Any], *, default_name: str = "sweep") -> SweepSpec:
    """Build and check a spec from parsed TOML: [sweep], [base], [grid], [random].

    A file with none of those tables is taken as a plain run config: it becomes [base]."""
    tables = {"sweep", "base", "grid", "random"}
    if not tables & set(data):
        data = {"base": dict(data)}
    unknown = set(data) - tables
    if unknown:
        raise SweepError(f"unknown table(s) {', '.join(sorted(unknown))}: a sweep file has [sweep], [base], "
                         "[grid] and [random]")
    meta = dict(data.get("sweep", {}))
    base = {_known(k, "[base]"): v for k, v in dict(data.get("base", {})).items()}
    grid: dict[str, list[Any]] = {}
    for label, values in dict(data.get("grid", {})).items():
        key, checked = _check_axis(label, values)
        grid[key] = checked
    random_spec = None
    if "random" in data:
        raw = dict(data["random"])
        trials = raw.pop("trials", None)
        distribution = str(raw.pop("distribution", "poisson"))
        eta = float(raw.pop("eta", 1.0))
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
    if tuning_delta is not None and not (0 < float(tuning_delta) < 1):
        raise SweepError(f"[sweep] tuning-delta={tuning_delta!r} is not valid: expected a number in (0, 1)")
    known_meta = {"name", "seed", "jobs", "out", "tuning-delta", "tuning_delta", "description"}
    if set(meta) - known_meta:
        raise SweepError(f"[sweep] unknown key(s) {', '.join(sorted(set(meta) - known_meta))}; known: "
                         f"{', '.join(sorted(known_meta - {'tuning_delta'}))}")
    return SweepSpec(name=str(meta.get("name", default_name)), base=base, grid=grid, random=random_spec,
                     seed=int(meta.get("seed", 0)), jobs=jobs, out=meta.get("out"),
                     tuning_delta=float(tuning_delta) if tuning_delta is not None else None)


def load_spec(path: str | Path) -> SweepSpec:
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
    return _hash({k: v for k, v in config.items() if k not in LOCATION_KEYS})


def axis_keys(value: Any, label: str) -> list[str]:
    return list(value) if isinstance(value, dict) else [label]


def is_privacy_axis(label: str, values: Sequence[Any]) -> bool:
    keys = {k for v in values for k in axis_keys(v, label)}
    return bool(keys) and keys <= PRIVACY_KEYS


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
def tnb_mean(eta: float, gamma: float) -> float:
    """E[K] of the truncated negative binomial D_{eta,gamma} (Papernot & Steinke 2022)."""
    if eta == 0:
        return (1 / gamma - 1) / math.log(1 / gamma)
    return eta * (1 - gamma) / (gamma * (1 - gamma ** eta))


def tnb_gamma_for_mean(eta: float, mean: float) -> float:
    """The gamma giving E[K] = mean (E[K] decreases in gamma); bisection on log(gamma)."""
    if mean <= 1:
        raise SweepError("the truncated negative binomial has mean > 1; ask for more trials")
    lo, hi = 1e-12, 1 - 1e-12
    for _ in range(200):
        mid = math.sqrt(lo * hi)
        if tnb_mean(eta, mid) > mean:
            lo = mid
        else:
            hi = mid
    return math.sqrt(lo * hi)


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
    return _tnb_sample(eta, tnb_gamma_for_mean(eta, mean), float(rng.random()))


# --- run directories --------------------------------------------------------------------------------------
def read_json(path: Path) -> Any:
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):
        return None


def run_complete(path: Path) -> bool:
    """A finished point: summary.json written (training over, early stop included) and not interrupted."""
    summary = read_json(path / "summary.json")
    return (isinstance(summary, dict) and "rounds_completed" in summary
            and summary.get("stop_reason") != "interrupted" and (path / "metrics.jsonl").exists())


def _write_json(path: Path, data: Mapping[str, Any]) -> None:
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    tmp.write_text(json.dumps(data, indent=2, default=str) + "\n")
    os.replace(tmp, path)


def _archive_attempt(path: Path, attempts_dir: Path) -> Path | None:
    """Move an unfinished run aside: its ledgers stay, because those releases were spent."""
    if not path.exists():
        return None
    attempts_dir.mkdir(parents=True, exist_ok=True)
    n = 1
    while (attempts_dir / f"{path.name}-{n}").exists():
        n += 1
    target = attempts_dir / f"{path.name}-{n}"
    shutil.move(str(path), str(target))
    return target


# --- running one point (in a worker process, a Ray task, or this process) -----------------------------------
class _QuietLogReporter:
    """Round lines go to the point's log file, not to the terminal the sweep's progress bar owns."""

    def __init__(self) -> None:
        from dpfl.server.federation import LogReporter

        self._inner = LogReporter()

    def start(self, total_rounds: int) -> None:
        self._inner.start(total_rounds)

    def round(self, row: Mapping[str, Any]) -> None:
        self._inner.round(row)

    def stop(self) -> None:
        self._inner.stop()


@contextlib.contextmanager
def _captured_output(log_path: Path) -> Iterator[None]:
    """Send this point's prints, warnings and log records to RUN/point.log."""
    log_path.parent.mkdir(parents=True, exist_ok=True)
    with open(log_path, "a") as fh:
        handler = logging.StreamHandler(fh)
        handler.setFormatter(logging.Formatter("%(asctime)s %(name)s %(levelname)s %(message)s", "%H:%M:%S"))
        names = ("", "dpfl", "flwr", "opacus")
        saved = {n: (logging.getLogger(n).handlers[:], logging.getLogger(n).level,
                     logging.getLogger(n).propagate) for n in names}
        for n in names:
            lg = logging.getLogger(n)
            lg.handlers = [] if n == "opacus" else [handler]
            lg.propagate = n in ("", "opacus")
        logging.getLogger("dpfl").setLevel(logging.INFO)
        try:
            with contextlib.redirect_stdout(fh), contextlib.redirect_stderr(fh):
                yield
        finally:
            for n, (handlers, level, propagate) in saved.items():
                lg = logging.getLogger(n)
                lg.handlers, lg.level, lg.propagate = handlers, level, propagate


def _set_threads(threads: int) -> int:
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(max(1, threads))
    return before


def execute_point(task: Mapping[str, Any]) -> dict[str, Any]:
    """Run one point into its run directory and record how it went in RUN/point.json.

    Never raises for a failing point: the error is recorded and the sweep goes on."""
    import dpfl.simulations.engines.simulate as sim  # looked up at call time so tests can count calls

    path = Path(task["run_path"])
    attempts = Path(task["attempts_dir"])
    t0 = time.time()
    if run_complete(path):
        return {"id": task["id"], "status": "ok", "error": "", "wall_seconds": 0.0, "reused": True}
    _archive_attempt(path, attempts)
    path.mkdir(parents=True, exist_ok=True)
    info: dict[str, Any] = {"id": task["id"], "status": "running", "session": task.get("session", ""),
                            "started": t0, "host": os.uname().nodename, "pid": os.getpid(),
                            "node": task.get("node", "")}
    _write_json(path / "point.json", info)
    threads_before = _set_threads(int(task.get("threads", 1)))
    error = ""
    try:
        with _captured_output(path / "point.log"):
            try:
                cfg = resolve(task["config"])
                sim.simulate(cfg, reporter=_QuietLogReporter(), run_path=path)
            except Exception as exc:  # one failed point must not kill the sweep
                error = f"{type(exc).__name__}: {exc}"
                traceback.print_exc()
    finally:
        _set_threads(threads_before)
        _clear_run_caches()
    complete = run_complete(path)
    status = "ok" if complete else "failed"
    if not complete and not error:
        error = "the run ended without a complete summary.json"
    info.update({"status": status, "error": error if not complete else "", "wall_seconds": time.time() - t0,
                 "finished": time.time()})
    if complete and error:
        info["warning"] = f"training finished, then: {error}"
    _write_json(path / "point.json", info)
    summary = read_json(path / "summary.json") if complete else None
    summary = summary if isinstance(summary, dict) else {}
    return {"id": task["id"], "status": status, "error": info["error"], "warning": info.get("warning", ""),
            "wall_seconds": info["wall_seconds"], "reused": False,
            "final_accuracy": summary.get("final_accuracy"), "epsilon": summary.get("epsilon_max")}


def _clear_run_caches() -> None:
    """Per-config client data is cached per process; a long-lived worker must not keep every point's."""
    with contextlib.suppress(Exception):
        from dpfl.simulations import apps

        for name in ("_client_setup", "_cached_config"):
            fn = getattr(apps, name, None)
            if fn is not None and hasattr(fn, "cache_clear"):
                fn.cache_clear()


def _init_worker(threads: int) -> None:
    for var in ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS"):
        os.environ[var] = str(threads)
    _set_threads(threads)
    with contextlib.suppress(RuntimeError):
        import torch

        torch.set_num_interop_threads(1)


def execute_point_portable(task: Mapping[str, Any]) -> dict[str, Any]:
    """Ray task body: run in place when this node sees the sweep directory (shared file system), else in a
    local temporary directory and ship the run directory back (without checkpoints) as a tar archive."""
    _init_worker(int(task.get("threads", 1)))
    with contextlib.suppress(Exception):
        import ray

        task = {**task, "node": ray.get_runtime_context().get_node_id()}
    token_file = Path(task["sweep_dir"]) / ".sweep-token"
    shared = token_file.is_file() and token_file.read_text().strip() == task["token"]
    if shared:
        return execute_point(task)
    with tempfile.TemporaryDirectory(prefix="dpfl-sweep-") as tmp:
        local = Path(tmp) / "runs" / task["id"]
        outcome = execute_point({**task, "run_path": str(local), "attempts_dir": str(Path(tmp) / "attempts"),
                                 "config": {**task["config"], "run-dir": str(local.parent)}})
        outcome["archive"] = pack_run(local)
        return outcome


def pack_run(path: Path) -> bytes:
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w:gz") as tar:
        for item in sorted(path.rglob("*")):
            rel = item.relative_to(path)
            if item.is_file() and rel.parts[0] != "checkpoints":
                tar.add(item, arcname=str(rel))
    return buf.getvalue()


def unpack_run(archive: bytes, path: Path, attempts_dir: Path) -> None:
    _archive_attempt(path, attempts_dir)
    path.mkdir(parents=True, exist_ok=True)
    with tarfile.open(fileobj=io.BytesIO(archive), mode="r:gz") as tar:
        tar.extractall(path, filter="data")


# --- engines ----------------------------------------------------------------------------------------------
OnDone = Callable[[dict[str, Any]], None]


def _failed(task: Mapping[str, Any], message: str) -> dict[str, Any]:
    path = Path(task["run_path"])
    info = read_json(path / "point.json") or {"id": task["id"]}
    info.update({"status": "failed", "error": message, "finished": time.time()})
    if path.exists():
        _write_json(path / "point.json", info)
    return {"id": task["id"], "status": "failed", "error": message, "wall_seconds": 0.0, "reused": False}


def run_local(tasks: list[dict[str, Any]], jobs: int, on_done: OnDone) -> None:
    """``jobs`` worker processes (spawned, one torch thread each); ``jobs == 1`` runs in this process."""
    if jobs <= 1:
        for task in tasks:
            on_done(execute_point(task))
        return
    pending = list(tasks)
    for _ in range(MAX_POOL_RESTARTS + 1):
        if not pending:
            return
        broken: list[dict[str, Any]] = []
        pool = cf.ProcessPoolExecutor(max_workers=min(jobs, len(pending)), mp_context=mp.get_context("spawn"),
                                      initializer=_init_worker, initargs=(int(pending[0].get("threads", 1)),))
        try:
            futures = {pool.submit(execute_point, t): t for t in pending}
            for fut in cf.as_completed(futures):
                task = futures[fut]
                try:
                    on_done(fut.result())
                except BrokenProcessPool:
                    broken.append(task)
                except Exception as exc:  # pickling errors and the like: this point only
                    on_done(_failed(task, f"{type(exc).__name__}: {exc}"))
        except BaseException:
            pool.shutdown(wait=False, cancel_futures=True)
            raise
        pool.shutdown(wait=True)
        # A worker died (killed, out of memory): points it was running fail; those never started go again.
        pending = []
        for task in broken:
            info = read_json(Path(task["run_path"]) / "point.json") or {}
            if info.get("session") == task.get("session") and info.get("status") == "running":
                on_done(_failed(task, "the worker process died while running this point (killed, or out of "
                                      "memory?)"))
            else:
                pending.append(task)
    for task in pending:
        on_done(_failed(task, "worker processes kept dying; not run"))


def run_ray(tasks: list[dict[str, Any]], jobs: int, on_done: OnDone, *, address: str | None) -> None:
    """One Ray task (one CPU) per point: on a cluster (``address``) or a local Ray with ``jobs`` CPUs."""
    import ray

    target = address or os.environ.get("RAY_ADDRESS") or "local"
    kwargs: dict[str, Any] = {"include_dashboard": False, "log_to_driver": False, "ignore_reinit_error": True,
                              "runtime_env": {"env_vars": {"OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}}}
    if target == "local":
        kwargs["num_cpus"] = jobs
    with warnings.catch_warnings():  # Ray's advice about GPU env vars: the default (no GPU per task) is wanted
        warnings.filterwarnings("ignore", category=FutureWarning, message=".*RAY_ACCEL_ENV_VAR_OVERRIDE.*")
        ray.init(address=target, **kwargs)
    try:
        remote = ray.remote(num_cpus=1, max_retries=0)(execute_point_portable)
        refs = {remote.remote(t): t for t in tasks}
        while refs:
            done, _ = ray.wait(list(refs), num_returns=1)
            for ref in done:
                task = refs.pop(ref)
                try:
                    outcome = ray.get(ref)
                except Exception as exc:  # the task's process died, or the node left
                    on_done(_failed(task, f"Ray task failed: {type(exc).__name__}: {exc}"))
                    continue
                archive = outcome.pop("archive", None)
                if archive is not None:
                    unpack_run(archive, Path(task["run_path"]), Path(task["attempts_dir"]))
                on_done(outcome)
    finally:
        ray.shutdown()


# --- ledgers and honest tuning ----------------------------------------------------------------------------
ReleaseKey = tuple[float, float, int]  # (noise multiplier, sample rate, steps)


def read_ledgers(run: Path) -> dict[str, list[ReleaseKey]]:
    """Sample-level DP-SGD releases per client, from RUN/ledgers/<client>.jsonl."""
    from dpfl.privacy import release_from_dict

    out: dict[str, list[ReleaseKey]] = {}
    for path in sorted((run / "ledgers").glob("*.jsonl")):
        entries = [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
        keys = []
        for entry in entries:
            r = release_from_dict(entry)
            if r.mechanism == "dp-sgd":
                keys.append((float(r.noise_multiplier), float(r.sample_rate), int(r.steps)))
        if keys:
            out[path.stem] = keys
    return out


def _event(sigma: float, q: float, steps: int) -> Any:
    import dp_accounting

    gaussian = dp_accounting.GaussianDpEvent(sigma)
    inner = gaussian if q >= 1 else dp_accounting.PoissonSampledDpEvent(q, gaussian)
    return dp_accounting.SelfComposedDpEvent(inner, int(steps))


@lru_cache(maxsize=4096)
def _pld_accountant(multiset: tuple[tuple[float, float, int], ...]) -> Any:
    """dp_accounting PLD of releases given as (sigma, q, total steps), composed in a fixed order."""
    from dp_accounting.pld.pld_privacy_accountant import PLDAccountant

    acc = PLDAccountant(value_discretization_interval=PLD_DISCRETIZATION)
    for sigma, q, steps in multiset:
        acc.compose(_event(sigma, q, steps))
    return acc


def _multiset(releases: Iterable[ReleaseKey]) -> tuple[tuple[float, float, int], ...]:
    """Composition is commutative: identical (sigma, q) releases merge into one self-composition."""
    total: Counter[tuple[float, float]] = Counter()
    for sigma, q, steps in releases:
        total[(sigma, q)] += steps
    return tuple(sorted((s, q, n) for (s, q), n in total.items()))


def pld_epsilon(releases: Iterable[ReleaseKey], delta: float) -> float:
    ms = _multiset(releases)
    return float(_pld_accountant(ms).get_epsilon(delta)) if ms else 0.0


def pld_delta(releases: Iterable[ReleaseKey], eps: float) -> float:
    ms = _multiset(releases)
    return float(_pld_accountant(ms).get_delta(eps)) if ms else 0.0


def pld_deltas(releases: Iterable[ReleaseKey], eps: Sequence[float]) -> np.ndarray:
    """delta at many epsilons at once (the PLD answers a sorted vector in one pass)."""
    ms = _multiset(releases)
    values = np.asarray(eps, dtype=float)
    if not ms:
        return np.zeros(len(values))
    acc = _pld_accountant(ms)
    pld = getattr(acc, "_pld", None)
    if pld is None:  # a future dp_accounting without the attribute: one query per epsilon
        return np.array([float(acc.get_delta(e)) for e in values])
    order = np.argsort(values)
    out = np.empty(len(values))
    out[order] = np.asarray(pld.get_delta_for_epsilon(values[order]), dtype=float)
    return out


@lru_cache(maxsize=65536)
def _release_rdp(sigma: float, q: float, steps: int) -> np.ndarray:
    from opacus.accountants.analysis import rdp as opacus_rdp

    rdp = opacus_rdp.compute_rdp(q=q, noise_multiplier=sigma, steps=steps, orders=list(RDP_ORDERS))
    return np.asarray(rdp, dtype=float)


def ledger_rdp(releases: Iterable[ReleaseKey]) -> np.ndarray:
    total = np.zeros(len(RDP_ORDERS))
    for sigma, q, steps in _multiset(releases):
        total = total + _release_rdp(sigma, q, steps)
    return total


def rdp_to_epsilon(rdp: np.ndarray, delta: float, orders: Sequence[float] = RDP_ORDERS) -> float:
    from dp_accounting.rdp import rdp_privacy_accountant

    eps, _ = rdp_privacy_accountant.compute_epsilon(list(orders), list(np.asarray(rdp, dtype=float)), delta)
    return float(eps)


def poisson_eps_hat(orders: Sequence[float] = RDP_ORDERS) -> np.ndarray:
    """The largest eps_hat the Poisson theorem allows at each order: log(1 + 1/(lambda - 1))."""
    return np.log1p(1.0 / (np.asarray(orders, dtype=float) - 1.0))


def poisson_tuning_rdp(rdp: np.ndarray, delta_hat: Callable[[float], float], mu: float,
                       orders: Sequence[float] = RDP_ORDERS) -> np.ndarray:
    """RDP of "run Q K ~ Poisson(mu) times, release the best" (Papernot & Steinke 2022, Poisson case).

    If Q is (lambda, eps)-RDP and (eps_hat, delta_hat)-DP with e^eps_hat <= 1 + 1/(lambda - 1), the tuned
    algorithm is (lambda, eps + mu * delta_hat + log(mu) / (lambda - 1))-RDP. For each order we take the
    largest allowed eps_hat = log(1 + 1/(lambda - 1)) and Q's tightest delta there (``delta_hat``)."""
    eps_hats = poisson_eps_hat(orders)
    out = np.empty(len(orders))
    for i, lam in enumerate(orders):
        out[i] = rdp[i] + mu * delta_hat(float(eps_hats[i])) + math.log(mu) / (lam - 1.0)
    return out


def tnb_tuning_rdp(rdp: np.ndarray, eta: float, gamma: float,
                   orders: Sequence[float] = RDP_ORDERS) -> np.ndarray:
    """RDP of "run Q K ~ truncated negative binomial D_{eta,gamma} times, release the best"
    (Papernot & Steinke 2022, Theorem 2): for every order lambda, with Q (lambda_hat, eps_hat)-RDP,
    eps' = eps(lambda) + (1 + eta)(1 - 1/lambda_hat) eps_hat + (1 + eta) log(1/gamma) / lambda_hat
           + log(E[K]) / (lambda - 1), minimised over lambda_hat."""
    rdp = np.asarray(rdp, dtype=float)
    lam_hat = np.asarray(orders, dtype=float)
    with np.errstate(invalid="ignore"):
        extra = (1 + eta) * (1 - 1 / lam_hat) * rdp + (1 + eta) * math.log(1 / gamma) / lam_hat
    best = float(np.nanmin(np.where(np.isfinite(extra), extra, np.inf)))
    mean = tnb_mean(eta, gamma)
    return np.array([rdp[i] + best + math.log(mean) / (lam - 1.0) for i, lam in enumerate(orders)])


@dataclass
class PrivateRun:
    path: Path
    point_id: str  # the run directory name without an attempt suffix
    delta: float
    partition: str
    ledgers: dict[str, list[ReleaseKey]]
    attempt: bool  # an earlier, unfinished attempt (moved to attempts/)


def private_runs(out: Path) -> list[PrivateRun]:
    """Every private run in the sweep directory that released anything, earlier attempts included."""
    found: list[PrivateRun] = []
    for parent, attempt in ((out / "runs", False), (out / "attempts", True)):
        if not parent.is_dir():
            continue
        for run in sorted(p for p in parent.iterdir() if p.is_dir()):
            cfg = read_json(run / "config.json")
            if not isinstance(cfg, dict) or not cfg.get("dp", False) or cfg.get("deterministic-noise", False):
                continue
            ledgers = read_ledgers(run)
            if not ledgers:
                continue
            delta = float((cfg.get("resolved") or {}).get("delta") or cfg.get("delta") or 0.0)
            name = run.name.rsplit("-", 1)[0] if attempt else run.name
            found.append(PrivateRun(run, name, delta, _hash({k: cfg.get(k) for k in PARTITION_KEYS}), ledgers,
                                    attempt))
    return found


@dataclass
class Tuning:
    """The privacy cost of choosing a result from this sweep."""

    method: str
    epsilon: float | None
    delta: float | None
    private_runs: int
    statement: str
    notes: list[str] = field(default_factory=list)
    selected: str | None = None  # point id of the selected result
    selected_epsilon_alone: float | None = None
    trials: int | None = None
    distribution: str | None = None
    mean_trials: float | None = None

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def _max_rdp(run: PrivateRun) -> np.ndarray:
    return np.max(np.stack([ledger_rdp(v) for v in run.ledgers.values()]), axis=0)


def grid_tuning_epsilon(runs: Sequence[PrivateRun], delta: float) -> tuple[float, str, list[str]]:
    """epsilon of anything chosen from these runs: their composition, max over clients.

    When every run splits the records over clients the same way (same data, partition and seed), a client
    is the same set of records in every run: compose each client's releases across all runs with PLD
    (dp_accounting) and take the max over clients. Otherwise a record may sit at different clients in
    different runs; RDP then bounds it soundly: sum over runs of the per-order max over that run's clients."""
    if not runs:
        return 0.0, "none", []
    if len({r.partition for r in runs}) == 1:
        per_client: dict[str, list[ReleaseKey]] = {}
        for r in runs:
            for client, keys in r.ledgers.items():
                per_client.setdefault(client, []).extend(keys)
        eps = max(pld_epsilon(keys, delta) for keys in per_client.values())
        return eps, "pld-per-client", [f"composed {len(runs)} private runs per client with PLD "
                                       f"(dp_accounting); max over {len(per_client)} clients"]
    total = np.sum(np.stack([_max_rdp(r) for r in runs]), axis=0)
    return rdp_to_epsilon(total, delta), "rdp-max-per-run", [
        f"the {len(runs)} private runs do not split records over clients the same way (data, partition or "
        "seed differ), so each run contributes its worst client per RDP order; RDP composition, then "
        "conversion to (epsilon, delta) with dp_accounting"]


def random_tuning_epsilon(trial_runs: Sequence[PrivateRun], extra_runs: Sequence[PrivateRun], delta: float,
                          distribution: str, mean: float, eta: float) -> tuple[float, str, list[str]]:
    """Papernot & Steinke for the K trials (Q's RDP and delta_hat: max over trials and clients), plus plain
    RDP composition for any run outside the K trials (reruns of failed trials, points no longer planned)."""
    notes: list[str] = []
    ledgers = [keys for r in trial_runs for keys in r.ledgers.values()]
    distinct = {_multiset(k): k for k in ledgers}
    if distinct:
        rdp_q = np.max(np.stack([ledger_rdp(k) for k in distinct.values()]), axis=0)
    else:
        rdp_q = np.zeros(len(RDP_ORDERS))
    if distribution == "poisson":
        eps_hats = poisson_eps_hat()
        worst = np.zeros(len(eps_hats))
        for keys in distinct.values():
            worst = np.maximum(worst, pld_deltas(keys, eps_hats))
        table = dict(zip(eps_hats.tolist(), worst.tolist(), strict=True))
        rdp = poisson_tuning_rdp(rdp_q, lambda e: table[e], mean)
        method = "papernot-steinke-poisson"
        notes.append(f"K ~ Poisson({mean:g}) trials; Q's RDP and delta_hat are the max over the trials run "
                     "and their clients")
    else:
        gamma = tnb_gamma_for_mean(eta, mean)
        rdp = tnb_tuning_rdp(rdp_q, eta, gamma)
        method = "papernot-steinke-tnb"
        notes.append(f"K ~ truncated negative binomial (eta={eta:g}, gamma={gamma:.4g}, E[K]={mean:g}); "
                     "Q's RDP is the max over the trials run and their clients")
    if extra_runs:
        rdp = rdp + np.sum(np.stack([_max_rdp(r) for r in extra_runs]), axis=0)
        notes.append(f"{len(extra_runs)} private run(s) outside the K trials (reruns of failed trials or "
                     "points no longer planned) are added by RDP composition")
    return rdp_to_epsilon(rdp, delta), method, notes


# --- results ----------------------------------------------------------------------------------------------
def read_metrics(run: Path) -> list[dict[str, Any]]:
    p = run / "metrics.jsonl"
    if not p.exists():
        return []
    rows = []
    for line in p.read_text().splitlines():
        with contextlib.suppress(ValueError):
            rows.append(json.loads(line))
    return rows


def _sigma_text(ledgers: Mapping[str, list[ReleaseKey]]) -> float | str | None:
    sigmas = sorted({k[0] for keys in ledgers.values() for k in keys})
    if not sigmas:
        return None
    if sigmas[-1] - sigmas[0] <= 1e-9 * max(1.0, sigmas[-1]):
        return sigmas[0]
    return f"{sigmas[0]:.4g}-{sigmas[-1]:.4g}"


def collect_row(point: Point, out: Path) -> dict[str, Any]:
    """One result row: the point's parameters and outcome, read back from its run directory."""
    row: dict[str, Any] = {"id": point.id, "kind": point.kind, "trial": point.trial, "params": point.params,
                           "status": "failed", "error": point.error, "warning": "", "final_accuracy": None,
                           "best_accuracy": None, "best_round": None, "final_loss": None, "epsilon": None,
                           "delta": None, "noise_multiplier": None, "rounds_completed": 0, "stop_reason": "",
                           "wall_seconds": None, "not_private": point.kind != "private", "run_dir": "",
                           "accuracy_by_round": [], "epsilon_by_round": [], "seed": None}
    if point.config is None:
        return row
    row["seed"] = point.config.get("seed")
    from dpfl.privacy.policy import PrivacyPolicy

    row["not_private"] = PrivacyPolicy.from_config(point.config).not_private
    run = out / "runs" / point.id
    row["run_dir"] = str(run.relative_to(out))
    info = read_json(run / "point.json") or {}
    summary = read_json(run / "summary.json")
    metrics = read_metrics(run)
    row["accuracy_by_round"] = [m.get("accuracy") for m in metrics]
    row["epsilon_by_round"] = [m.get("epsilon_max") for m in metrics]
    accs = [(m["accuracy"], m["round"]) for m in metrics if isinstance(m.get("accuracy"), int | float)
            and math.isfinite(m["accuracy"])]
    if accs:
        best = max(accs)
        row["best_accuracy"], row["best_round"] = best
    if run_complete(run) and isinstance(summary, dict):
        acc = summary.get("final_accuracy")
        row.update({"status": "ok" if not summary.get("stop_reason") else "stopped", "error": "",
                    "final_accuracy": acc if isinstance(acc, int | float) and math.isfinite(acc) else None,
                    "final_loss": summary.get("final_loss"), "epsilon": summary.get("epsilon_max"),
                    "delta": summary.get("delta"), "rounds_completed": summary.get("rounds_completed", 0),
                    "stop_reason": summary.get("stop_reason", ""),
                    "wall_seconds": info.get("wall_seconds", summary.get("wall_seconds")),
                    "warning": info.get("warning", "")})
        if row["not_private"]:
            row["epsilon"] = None
        else:
            with contextlib.suppress(Exception):
                row["noise_multiplier"] = _sigma_text(read_ledgers(run))
    else:
        row["error"] = info.get("error") or ("not run" if not run.exists() else "incomplete: no summary.json")
        row["wall_seconds"] = info.get("wall_seconds")
    return row


def select(rows: Sequence[Mapping[str, Any]]) -> Mapping[str, Any] | None:
    """The chosen result: highest final server-side test accuracy among finished private points (ties: lower
    epsilon). The non-private baselines are never candidates."""
    cands = [r for r in rows if r["kind"] == "private" and not r["not_private"]
             and r["status"] in ("ok", "stopped") and r["final_accuracy"] is not None]
    if not cands:
        return None
    return max(cands, key=lambda r: (r["final_accuracy"], -(r["epsilon"] or 0.0)))


def compute_tuning(out: Path, spec: SweepSpec, points: Sequence[Point], rows: Sequence[Mapping[str, Any]],
                   *, trials: int | None) -> Tuning:
    runs = private_runs(out)
    chosen = select(rows)
    deltas = [r.delta for r in runs if r.delta > 0]
    delta = spec.tuning_delta or (min(deltas) if deltas else None)
    tuning = Tuning(method="none", epsilon=None, delta=delta, private_runs=len(runs), statement="",
                    selected=chosen["id"] if chosen else None,
                    selected_epsilon_alone=chosen["epsilon"] if chosen else None, trials=trials,
                    distribution=spec.random.distribution if spec.random else None,
                    mean_trials=spec.random.trials if spec.random else None)
    if not runs or delta is None:
        tuning.statement = "No private run released anything: there is no privacy cost and nothing to select."
        return tuning
    if spec.random is not None and spec.random.distribution != "fixed":
        planned = {p.id for p in points if p.kind == "private" and p.valid}
        trial_runs = [r for r in runs if not r.attempt and r.point_id in planned]
        extra = [r for r in runs if r not in trial_runs]
        eps, method, notes = random_tuning_epsilon(trial_runs, extra, delta, spec.random.distribution,
                                                   spec.random.trials, spec.random.eta)
        privacy_random = sorted((set(spec.random.params) & PRIVACY_KEYS)
                                | {k for k, v in spec.grid.items() if is_privacy_axis(k, v)})
        if privacy_random:
            notes.append(f"{', '.join(privacy_random)} is drawn at random: the bound takes Q's privacy as "
                         "the least private trial that ran; a draw that did not happen could have been less "
                         "private")
    else:
        eps, method, notes = grid_tuning_epsilon(runs, delta)
    tuning.method, tuning.epsilon, tuning.notes = method, eps, notes
    earlier = sum(r.attempt for r in runs)
    if earlier:
        tuning.notes.append(f"{earlier} earlier unfinished attempt(s) are included: their releases were "
                            "spent")
    what = (f"composition over all {len(runs)} private runs of the grid" if method.startswith(("pld", "rdp"))
            else f"the random-search bound of Papernot & Steinke (2022) over K = {trials} trial(s)")
    if chosen is None:
        tuning.statement = (f"No private point finished, so nothing is selected; the sweep still spent "
                            f"epsilon = {eps:.3f} at delta = {delta:.3g} ({what}).")
    else:
        alone = chosen["epsilon"]
        alone_text = f"{alone:.3f}" if isinstance(alone, int | float) else "n/a"
        tuning.statement = (
            f"The selected model (point {chosen['id']}, chosen by server-side test accuracy) is "
            f"(epsilon = {eps:.3f}, delta = {delta:.3g})-DP for each record (sample level, max over "
            f"clients): {what}. Its own run alone has epsilon = {alone_text}, which does NOT account for the "
            "selection. The non-private baselines are references only: they are never candidates, carry no "
            "guarantee and must not be released.")
    return tuning


# --- the whole sweep --------------------------------------------------------------------------------------
@dataclass
class SweepOutcome:
    out: Path
    points: list[Point]
    rows: list[dict[str, Any]]
    tuning: Tuning | None
    files: list[Path]
    ran: int = 0
    reused: int = 0
    failed: int = 0
    wall_seconds: float = 0.0


class Progress:
    """What the driver reports as points finish; the CLI plugs a rich progress bar in here."""

    def start(self, total: int, reused: int) -> None: ...
    def point_done(self, point: Point, outcome: Mapping[str, Any]) -> None: ...
    def stop(self) -> None: ...


def _plan_path(out: Path) -> Path:
    return out / "plan.json"


def _save_plan(out: Path, spec: SweepSpec, points: Sequence[Point], trials: int | None) -> None:
    _write_json(_plan_path(out), {"version": PLAN_VERSION, "spec": spec.to_dict(),
                                  "spec_digest": spec.digest(), "mode": spec.mode, "trials": trials,
                                  "points": [asdict(p) for p in points]})


def _load_plan(out: Path) -> dict[str, Any] | None:
    data = read_json(_plan_path(out))
    return data if isinstance(data, dict) and data.get("version") == PLAN_VERSION else None


def spec_from_plan(plan: Mapping[str, Any]) -> SweepSpec:
    s = dict(plan["spec"])
    rnd = s.get("random")
    s["random"] = RandomSpec(**rnd) if rnd else None
    return SweepSpec(**s)


def plan_sweep(spec: SweepSpec, out: Path, *, resume: bool) -> tuple[list[Point], int | None]:
    """Expand the sweep, or take the stored plan of a random search being resumed (its K and draws are
    fixed)."""
    plan = _load_plan(out)
    if plan is not None and not resume:
        raise SweepError(f"{out} already holds a sweep; pass --resume to continue it (finished points are "
                         "skipped) or choose another --out")
    if spec.random is not None:
        if plan is not None and plan.get("mode") == "random":
            if plan.get("spec_digest") != spec.digest():
                raise SweepError(f"the random search in {out} was planned from a different sweep spec; its "
                                 "number of trials and its draws are fixed in plan.json. Resume it with the "
                                 "same spec, or choose another --out")
            return [Point(**p) for p in plan["points"]], plan.get("trials")
        trials = draw_trial_count(spec.random.distribution, spec.random.trials, spec.random.eta)
        return expand(spec, trials=trials), trials
    return expand(spec), None


def run_sweep(spec: SweepSpec, out: str | Path, *, jobs: int = 1, engine: str = "local",
              ray_address: str | None = None, resume: bool = False, threads: int = 1,
              progress: Progress | None = None, report: bool = True) -> SweepOutcome:
    """Plan, run what is not finished yet, then write results.csv/json, tuning.json and the report."""
    t0 = time.time()
    out = Path(out).expanduser().resolve()
    if engine not in ("local", "ray"):
        raise SweepError(f"--engine {engine!r} is not valid: expected local or ray")
    if jobs < 1:
        raise SweepError(f"--jobs {jobs} is not valid: expected an integer >= 1")
    out.mkdir(parents=True, exist_ok=True)
    with _sweep_lock(out):
        return _run_locked(spec, out, jobs=jobs, engine=engine, ray_address=ray_address, resume=resume,
                           threads=threads, progress=progress, report=report, t0=t0)


@contextlib.contextmanager
def _sweep_lock(out: Path) -> Iterator[None]:
    """One sweep process per directory: two would archive and rerun each other's running points."""
    import fcntl

    with open(out / ".sweep.lock", "w") as fh:
        try:
            fcntl.flock(fh, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            raise SweepError(f"another dpfl sweep is running in {out}; wait for it or choose another --out") from None
        try:
            yield
        finally:
            fcntl.flock(fh, fcntl.LOCK_UN)


def _run_locked(spec: SweepSpec, out: Path, *, jobs: int, engine: str, ray_address: str | None, resume: bool,
                threads: int, progress: Progress | None, report: bool, t0: float) -> SweepOutcome:
    points, trials = plan_sweep(spec, out, resume=resume)
    (out / "runs").mkdir(exist_ok=True)
    _save_plan(out, spec, points, trials)
    token_file = out / ".sweep-token"
    if not token_file.exists():
        token_file.write_text(uuid.uuid4().hex + "\n")
    token = token_file.read_text().strip()
    session = uuid.uuid4().hex
    todo: list[dict[str, Any]] = []
    reused = 0
    for p in points:
        if not p.valid:
            continue
        run_path = out / "runs" / p.id
        if run_complete(run_path):
            reused += 1
            continue
        cfg = {**(p.config or {}), "run-dir": str(out / "runs"), "run-name": p.id, "workers": 1,
               "state-dir": ""}
        todo.append({"id": p.id, "config": cfg, "run_path": str(run_path),
                     "attempts_dir": str(out / "attempts"), "threads": threads, "session": session,
                     "sweep_dir": str(out), "token": token})
    by_id = {p.id: p for p in points}
    counts = {"ran": 0, "failed": 0}
    progress = progress or Progress()

    def on_done(outcome: dict[str, Any]) -> None:
        counts["ran"] += 1
        counts["failed"] += outcome.get("status") != "ok"
        progress.point_done(by_id[outcome["id"]], outcome)

    progress.start(len(todo), reused)
    try:
        if todo:
            if engine == "ray":
                run_ray(todo, jobs, on_done, address=ray_address)
            else:
                run_local(todo, jobs, on_done)
    finally:
        progress.stop()
    outcome = finish(out, spec, points, trials, report=report)
    outcome.ran, outcome.reused, outcome.failed = counts["ran"], reused, counts["failed"]
    outcome.failed += sum(not p.valid for p in points)
    outcome.wall_seconds = time.time() - t0
    return outcome


def finish(out: Path, spec: SweepSpec, points: Sequence[Point], trials: int | None, *,
           report: bool = True) -> SweepOutcome:
    """Results, tuning and report from whatever the sweep directory holds (also used by --report-only)."""
    from dpfl.simulations.sweeps import report as sweep_report

    rows = [collect_row(p, out) for p in points]
    tuning: Tuning | None = None
    try:
        tuning = compute_tuning(out, spec, points, rows, trials=trials)
    except Exception as exc:  # accounting must not lose the results table; say so loudly instead
        tuning = Tuning(method="error", epsilon=None, delta=None, private_runs=0,
                        statement=f"The tuning epsilon could not be computed ({type(exc).__name__}: {exc}); "
                                  "no guarantee is stated for a selected model.")
    _write_json(out / "tuning.json", tuning.to_dict())
    files = sweep_report.write_results(out, rows, axes=list(_axes(spec)))
    if report:
        files += sweep_report.write_report(out, spec, rows, tuning)
    return SweepOutcome(out=out, points=list(points), rows=rows, tuning=tuning, files=files)


def _axes(spec: SweepSpec) -> list[str]:
    labels = list(spec.grid)
    if spec.random is not None:
        labels += [k for k in spec.random.params if k not in labels]
    return labels


def report_only(out: str | Path) -> SweepOutcome:
    out = Path(out).expanduser().resolve()
    plan = _load_plan(out)
    if plan is None:
        raise SweepError(f"{out} holds no sweep (no plan.json)")
    spec = spec_from_plan(plan)
    return finish(out, spec, [Point(**p) for p in plan["points"]], plan.get("trials"))
