"""Run one federation on one machine: checks first, then the in-process engine or Ray."""

from __future__ import annotations

import json
import logging
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from flwr.app import Context, RecordDict

from dpfl.client.settings import ClientSettings
from dpfl.client.terms import noise_multiplier_for
from dpfl.privacy.owner_policy import OwnerPolicy
from dpfl.privacy.rundata import CLIENT_LEDGER_INDEX, has_metrics
from dpfl.server.federation import FederationResult, Reporter
from dpfl.server.rundir import RunDirectory, atomic_write_text
from dpfl.simulations import apps
from dpfl.simulations.config import ConfigError, RunConfig
from dpfl.simulations.data.clients import declared_sizes, load_test_set
from dpfl.simulations.engines import early_checks
from dpfl.simulations.engines.inprocess import SERVER_NODE_ID, InProcessGrid

log = logging.getLogger("dpfl")


@dataclass
class SimulationOutcome:
    run_path: Path
    result: FederationResult | None
    calibrated_sigma: dict[str, float]


def preflight(cfg: RunConfig) -> dict[str, float]:
    """Everything that can be checked before training: data present, model fits the data,
    target epsilon reachable. Returns the calibrated sigma per client (empty without a target)."""
    from dpfl.models import build_model

    values = cfg.as_dict()
    early_checks.check_device(cfg)
    early_checks.check_directories(cfg)
    _, _, input_shape, num_classes = load_test_set(values)  # raises DataError with a fix
    try:
        build_model(cfg["model"], input_shape, num_classes)
    except ValueError as exc:
        raise ConfigError(f"model={cfg['model']!r} does not fit dataset={cfg['dataset']!r} "
                          f"(inputs {input_shape}): {exc}") from None
    sizes = declared_sizes(values)
    too_small = [k for k, n in enumerate(sizes) if n < 1]
    if too_small:
        raise ConfigError(f"clients {too_small} have no training records; use fewer clients or another partition")
    sigmas: dict[str, float] = {}
    if cfg["dp"] and cfg["target-epsilon"] > 0:
        delta = cfg.policy.delta(sum(sizes))
        client_settings = ClientSettings.from_config(values)
        for k, n in enumerate(sizes):  # the clients' own calibration (cached), so the printed sigma is theirs
            try:
                sigmas[apps.default_client_id(k)] = noise_multiplier_for(client_settings, n, delta)
            except ValueError as exc:
                raise ConfigError(f"target-epsilon={cfg['target-epsilon']} cannot be reached for client {k} "
                                  f"({n} records): {exc}") from None
    if cfg["dp"]:
        early_checks.check_budget_fits(cfg, sizes, cfg.policy.delta(sum(sizes)), sigmas,
                                       [apps.default_client_id(k) for k in range(len(sizes))])
    return sigmas


def node_configs(cfg: RunConfig, privacy_policy: str | None) -> list[dict[str, Any]]:
    """Each virtual client's own node config: its partition and, when given, its owner's privacy policy
    (a node setting, never a run-config key: the server must not be able to change it)."""
    n = cfg["num-clients"]
    nodes: list[dict[str, Any]] = [{"partition-id": k, "num-partitions": n} for k in range(n)]
    if privacy_policy:
        where = Path(privacy_policy).expanduser().resolve()
        for node in nodes:
            node["privacy-policy"] = str(where)
            if not where.is_dir():
                node["privacy-policy-shared"] = True
    return nodes


def owner_policies(nodes: list[dict[str, Any]]) -> dict[str, OwnerPolicy]:
    """Load every client's policy now, so a bad file stops the run before anything trains."""
    out = {}
    for node in nodes:
        client_id = apps.default_client_id(int(node["partition-id"]))
        policy = apps.owner_policy_for(node, client_id)
        if policy is not None:
            out[client_id] = policy
    return out


def write_client_ledger_index(path: Path, policies: dict[str, OwnerPolicy]) -> None:
    """Where each client's own ledger lives, for the report's reconciliation (client-ledgers.json)."""
    if policies:
        path.mkdir(parents=True, exist_ok=True)
        atomic_write_text(path / CLIENT_LEDGER_INDEX, json.dumps(
            {cid: str(p.ledger_path()) for cid, p in sorted(policies.items())}, indent=2))


def worker_count(cfg: RunConfig) -> int:
    if cfg["workers"] > 0:
        return cfg["workers"]
    return max(1, min(os.cpu_count() or 1, cfg["num-clients"]))


def simulate(cfg: RunConfig, *, reporter: Reporter | None = None, run_path: Path | None = None,
             engine: str = "inprocess", privacy_policy: str | None = None) -> SimulationOutcome:
    """Run the same ServerApp and ClientApp as every other engine, here on one machine. ``privacy_policy``:
    one owner policy file applied to every client, or a folder of ``<client-id>.toml``."""
    sigmas = preflight(cfg)
    nodes = node_configs(cfg, privacy_policy)
    policies = owner_policies(nodes)
    if policies and engine == "ray":
        raise ConfigError("--privacy-policy is not available with --engine ray (Flower's simulation sets each "
                          "node's config itself); use the in-process engine or dpfl launch")
    path = run_path or apps.default_run_path(cfg)
    if has_metrics(path):
        raise ConfigError(f"run directory {path} already holds a run; choose another --run-name")
    write_client_ledger_index(path, policies)
    if engine == "ray":
        from dpfl.simulations.engines.ray_engine import simulate_on_ray

        simulate_on_ray(cfg, path)
        return SimulationOutcome(path, None, sigmas)
    holder: dict[str, FederationResult] = {}
    grids: list[InProcessGrid] = []

    def on_finish(result: FederationResult, rundir: RunDirectory, wall: float) -> None:
        holder["result"] = result
        for grid in grids:  # training is over: workers exit while the report is written
            grid.release_workers()
        apps.finish_run(result, rundir, wall)

    serverapp = apps.make_serverapp(apps.ServerHooks(reporter=reporter, on_finish=on_finish, run_path=path))
    with InProcessGrid(client_app_ref="dpfl.simulations.apps:clientapp", run_config=cfg.as_dict(),
                       num_nodes=cfg["num-clients"], workers=worker_count(cfg), node_configs=nodes,
                       worker_preload_ref="dpfl.simulations.apps:preload_data") as grid:
        grids.append(grid)
        grid.warm_up(wait=False)  # workers import and load data while the server sets up
        context = Context(run_id=1, node_id=SERVER_NODE_ID, node_config={}, state=RecordDict(),
                          run_config=cfg.as_dict())
        serverapp(grid, context)
    return SimulationOutcome(path, holder.get("result"), sigmas)
