"""A whole Flower federation as real OS processes on this machine: ``dpfl launch``'s engine and its exit codes.

``launch_federation`` starts one ``flower-superlink`` and one ``flower-supernode`` per client on
127.0.0.1, submits the run with ``flwr run``, merges every process's output into one prefixed stream
(``logs.py``), and on any exit (success, failure, Ctrl-C, SIGTERM) stops everything it started
(``supervisor.py``). The ServerApp writes the run directory itself; this module only reads its
summary back, through ``dpfl.privacy.rundata``.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import shutil
import signal
import tempfile
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from rich.console import Console

from dpfl.privacy.rundata import read_summary
from dpfl.simulations.config import ConfigError, RunConfig
from dpfl.simulations.deploy.certs import CertPaths
from dpfl.simulations.deploy.flower import (
    absolute_paths,
    flwr_run_command,
    repo_root,
    superlink_command,
    supernode_command,
    write_flower_home,
    write_run_config,
)
from dpfl.simulations.deploy.logs import LogPrinter
from dpfl.simulations.deploy.processes import free_ports, port_listening
from dpfl.simulations.deploy.supervisor import (
    EXIT_INTERRUPTED,
    EXIT_TERMINATED,
    LaunchError,
    ManagedProcess,
    Supervisor,
    Terminated,
    interrupts_deferred,
    sigterm_as_exception,
)

FEDERATION_NAME = "dpfl-local"
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

    def write(self, path: Path) -> None:
        path.write_text(json.dumps(self.__dict__, indent=2) + "\n")


def _wait(predicate: Callable[[], bool], timeout: float, what: str, *,
          failed: Callable[[], str | None]) -> None:
    """Poll ``predicate`` until true; a start-up failure (``failed`` says what) or the timeout raises."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return
        problem = failed()
        if problem:
            raise LaunchError(problem)
        time.sleep(0.1)
    raise LaunchError(f"timed out after {timeout:.0f} s waiting for {what}")


def _exit_words(code: int) -> str:
    """A child's exit status in words: "exit code 1", or "killed by SIGKILL" for a negative status."""
    if code < 0:
        with contextlib.suppress(ValueError):
            return f"killed by {signal.Signals(-code).name}"
    return f"exit code {code}"


def launch_federation(cfg: RunConfig, run_path: Path, *, certs: CertPaths | None = None,
                      console: Console | None = None, verbose: bool = False, timeout: float = 0.0,
                      startup_timeout: float = 90.0, client_threads: int | None = None,
                      node_configs: list[dict[str, Any]] | None = None) -> LaunchResult:
    """Run ``cfg`` on a local deployed federation: a SuperLink and num-clients SuperNodes on 127.0.0.1.

    ``cfg`` must be validated (and preflighted) by the caller; ``run_path`` is the run directory the
    ServerApp writes, exactly as for ``dpfl simulate``; process logs go to ``<run_path>/logs/``.
    """
    console = console or Console(highlight=False)
    t0 = time.monotonic()
    root = repo_root()
    cfg = absolute_paths(cfg, run_path)
    n = cfg["num-clients"]
    log_dir = run_path / "logs"
    printer = LogPrinter(console, verbose=verbose, merged_log=log_dir / "launch.log")
    tmp = Path(tempfile.mkdtemp(prefix="dpfl-launch-"))
    sup = Supervisor(log_dir, printer)
    result = LaunchResult(exit_code=1, run_path=run_path, summary=None)
    threads = str(client_threads or os.environ.get("OMP_NUM_THREADS") or max(1, (os.cpu_count() or 1) // n))
    try:
        with sigterm_as_exception():
            link_port, *node_ports = free_ports(1 + n)
            link_addr = f"127.0.0.1:{link_port}"
            ca = certs.ca_cert if certs else None
            if certs is None:
                printer.info("WARNING: --insecure: traffic between processes is plaintext (fine on "
                             "127.0.0.1; use --certificates DIR for TLS)", style="yellow")
            superlink = sup.start("superlink", superlink_command("127.0.0.1", link_port, certs),
                                  env={"FLWR_HOME": str(tmp / "superlink")})

            def superlink_failed() -> str | None:
                code = superlink.poll()
                return None if code is None else f"flower-superlink exited at start ({_exit_words(code)}); " \
                                                 f"see {superlink.log_path}"

            # SuperNodes start at once (they retry until the SuperLink listens): their imports overlap its own
            nodes: dict[str, ManagedProcess] = {}
            for k in range(n):
                name = f"client-{k}"
                node_cfg = node_configs[k] if node_configs else {"partition-id": k, "num-partitions": n}
                nodes[name] = sup.start(
                    name, supernode_command(link_addr, node_ports[k], node_cfg, ca),
                    env={"FLWR_HOME": str(tmp / name), "OMP_NUM_THREADS": threads})

            _wait(lambda: port_listening(link_port), startup_timeout, f"flower-superlink on {link_addr}",
                  failed=superlink_failed)

            def registered() -> bool:
                return all(any(SUPERNODE_ID_RE.search(x) for x in list(p.lines)) for p in nodes.values())

            def node_failed() -> str | None:
                dead = [f"{k} ({_exit_words(c)})" for k, p in nodes.items() if (c := p.poll()) is not None]
                if dead:
                    return f"SuperNode {', '.join(dead)} exited at start; see {log_dir}"
                return superlink_failed()

            _wait(registered, startup_timeout, f"{n} SuperNodes to register with the SuperLink",
                  failed=node_failed)
            printer.info(f"SuperLink {link_addr} ({'TLS' if certs else 'plaintext'}), {n} SuperNodes "
                         f"registered; logs in {log_dir}")
            home = tmp / "cli"
            write_flower_home(home, FEDERATION_NAME, link_addr, ca_cert=ca)
            run_config = write_run_config(log_dir / "run-config.toml", cfg)
            LocalFederation(
                superlink_address=link_addr, superlink_pid=superlink.pid, tls=certs is not None,
                ca_cert=str(ca) if ca else None, flower_home=str(home), run_config=str(run_config),
                marker=sup.marker,
                clients={k: {"pid": p.pid, "port": node_ports[i], "partition-id": i,
                             "command": p.argv} for i, (k, p) in enumerate(nodes.items())},
            ).write(log_dir / "federation.json")
            server = sup.start("server", flwr_run_command(root, FEDERATION_NAME, run_config),
                               env={"FLWR_HOME": str(home)})
            reported: set[str] = set()
            while server.poll() is None:
                code = superlink.poll()
                if code is not None:
                    raise LaunchError(f"flower-superlink died during the run ({_exit_words(code)}); "
                                      f"see {superlink.log_path}")
                for name, proc in nodes.items():
                    code = proc.poll()
                    if code is not None and name not in reported:
                        reported.add(name)
                        result.client_exits[name] = code
                        printer.info(f"{name} (SuperNode pid {proc.pid}) exited ({_exit_words(code)}); the "
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
                                  f"{_exit_words(server.poll() or 0)}); see {log_dir}/server.log and "
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
