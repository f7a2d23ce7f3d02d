"""How a run was started (engine and each node's config), kept in its run directory so it can be resumed.

The run config (config.json) says *what* runs; ``plan.json`` says *how*: which engine, and the node configs
the engine gave each client (its partition or its own data path, its owner policy, its id), plus for a
launched federation whether it was secure and with which certificates. ``dpfl resume RUN_DIR`` reads both
and starts the same federation again; nothing else is needed from the person resuming.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from dpfl.privacy.rundata import read_json_object
from dpfl.server.rundir import atomic_write_text
from dpfl.simulations.config import ConfigError

PLAN_FILE = "plan.json"
ENGINES = ("inprocess", "ray", "launch")


def write_plan(run_path: Path, engine: str, nodes: list[dict[str, Any]] | None, **extra: Any) -> None:
    """Record how this run is started (first start only: a resumed run keeps its plan)."""
    if engine not in ENGINES:
        raise ValueError(f"engine {engine!r}: expected one of {ENGINES}")
    run_path.mkdir(parents=True, exist_ok=True)
    atomic_write_text(run_path / PLAN_FILE, json.dumps({"engine": engine, "nodes": nodes, **extra}, indent=2) + "\n")


def read_plan(run_path: Path) -> dict[str, Any]:
    """The run's plan; ConfigError naming the problem when it is missing or not one dpfl wrote."""
    plan = read_json_object(run_path / PLAN_FILE)
    if plan is None:
        raise ConfigError(f"{run_path / PLAN_FILE} is missing or unreadable: this run was started by an older dpfl "
                          "or by `flwr run`; resume it with the command that started it plus --resume")
    if plan.get("engine") not in ENGINES or not isinstance(plan.get("nodes"), list | None):
        raise ConfigError(f"{run_path / PLAN_FILE} is not a plan dpfl wrote (engine {plan.get('engine')!r})")
    return plan
