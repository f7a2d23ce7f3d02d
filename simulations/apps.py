"""Composition root: the ServerApp and ClientApp that every engine runs (`flwr run .` included).

``client`` and ``server`` know nothing of datasets or config files; here we resolve the run
config from the Flower ``Context``, load the client's partition or the server's test set, and
hand them over. Loaded data is cached per process, so a worker that hosts many virtual clients
reads the dataset once.
"""

from __future__ import annotations

import dataclasses
import logging
import re
import time
from collections.abc import Callable
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path
from typing import Any

import torch
from flwr.app import Context
from flwr.serverapp import ServerApp

from dpfl.client.app import ClientSetup, build_client_app
from dpfl.client.canaries import DiracCanaries
from dpfl.client.settings import ClientSettings
from dpfl.privacy import wire
from dpfl.privacy.owner_policy import OwnerPolicy, OwnerPolicyError, load_owner_policies
from dpfl.server.app import ServerSetup, build_server_app
from dpfl.server.audit_observer import ReleaseObserver
from dpfl.server.canary_clients import CanaryClients
from dpfl.server.federation import FederationResult, LogReporter, Reporter
from dpfl.server.rundir import RunDirectory
from dpfl.server.settings import ServerSettings
from dpfl.simulations.audit.plan import AuditPlan, AuditPlanError, read_plan
from dpfl.simulations.config import ConfigError, RunConfig, resolve
from dpfl.simulations.data.clients import (
    clients_bring_own_data,
    declared_sizes,
    load_client_data,
    load_test_set,
    server_declared_total,
)

OWN_DATA = "own-data"  # node config: the path of this owner's own records (`dpfl client --data-path`)


@dataclass(frozen=True)
class ServerHooks:
    """What a driving engine plugs into the server, passed explicitly to ``make_serverapp``: a progress
    reporter, an end-of-run hook (default: write the privacy report), and the run directory it chose (so
    the CLI knows where outputs went). ``flwr run`` and a SuperLink use the defaults."""

    reporter: Reporter | None = None
    on_finish: Callable[[FederationResult, RunDirectory, float], None] | None = None
    run_path: Path | None = None


def config_from_context(context: Context) -> RunConfig:
    return resolve(dict(context.run_config))


@lru_cache(maxsize=4)
def _cached_config(items: tuple[tuple[str, Any], ...]) -> RunConfig:
    return resolve(dict(items))


@lru_cache(maxsize=256)
def _client_setup(cfg: RunConfig, partition_id: int, client_id: str, owner: OwnerPolicy | None) -> ClientSetup:
    values = cfg.as_dict()
    data = load_client_data(values, partition_id)
    _, _, input_shape, num_classes = load_test_set(values)
    declared = declared_sizes(values)[partition_id]
    if owner is not None and owner.declared_records and cfg["neighbouring"] == "add-remove":
        declared = owner.declared_records  # the owner's own public N
    train_x, train_y, canaries = data.train_x, data.train_y, None
    if cfg["audit-plan"]:  # a privacy audit: this client's included canaries join its records
        train_x, train_y, canaries = _with_canaries(values, client_id, train_x, train_y)
    return ClientSetup(settings=ClientSettings.from_config(values), client_id=client_id, partition_id=partition_id,
                       train_x=train_x, train_y=train_y, val_x=data.val_x, val_y=data.val_y,
                       input_shape=input_shape, num_classes=num_classes, declared_records=declared,
                       owner_policy=owner, canaries=canaries)


@lru_cache(maxsize=4)
def _audit_plan(audit_dir: str, coins: bool) -> AuditPlan:
    try:
        return read_plan(Path(audit_dir), coins=coins)
    except AuditPlanError as exc:
        raise ConfigError(str(exc)) from None


def _with_canaries(values: dict[str, Any], client_id: str, x: torch.Tensor, y: torch.Tensor
                   ) -> tuple[torch.Tensor, torch.Tensor, DiracCanaries | None]:
    """Input canaries: the test records the coins included here, with their wrong labels, appended to the
    records. Gradient canaries: their coordinates (client.canaries; drawn with the records by the sampler)."""
    plan = _audit_plan(str(values["audit-plan"]), True)
    mine = plan.included_for(client_id)
    if plan.kind == "gradient":
        return x, y, DiracCanaries(tuple((c.param, c.index) for c in mine))
    if not mine:
        return x, y, None
    test_x, _, _, _ = load_test_set(values)
    extra_x = test_x[[c.index for c in mine]].to(x.dtype)
    extra_y = torch.tensor([c.label for c in mine], dtype=y.dtype)
    return torch.cat([x, extra_x]), torch.cat([y, extra_y]), None


def owner_policy_for(node: dict[str, Any], client_id: str) -> OwnerPolicy | None:
    """The data owner's policy named by the node's own config (never the run config): ``privacy-policy`` is
    the owner's file, or a folder of ``<client-id>.toml``; ``privacy-policy-shared`` marks one file that a
    simulation applies to every client (each then keeps its own ledger, suffixed by its client id)."""
    where = str(node.get("privacy-policy", ""))
    if not where:
        return None
    try:
        return _load_policy(where, client_id, bool(node.get("privacy-policy-shared")))
    except OwnerPolicyError as exc:
        raise ConfigError(str(exc)) from None


@lru_cache(maxsize=256)
def _load_policy(path: str, client_id: str, shared: bool) -> OwnerPolicy:
    return load_owner_policies(path, [client_id], shared=shared)[client_id]


def preload_data(run_config: dict[str, Any]) -> None:
    """Load the dataset and its partitions into this process's caches. The in-process engine's workers
    call it while they start, so the first round does not wait for it; a data error surfaces there too."""
    cfg = _cached_config(tuple(sorted(run_config.items())))
    values = cfg.as_dict()
    if not clients_bring_own_data(values):  # an owner's own records are read by its own client
        declared_sizes(values)
    load_test_set(values)


def default_client_id(partition_id: int) -> str:
    """A client's name when its node config gives none: stable across runs, so its ledgers line up."""
    return f"client-{partition_id:03d}"


def client_setup(context: Context) -> ClientSetup:
    cfg = _cached_config(tuple(sorted(dict(context.run_config).items())))
    node = dict(context.node_config)
    if node.get(OWN_DATA):
        if not str(node.get("client-id", "")):
            raise ConfigError("a node training on its own records needs its own stable client-id "
                              "(dpfl client --data-path PATH --client-id NAME)")
        return own_data_setup(cfg, node, str(node["client-id"]))
    partition_id = int(node.get("partition-id", 0))
    num_partitions = int(node.get("num-partitions", cfg["num-clients"]))
    if num_partitions != cfg["num-clients"]:
        n = cfg["num-clients"]
        raise ConfigError(f"this SuperNode is partition {partition_id} of {num_partitions} (its node config) but the "
                          f"run config says num-clients={n}: start {n} SuperNodes (flwr run . --federation-config "
                          f"num-supernodes={n}) or run with --run-config num-clients={num_partitions}")
    if not 0 <= partition_id < num_partitions:
        raise ConfigError(f"partition-id={partition_id} is not valid: expected 0..{num_partitions - 1}")
    client_id = str(node.get("client-id", default_client_id(partition_id)))
    owner = owner_policy_for(node, client_id)
    # A SuperNode on its own machine names its local copy of the dataset and its ledger directory
    # (`dpfl client --data-dir --state-dir`): they override the run config's for this client only.
    local = {key: str(node[key]) for key in ("state-dir",) if str(node.get(key, ""))}
    if str(node.get("data-dir", "")):
        local["data-path"] = str(node["data-dir"])
    if local:
        cfg = cfg.replace(**local)
    return _client_setup(cfg, partition_id, client_id, owner)


def own_data_setup(cfg: RunConfig, node: dict[str, Any], client_id: str) -> ClientSetup:
    """A data owner's own file or folder (the node's ``own-data``): every record in it is this client's (no
    partition of a shared dataset), read with the federation's public schema (dataset kind, label column, labels,
    encodings).

    Under add-remove its record count N must be public and fixed independently of the records, so the owner
    declares it (``declared-records`` in its privacy policy, else the run config's); the true count is
    never used as N."""
    path, partition_id = str(node[OWN_DATA]), int(node.get("partition-id", 0))
    owner = owner_policy_for(node, client_id)
    kind = {"dataset": str(node["own-data-kind"])} if node.get("own-data-kind") else {}
    local = cfg.replace(**kind, **{"data-path": path, "num-clients": 1, "partition": "iid", "test-fraction": 0.0,
                           "min-train-clients": 1, "test-data-path": ""})
    declared = owner.declared_records if owner is not None and owner.declared_records else cfg["declared-records"]
    if cfg["neighbouring"] == "add-remove" and not declared:
        raise ConfigError(f"under add-remove {client_id}'s record count N must be public and independent of its "
                          f"records; declare it in the owner's privacy policy (declared-records = N) or set "
                          f"declared-records in the run config")
    setup = dataclasses.replace(_client_setup(local, 0, client_id, owner), partition_id=partition_id)
    if cfg["neighbouring"] == "add-remove":
        return dataclasses.replace(setup, declared_records=int(declared))
    return setup


def _name_part(spec: str) -> str:
    """'fashion-mnist' stays; 'my_pkg.models:Net' -> 'Net': a readable, path-safe piece of a run name."""
    last = str(spec).rsplit(":", 1)[-1].rsplit(".", 1)[-1] if ":" in str(spec) else str(spec)
    return re.sub(r"[^A-Za-z0-9_-]+", "-", last).strip("-")[:32] or "run"


def default_run_path(cfg: RunConfig) -> Path:
    """run-dir/run-name, or run-dir/<time stamp>-<dataset>-<model> (run-name was checked: one directory)."""
    name = cfg["run-name"] or "-".join((time.strftime("%Y%m%d-%H%M%S"), _name_part(cfg["dataset"]),
                                        _name_part(cfg["model"])))
    return Path(cfg["run-dir"]).expanduser().resolve() / name


def server_setup(context: Context, hooks: ServerHooks) -> ServerSetup:
    cfg = config_from_context(context)
    values = cfg.as_dict()
    test_x, test_y, input_shape, num_classes = load_test_set(values)
    observer, crafted = None, None
    if cfg["audit-plan"]:  # the server is the white-box auditor: it sees the releases, never the coins
        plan = _audit_plan(str(cfg["audit-plan"]), False)
        observer = ReleaseObserver(plan.coordinates()) if plan.kind == "gradient" else None
        if cfg["privacy-unit"] == "client":  # crafted canary clients, each in the population by its coin
            mine = _audit_plan(str(cfg["audit-plan"]), True).included_for(wire.RESERVED_CLIENT_ID)
            crafted = CanaryClients(tuple((c.param, c.index) for c in mine))
    return ServerSetup(
        settings=ServerSettings.from_config(values), test_x=test_x, test_y=test_y, input_shape=input_shape,
        num_classes=num_classes, run_path=hooks.run_path or default_run_path(cfg),
        declared_total=server_declared_total(values), reporter=hooks.reporter or LogReporter(),
        on_finish=hooks.on_finish or finish_run, observer=observer, canary_clients=crafted,
    )


def finish_run(result: FederationResult, rundir: RunDirectory, wall: float) -> None:
    """End of every run, whatever the engine: the model card (model.json) and the privacy report."""
    from dpfl.privacy.report import write_report  # matplotlib is heavy: only load it at the end
    from dpfl.simulations.model_card import write_card

    try:
        write_card(rundir.path)
    except Exception as exc:  # noqa: BLE001 - the card is a convenience: the run, its ledgers and report stand
        logging.getLogger("dpfl.server").warning("model.json was not written: %s: %s", type(exc).__name__, exc)
    write_report(rundir.path)


def make_serverapp(hooks: ServerHooks | None = None) -> ServerApp:
    """The ServerApp with an engine's hooks; ``serverapp`` below is the one with the defaults."""
    chosen = hooks or ServerHooks()
    return build_server_app(lambda context: server_setup(context, chosen))


clientapp = build_client_app(client_setup)
serverapp = make_serverapp()
