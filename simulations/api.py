"""The Python API: ``dpfl.simulate(model=MyNet, data="sites.csv", target_epsilon=3, ...)`` from a script or a notebook.

The same checks, apps, ledgers and run directory as ``dpfl simulate``; what it adds is the translation of
Python objects into run-config keys:

- ``model``: a zoo name, a ``"package.module:factory"`` string, or the class/function itself. An object
  defined in an importable module travels by its import path (worker processes import it). One defined in
  ``__main__`` or a notebook cell cannot be imported by another process, so the clients then train in this
  process (``workers = 1``, said in one log line); asking for more workers with such an object fails at
  once, saying to move it into a module.
- ``data``: a built-in dataset name, a file or folder (its kind from the suffix: ``.csv``, ``.parquet``,
  ``.npz``, a folder saved with ``save_to_disk`` or a folder of class folders), or a loader callable
  (``loader(config) -> UserData``), which travels like a model.
- every other keyword is a run-config key with ``_`` for ``-`` (``num_server_rounds=20``).

A plain script without ``if __name__ == "__main__":`` works: while the federation runs, the main module is
hidden from multiprocessing, so worker processes never re-run the user's script.
"""

from __future__ import annotations

import contextlib
import logging
import sys
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn

from dpfl.simulations.config import ConfigError, RunConfig, resolve
from dpfl.simulations.config.options import BUILT_IN_DATASETS

log = logging.getLogger("dpfl")

SUFFIX_KINDS = {".csv": "csv", ".parquet": "parquet", ".pq": "parquet", ".npz": "npz"}
_REGISTERED = "_registered_"  # attributes of this module holding objects only this process can reach


@dataclass
class RunResult:
    """What ``simulate`` returns: the per-round history, the final model, where everything is written."""

    run_dir: Path
    config: RunConfig
    history: list[dict[str, Any]]  # per round: round, accuracy, loss, epsilon (per client), epsilon_max
    model: nn.Module | None
    stop_reason: str = ""
    calibrated_sigma: dict[str, float] = field(default_factory=dict)

    @property
    def epsilon(self) -> float | None:
        """The federation's epsilon after the last round (max over clients); None without DP."""
        return self.history[-1].get("epsilon_max") if self.history else None

    @property
    def accuracy(self) -> float | None:
        return self.history[-1].get("accuracy") if self.history else None


def _import_path(obj: Any) -> str | None:
    """``module:qualname`` when another process can import ``obj`` by it, else None."""
    module, qualname = getattr(obj, "__module__", None), getattr(obj, "__qualname__", None)
    if not module or not qualname or module == "__main__" or "<" in qualname:
        return None
    target: Any = sys.modules.get(module)
    for part in qualname.split("."):
        target = getattr(target, part, None)
    return f"{module}:{qualname}" if target is obj else None


def _register(kind: str, obj: Any) -> str:
    """Keep ``obj`` reachable by a spec in this process only (the clients then train here)."""
    name = f"{_REGISTERED}{kind}_{id(obj):x}"
    setattr(sys.modules[__name__], name, obj)
    return f"{__name__}:{name}"


def _object_spec(what: str, obj: Any, local: list[str]) -> str:
    if not callable(obj):
        raise ConfigError(f"{what}={obj!r} is not valid: give a name, a 'package.module:factory' string or a "
                          f"callable")
    spec = _import_path(obj)
    if spec is not None:
        return spec
    local.append(f"{what} {getattr(obj, '__qualname__', obj)!r}")
    return _register(what, obj)


def _data_keys(data: Any, keys: dict[str, Any], local: list[str]) -> dict[str, Any]:
    if data is None:
        return {}
    if isinstance(data, str) and data in BUILT_IN_DATASETS:
        return {"dataset": data}
    if isinstance(data, (str, Path)):
        path = Path(data).expanduser()
        if not path.exists():
            raise ConfigError(f"data={str(data)!r}: no such file or folder; give a path to your records or a "
                              f"built-in dataset ({', '.join(BUILT_IN_DATASETS)})")
        kind = keys.get("dataset") or _kind_of(path)
        return {"dataset": kind, "data-path": str(path.resolve())}
    return {"dataset": _object_spec("data", data, local)}


def _kind_of(path: Path) -> str:
    if path.is_file():
        kind = SUFFIX_KINDS.get(path.suffix.lower())
        if kind is None:
            raise ConfigError(f"data={str(path)!r}: cannot tell the kind from the suffix {path.suffix!r}; pass "
                              f"dataset='csv' (or parquet, npz)")
        return kind
    if (path / "dataset_info.json").exists() or (path / "dataset_dict.json").exists():
        return "hf-disk"
    return "imagefolder"


@contextlib.contextmanager
def _main_module_hidden() -> Iterator[None]:
    """Hide ``__main__``'s file from multiprocessing while workers start, so they never re-run the script."""
    main = sys.modules.get("__main__")
    saved = {k: getattr(main, k) for k in ("__file__", "__spec__") if main is not None and hasattr(main, k)}
    try:
        for key in saved:
            if key == "__file__":
                delattr(main, key)
            else:
                setattr(main, key, None)
        yield
    finally:
        for key, value in saved.items():
            setattr(main, key, value)


def _quiet_flower() -> None:
    """One copy of every log line: Flower's own handler prints; its records do not also reach root's."""
    import flwr.supercore.logger  # noqa: F401 - Flower configures its logger on import

    flower = logging.getLogger("flwr")
    flower.propagate = False
    ours = logging.getLogger("dpfl")
    if not ours.handlers:
        handler = logging.StreamHandler(sys.stderr)
        handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(message)s", "%H:%M:%S"))
        ours.addHandler(handler)
        ours.setLevel(logging.INFO)
        ours.propagate = False


def simulate(*, model: str | Callable[..., nn.Module] | None = None, data: Any = None,
             config: Mapping[str, Any] | None = None, client_data: str | None = None,
             privacy_policy: str | None = None, engine: str = "inprocess", progress: bool = True,
             **keys: Any) -> RunResult:
    """Run one federation here and return its history, final model and run directory.

    ``config``: run-config keys (kebab-case, as in a TOML file) below the keyword arguments. Bad input
    raises ``ConfigError`` (or ``DataError``) with one line naming the problem and the fix, before
    anything trains."""
    from dpfl.simulations.user_code import expose_user_code

    expose_user_code()
    values: dict[str, Any] = dict(config or {})
    values.update({k.replace("_", "-"): v for k, v in keys.items()})
    local: list[str] = []
    values.update(_data_keys(data, values, local))
    if model is not None:
        values["model"] = model if isinstance(model, str) else _object_spec("model", model, local)
    if local:
        if int(values.get("workers", 0) or 0) > 1 or engine != "inprocess":
            raise ConfigError(f"{' and '.join(local)} is defined in __main__ (or a notebook), which other "
                              f"processes cannot import; move it into a module (e.g. mymodels.py beside the "
                              f"script) or use workers=1 with the in-process engine")
        values["workers"] = 1
        log.info("%s defined in __main__: the clients train in this process (workers = 1); put it in a module "
                 "to train them in parallel", " and ".join(local))
    cfg = resolve(values)
    _quiet_flower()
    from dpfl.simulations.engines.simulate import plan_nodes, preflight
    from dpfl.simulations.engines.simulate import simulate as run_simulation

    cfg, nodes = plan_nodes(cfg, privacy_policy, client_data, clients_given="num-clients" in values)
    sigmas = preflight(cfg, nodes)
    reporter = None
    if progress:
        from dpfl.simulations.cli.common import console
        from dpfl.simulations.cli.progress import RichReporter

        reporter = RichReporter(console)
    with _main_module_hidden():
        outcome = run_simulation(cfg, reporter=reporter, engine=engine, privacy_policy=privacy_policy,
                                 checked=sigmas, nodes=nodes)
    return _result(cfg, outcome.run_path, sigmas)


def _result(cfg: RunConfig, run_dir: Path, sigmas: dict[str, float]) -> RunResult:
    from dpfl.models import build_model
    from dpfl.privacy.rundata import read_metrics, read_summary
    from dpfl.simulations.data.clients import load_test_set

    history = [{"round": row.get("round"), "accuracy": row.get("accuracy"), "loss": row.get("loss"),
                "epsilon": dict(row.get("epsilon") or {}), "epsilon_max": row.get("epsilon_max")}
               for row in read_metrics(run_dir)]
    summary = read_summary(run_dir) or {}
    model = None
    weights = run_dir / "model.pt"
    if weights.exists():
        _, _, input_shape, num_classes = load_test_set(cfg.as_dict())
        model = build_model(cfg["model"], input_shape, num_classes, fix=cfg["fix-model"])
        model.load_state_dict(torch.load(weights, map_location="cpu", weights_only=True))
    return RunResult(run_dir=run_dir, config=cfg, history=history, model=model,
                     stop_reason=str(summary.get("stop_reason") or ""), calibrated_sigma=dict(sigmas))
