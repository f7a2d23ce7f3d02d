"""Run one federation on one machine: checks first, then the in-process engine or Ray."""

from __future__ import annotations

import glob
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
from dpfl.privacy.rundata import CLIENT_LEDGER_INDEX, CONFIG_FILE, has_metrics
from dpfl.server.federation import FederationResult, Reporter
from dpfl.server.rundir import RunDirectory, atomic_write_text
from dpfl.simulations import apps
from dpfl.simulations.config import ConfigError, RunConfig
from dpfl.simulations.config.options import FILE_DATASETS
from dpfl.simulations.data.clients import declared_sizes, load_test_set, server_declared_total
from dpfl.simulations.engines import early_checks
from dpfl.simulations.engines.inprocess import SERVER_NODE_ID, InProcessGrid
from dpfl.simulations.engines.run_plan import write_plan

log = logging.getLogger("dpfl")


@dataclass
class SimulationOutcome:
    run_path: Path
    result: FederationResult | None
    calibrated_sigma: dict[str, float]


def preflight(cfg: RunConfig, nodes: list[dict[str, Any]] | None = None) -> dict[str, float]:
    """Everything that can be checked before training: data present, model fits the data,
    target epsilon reachable. Returns the calibrated sigma per client (empty without a target).

    ``nodes`` with ``own-data`` (``--client-data``): each owner's records are read and checked as its
    own client will read them, and its sigma comes from the record count it declares."""
    values = cfg.as_dict()
    early_checks.check_device(cfg)
    early_checks.check_directories(cfg)
    from dpfl.privacy.policy import PolicyError

    _, _, input_shape, num_classes = load_test_set(values)  # raises DataError with a fix
    check_model(cfg, input_shape, num_classes)
    owners = [node for node in nodes or [] if node.get(apps.OWN_DATA)]
    if owners:
        client_ids, sizes = _owner_sizes(cfg, owners, input_shape, num_classes)
    else:
        sizes = declared_sizes(values)
        named = [str(node.get("client-id", "")) for node in nodes or []]
        client_ids = (named if len(named) == len(sizes) and all(named)
                      else [apps.default_client_id(k) for k in range(len(sizes))])
    too_small = [client_ids[k] for k, n in enumerate(sizes) if n < 1]
    if too_small:
        raise ConfigError(f"clients {too_small} have no training records; use fewer clients or another partition")
    if cfg["privacy-unit"] == "client":
        early_checks.check_user_level(cfg)
    sigmas: dict[str, float] = {}
    if not cfg["dp"]:
        return sigmas
    try:
        delta = cfg.policy.delta(server_declared_total(values) if owners else sum(sizes))
    except PolicyError as exc:
        raise ConfigError(str(exc)) from None
    if cfg["target-epsilon"] > 0:
        client_settings = ClientSettings.from_config(values)
        for cid, n in zip(client_ids, sizes, strict=True):  # the clients' own calibration (cached)
            try:
                sigmas[cid] = noise_multiplier_for(client_settings, n, delta)
            except ValueError as exc:
                raise ConfigError(f"target-epsilon={cfg['target-epsilon']} cannot be reached for client {cid} "
                                  f"({n} records): {exc}") from None
    early_checks.check_budget_fits(cfg, sizes, delta, sigmas, client_ids)
    return sigmas


def _owner_sizes(cfg: RunConfig, owners: list[dict[str, Any]], input_shape: tuple[int, ...],
                 num_classes: int) -> tuple[list[str], list[int]]:
    """Each data owner's client id and declared record count, its data read as its own client reads it."""
    from dpfl.simulations.data.datasets import DataError

    client_ids, sizes = [], []
    for node in owners:
        cid = str(node["client-id"])
        try:
            setup = apps.own_data_setup(cfg, node, cid)
        except (ConfigError, DataError) as exc:
            raise ConfigError(f"client {cid} ({node[apps.OWN_DATA]}): {exc}") from None
        if setup.input_shape != input_shape or setup.num_classes != num_classes:
            raise ConfigError(f"client {cid} ({node[apps.OWN_DATA]}): records of shape {setup.input_shape} with "
                              f"{setup.num_classes} classes, but the federation's schema says {input_shape} with "
                              f"{num_classes}; give every owner the same columns and the public label set (labels)")
        if len(setup.train_y) < 1:
            raise ConfigError(f"client {cid} ({node[apps.OWN_DATA]}) has no training records")
        client_ids.append(cid)
        sizes.append(int(setup.declared_records))
    return client_ids, sizes


def check_model(cfg: RunConfig, input_shape: tuple[int, ...], num_classes: int) -> None:
    """The model builds for the data's shapes and, under DP, DP-SGD can train it: Opacus' validator (with
    the fix ``fix-model`` applies named), output shape, no mixing of examples across a batch. Says which
    grad-sample mode ``auto`` picks, and why."""
    from dpfl.client.dp_modes import choose_mode
    from dpfl.models import build_model
    from dpfl.models.dp_check import ModelDPError, check_model_for_dp
    from dpfl.models.regularisation import DropoutError, dropout_targets

    try:
        model = build_model(cfg["model"], input_shape, num_classes, fix=cfg["fix-model"])
    except ValueError as exc:
        raise ConfigError(f"model={cfg['model']!r} does not fit dataset={cfg['dataset']!r} "
                          f"(inputs {input_shape}): {exc}") from None
    if cfg["augmentations"] > 1 and len(input_shape) != 3:
        raise ConfigError(f"augmentations = {cfg['augmentations']} shifts images, but dataset={cfg['dataset']!r} has "
                          f"inputs of shape {tuple(input_shape)}; set augmentations = 1")
    try:
        dropout_targets(model, cfg["dropout"])
    except DropoutError as exc:
        raise ConfigError(f"model={cfg['model']!r}: {exc}") from None
    if not cfg["dp"]:
        return
    try:
        check_model_for_dp(model, input_shape, num_classes)
    except ModelDPError as exc:
        raise ConfigError(f"model={cfg['model']!r} cannot be trained with DP-SGD: {exc}") from None
    if cfg["grad-sample-mode"] == "auto":
        choice = choose_mode(model)
        log.info("grad-sample-mode auto -> %s: %s", choice.mode, choice.reason)


def client_data_paths(pattern: str) -> list[tuple[str, Path]]:
    """(client id, path) of each data owner for ``--client-data DIR_OR_GLOB``: every file or folder in DIR
    (hidden ones skipped), or every match of GLOB; the client id is the name without its suffix."""
    from dpfl.privacy.wire import WireError, check_client_id

    where = Path(pattern).expanduser()
    paths = (sorted(p for p in where.iterdir() if not p.name.startswith(".")) if where.is_dir()
             else sorted(Path(p) for p in glob.glob(str(where))))
    if not paths:
        raise ConfigError(f"--client-data {pattern}: no files or folders there; give a folder holding one data "
                          f"file or folder per client, or a glob such as 'sites/*.csv'")
    out: list[tuple[str, Path]] = []
    for path in paths:
        client_id = path.name.split(".")[0] if path.is_file() else path.name
        try:
            check_client_id(client_id, f"--client-data {path}")
        except WireError as exc:
            raise ConfigError(f"{exc}; rename the file (its name is the client's id)") from None
        out.append((client_id, path.resolve()))
    ids = [cid for cid, _ in out]
    if len(set(ids)) != len(ids):
        raise ConfigError(f"--client-data {pattern}: two paths give the same client id; give each client one path")
    return out


def own_data_nodes(cfg: RunConfig, pattern: str) -> tuple[RunConfig, list[dict[str, Any]]]:
    """The run config (num-clients = the number of owners) and one node config per data owner, each with
    its own records only; every owner's data is read and checked now, before anything trains."""
    owners = client_data_paths(pattern)
    if cfg["dataset"] not in FILE_DATASETS and ":" not in cfg["dataset"]:
        raise ConfigError(f"--client-data needs a file dataset (csv, parquet, npz, imagefolder, hf-disk) or a "
                          f"loader; dataset={cfg['dataset']!r} is built in")
    if cfg["data-path"]:
        raise ConfigError(f"--client-data gives every owner its own records, and data-path={cfg['data-path']!r} "
                          f"names a shared dataset; drop --data-path (the server's own held-out set is "
                          f"--test-data-path)")
    cfg = cfg.replace(**{"num-clients": len(owners), "partition": "iid", "client-column": ""})
    if cfg["min-train-clients"] > len(owners):
        raise ConfigError(f"min-train-clients={cfg['min-train-clients']} but --client-data names {len(owners)} "
                          f"client(s)")
    nodes = [{"own-data": str(path), "client-id": cid, "partition-id": k} for k, (cid, path) in enumerate(owners)]
    return cfg, nodes


def node_configs(cfg: RunConfig, privacy_policy: str | None,
                 own_data: list[dict[str, Any]] | None = None) -> list[dict[str, Any]]:
    """Each virtual client's own node config: its partition (or its own records, ``own_data``) and, when
    given, its owner's privacy policy (a node setting, never a run-config key: the server must not be able
    to change it)."""
    n = cfg["num-clients"]
    nodes: list[dict[str, Any]] = ([dict(node) for node in own_data] if own_data else
                                   [{"partition-id": k, "num-partitions": n} for k in range(n)])
    if privacy_policy:
        where = Path(privacy_policy).expanduser().resolve()
        for node in nodes:
            node["privacy-policy"] = str(where)
            if not where.is_dir():
                node["privacy-policy-shared"] = True
    return nodes


def plan_nodes(cfg: RunConfig, privacy_policy: str | None = None, client_data: str | None = None,
               clients_given: bool = True) -> tuple[RunConfig, list[dict[str, Any]]]:
    """The run config and every client's node config: partitions of the dataset, or with ``client_data``
    one data owner per file or folder (num-clients becomes their number). ``partition = by-column``
    without a num-clients the user gave (``clients_given``): one client per value of the client column."""
    own, site_ids = None, ()
    if cfg["partition"] == "by-column" and not client_data:
        from dpfl.simulations.data.clients import natural_client_ids

        site_ids = natural_client_ids(cfg.as_dict())
        if not clients_given:
            cfg = cfg.replace(**{"num-clients": max(1, len(site_ids))})
    if client_data:
        cfg, own = own_data_nodes(cfg, client_data)
    nodes = node_configs(cfg, privacy_policy, own)
    if len(site_ids) == len(nodes):  # one client per site, named by it (else the partition check says why)
        for node, site in zip(nodes, site_ids, strict=True):
            node["client-id"] = site
    return cfg, nodes


def owner_policies(nodes: list[dict[str, Any]]) -> dict[str, OwnerPolicy]:
    """Load every client's policy now, so a bad file stops the run before anything trains."""
    out = {}
    for node in nodes:
        client_id = str(node.get("client-id") or apps.default_client_id(int(node["partition-id"])))
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


def check_run_directory(path: Path, resume: bool) -> None:
    """A new run needs an unused run directory; a resumed one, a run whose checkpoint and ledgers agree."""
    if not resume:
        if has_metrics(path):
            raise ConfigError(f"run directory {path} already holds a run; choose another --run-name, or continue "
                              f"it with `dpfl resume {path}`")
        return
    if not (path / CONFIG_FILE).exists():
        raise ConfigError(f"--resume: {path} holds no run (no config.json); give the run directory of the "
                          "interrupted run (--run-dir and --run-name)")
    from dpfl.server.resume import ResumeError, check_resumable
    from dpfl.server.rundir import RunDirectory

    try:
        check_resumable(RunDirectory(path))
    except ResumeError as exc:
        raise ConfigError(str(exc)) from None


def worker_count(cfg: RunConfig) -> int:
    if cfg["workers"] > 0:
        return cfg["workers"]
    return max(1, min(os.cpu_count() or 1, cfg["num-clients"]))


def simulate(cfg: RunConfig, *, reporter: Reporter | None = None, run_path: Path | None = None,
             engine: str = "inprocess", privacy_policy: str | None = None,
             checked: dict[str, float] | None = None,
             nodes: list[dict[str, Any]] | None = None) -> SimulationOutcome:
    """Run the same ServerApp and ClientApp as every other engine, here on one machine. ``privacy_policy``:
    one owner policy file applied to every client, or a folder of ``<client-id>.toml``. ``checked``: what
    ``preflight(cfg)`` returned when the caller already ran it (else it runs here). ``nodes``: what
    ``plan_nodes`` returned (else each client is a partition, with ``privacy_policy``)."""
    if nodes is None:
        nodes = node_configs(cfg, privacy_policy)
    sigmas = preflight(cfg, nodes) if checked is None else checked
    policies = owner_policies(nodes)
    if policies and engine == "ray":
        raise ConfigError("--privacy-policy is not available with --engine ray (Flower's simulation sets each "
                          "node's config itself); use the in-process engine or dpfl launch")
    path = run_path or apps.default_run_path(cfg)
    check_run_directory(path, bool(cfg["resume"]))
    write_client_ledger_index(path, policies)
    if not cfg["resume"]:
        write_plan(path, engine, nodes)
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
