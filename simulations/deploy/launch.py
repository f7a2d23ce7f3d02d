"""A whole Flower federation as real OS processes on this machine: ``dpfl launch``'s engine and its exit codes.

``launch_federation`` starts one ``flower-superlink`` and one ``flower-supernode`` per client on
127.0.0.1, submits the run with ``flwr run``, merges every process's output into one prefixed stream
(``logs.py``), and on any exit (success, failure, Ctrl-C, SIGTERM) stops everything it started
(``supervisor.py``). The ServerApp writes the run directory itself; this module only reads its
summary back, through ``dpfl.privacy.rundata``.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import tempfile
import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from rich.console import Console

from dpfl.privacy.rundata import read_summary
from dpfl.simulations.config import ConfigError, RunConfig
from dpfl.simulations.deploy.approval import app_bundle_hash, approved_for_node, freeze_app
from dpfl.simulations.deploy.certs import CertPaths, generate_certificates
from dpfl.simulations.deploy.flower import (
    absolute_paths,
    flwr_run_command,
    repo_root,
    write_run_config,
)
from dpfl.simulations.deploy.logs import LogPrinter
from dpfl.simulations.deploy.node_keys import EnrolledNode, generate_node_key
from dpfl.simulations.deploy.processes import free_ports, port_listening
from dpfl.simulations.deploy.secure_link import OPERATOR_FEDERATION, SecureLink, start_secure_link, wait_until
from dpfl.simulations.deploy.superexec import start_node
from dpfl.simulations.deploy.supervisor import (
    EXIT_INTERRUPTED,
    EXIT_TERMINATED,
    LaunchError,
    ManagedProcess,
    Supervisor,
    Terminated,
    exit_words,
    interrupts_deferred,
    sigterm_as_exception,
)

SUPERNODE_ID_RE = re.compile(r"SuperNode ID:\s*(\d+)")


def run_exit_code(summary: Mapping[str, Any] | None) -> int:
    """0 when the run finished or stopped cleanly after at least one round (as ``dpfl simulate``)."""
    if summary is None:
        return 1
    rounds = summary.get("rounds_completed")
    return 0 if not summary.get("stop_reason") or (isinstance(rounds, int) and rounds > 0) else 1


@dataclass
class LaunchResult:
    """How a launched federation ended: the exit code ``dpfl launch`` returns, why, and what was left."""

    exit_code: int
    run_path: Path
    summary: dict[str, Any] | None
    message: str = ""
    client_exits: dict[str, int] = field(default_factory=dict)  # SuperNodes that died during the run
    leftover_pids: list[int] = field(default_factory=list)
    leftover_ports: list[int] = field(default_factory=list)
    seconds: float = 0.0


@dataclass
class LocalFederation:
    """What is running, written to <run dir>/logs/federation.json so people (and tests) can attach to it."""

    superlink_address: str
    superlink_pid: int
    clients: dict[str, dict[str, Any]]
    tls: bool
    ca_cert: str | None
    flower_home: str
    run_config: str
    marker: str
    control_address: str = ""
    node_auth: bool = False

    def write(self, path: Path) -> None:
        path.write_text(json.dumps(self.__dict__, indent=2) + "\n")


def _start_federation(sup: Supervisor, printer: LogPrinter, cfg: RunConfig, root: Path, tmp: Path, *,
                      certs: CertPaths | None, secure: bool, startup_timeout: float, threads: str,
                      node_configs: list[dict[str, Any]] | None
                      ) -> tuple[SecureLink, dict[str, ManagedProcess], list[int], dict[str, Path]]:
    """SuperLink, gateway and SuperNodes up, every SuperNode registered (and enrolled first when secure)."""
    n = cfg["num-clients"]
    configs = node_configs or [{"partition-id": k, "num-partitions": n} for k in range(n)]
    names = [f"client-{k}" for k in range(n)]
    bundle = app_bundle_hash(root)  # root: the frozen copy this launch submits (freeze_app)
    approved = [approved_for_node(c, bundle) for c in configs]  # a bad policy stops here, before any process
    keys: dict[str, Path] = {}
    enrolled: list[EnrolledNode] | None = None
    if secure:
        enrolled = []
        for name in names:
            keys[name], public = generate_node_key(tmp / "keys", name)
            enrolled.append(EnrolledNode(name, public))
    else:
        printer.info("WARNING: --insecure: traffic between processes is plaintext and any SuperNode is "
                     "accepted (fine on 127.0.0.1 for a trial; the default is TLS with enrolled nodes)",
                     style="yellow")
    public_port, *node_ports = free_ports(1 + n)
    link = start_secure_link(sup, public_host="127.0.0.1", public_port=public_port, certs=certs,
                             enrolled=enrolled, work_dir=tmp, startup_timeout=startup_timeout)
    ca = certs.ca_cert if certs else None
    nodes: dict[str, ManagedProcess] = {}
    for k, name in enumerate(names):
        nodes[name] = start_node(sup, name, link.public_address, node_ports[k], configs[k], ca, home=tmp / name,
                                 approved=approved[k], node_key=keys.get(name), env={"OMP_NUM_THREADS": threads})

    def registered() -> bool:
        return all(any(SUPERNODE_ID_RE.search(x) for x in list(p.lines)) for p in nodes.values())

    def node_failed() -> str | None:
        dead = [f"{k} ({exit_words(c)})" for k, p in nodes.items() if (c := p.poll()) is not None]
        if dead:
            return f"SuperNode {', '.join(dead)} exited at start; see {sup.log_dir}"
        return link.failure()

    wait_until(registered, startup_timeout, f"{n} SuperNodes to register with the SuperLink", node_failed)
    return link, nodes, node_ports, keys


def launch_federation(cfg: RunConfig, run_path: Path, *, certs: CertPaths | None = None,
                      console: Console | None = None, verbose: bool = False, timeout: float = 0.0,
                      startup_timeout: float = 90.0, client_threads: int | None = None,
                      node_configs: list[dict[str, Any]] | None = None, secure: bool = True) -> LaunchResult:
    """Run ``cfg`` on a local deployed federation: a SuperLink and num-clients SuperNodes on 127.0.0.1.

    ``cfg`` must be validated (and preflighted) by the caller; ``run_path`` is the run directory the
    ServerApp writes, exactly as for ``dpfl simulate``; process logs go to ``<run_path>/logs/``.
    ``secure`` (the default) is what ``dpfl server`` does across machines: TLS (``certs``, else a fresh CA
    for this launch), a node key per SuperNode enrolled before it starts, the Fleet-only gateway, and each
    SuperNode running only the app bundle built from this checkout (or its owner policy's approved-apps).
    ``secure=False`` is plaintext and admits any SuperNode, and says so.
    """
    console = console or Console(highlight=False)
    t0 = time.monotonic()
    cfg = absolute_paths(cfg, run_path)
    n = cfg["num-clients"]
    log_dir = run_path / "logs"
    printer = LogPrinter(console, verbose=verbose, merged_log=log_dir / "launch.log")
    tmp = Path(tempfile.mkdtemp(prefix="dpfl-launch-"))
    tmp.chmod(0o755)  # the gateway's nginx workers read their folder below it
    root = freeze_app(repo_root(), tmp / "app")
    sup = Supervisor(log_dir, printer)
    result = LaunchResult(exit_code=1, run_path=run_path, summary=None)
    threads = str(client_threads or os.environ.get("OMP_NUM_THREADS") or max(1, (os.cpu_count() or 1) // n))
    try:
        with sigterm_as_exception():
            if secure and certs is None:
                certs = generate_certificates(tmp / "certs")  # this launch's own CA, gone with it
            link, nodes, node_ports, keys = _start_federation(
                sup, printer, cfg, root, tmp, certs=certs, secure=secure, startup_timeout=startup_timeout,
                threads=threads, node_configs=node_configs)
            superlink = link.superlink
            ca = certs.ca_cert if certs else None
            printer.info(f"SuperLink {link.control_address} behind the Fleet gateway {link.public_address} "
                         f"({'TLS, enrolled SuperNodes only' if secure else 'plaintext, any SuperNode'}), "
                         f"{n} SuperNodes registered; logs in {log_dir}")
            home = link.operator_home
            run_config = write_run_config(log_dir / "run-config.toml", cfg)
            LocalFederation(
                superlink_address=link.public_address, superlink_pid=superlink.pid, tls=ca is not None,
                ca_cert=str(ca) if ca else None, flower_home=str(home), run_config=str(run_config),
                marker=sup.marker, control_address=link.control_address, node_auth=secure,
                clients={k: {"pid": p.pid, "port": node_ports[i], "partition-id": i, "command": p.argv,
                             "node_key": str(keys[k]) if k in keys else None}
                         for i, (k, p) in enumerate(nodes.items())},
            ).write(log_dir / "federation.json")
            server = sup.start("server", flwr_run_command(root, OPERATOR_FEDERATION, run_config),
                               env={"FLWR_HOME": str(home)})
            reported: set[str] = set()
            while server.poll() is None:
                code = superlink.poll()
                if code is not None:
                    raise LaunchError(f"flower-superlink died during the run ({exit_words(code)}); "
                                      f"see {superlink.log_path}")
                for name, proc in nodes.items():
                    code = proc.poll()
                    if code is not None and name not in reported:
                        reported.add(name)
                        result.client_exits[name] = code
                        printer.info(f"{name} (SuperNode pid {proc.pid}) exited ({exit_words(code)}); the "
                                     "run goes on without it, the server counts it as dropped",
                                     style="yellow")
                if timeout and time.monotonic() - t0 > timeout:
                    raise LaunchError(f"--timeout {timeout:.0f} s reached before the run finished")
                time.sleep(0.2)
            server.wait_output(5.0)
            result.summary = read_summary(run_path)
            result.exit_code = run_exit_code(result.summary)
            if result.summary is None:
                result.message = (f"the ServerApp did not finish the run (no summary.json; `flwr run` "
                                  f"{exit_words(server.poll() or 0)}); see {log_dir}/server.log and "
                                  f"{log_dir}/superlink.log")
    except Terminated:
        result.exit_code, result.message = EXIT_TERMINATED, "terminated (SIGTERM): stopped every process"
    except KeyboardInterrupt:
        result.exit_code, result.message = EXIT_INTERRUPTED, "interrupted: stopped every process"
    except (LaunchError, ConfigError) as exc:
        result.exit_code, result.message = 1, str(exc)
    finally:
        watched_ports = set(sup.ports_seen)
        with interrupts_deferred():
            result.leftover_pids = sup.stop_all()
        watched_ports |= sup.ports_seen
        result.leftover_ports = sorted(p for p in watched_ports if port_listening(p))
        printer.close()
        shutil.rmtree(tmp, ignore_errors=True)
        result.seconds = time.monotonic() - t0
    if result.summary is None:
        result.summary = read_summary(run_path)
    return result
