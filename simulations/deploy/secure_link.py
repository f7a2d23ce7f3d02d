"""A SuperLink that admits only enrolled SuperNodes and keeps its operator APIs on this machine.

The one way ``dpfl server`` and ``dpfl launch`` start a SuperLink:

1. ``flower-superlink`` on 127.0.0.1 only (its Fleet, Control and Runtime APIs share that port), with TLS
   and ``--enable-supernode-auth`` when there is an enrolment list;
2. its own SuperExec, which alone may claim the ServerApp task (``superexec.py``);
3. each enrolled public key registered with ``flwr supernode register`` through the local Control API, so a
   SuperNode that does not sign with one of them is refused (HTTP 401) before it gets a message;
4. the Fleet-only gateway (``gateway.py``) on the public address: SuperNodes reach the Fleet API there,
   nobody reaches Control (``flwr run``/``ls``/``supernode register``) except from this machine.

Flower's own security warnings (plaintext, authentication disabled) are never filtered from the log.
"""

from __future__ import annotations

import re
import subprocess
import time
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

from dpfl.simulations.deploy.certs import CertPaths
from dpfl.simulations.deploy.flower import superlink_command, write_flower_home
from dpfl.simulations.deploy.gateway import gateway_command
from dpfl.simulations.deploy.node_keys import EnrolledNode
from dpfl.simulations.deploy.processes import free_ports, port_listening
from dpfl.simulations.deploy.superexec import isolation_args, superexec_command, write_secret
from dpfl.simulations.deploy.supervisor import LaunchError, ManagedProcess, Supervisor, exit_words

OPERATOR_FEDERATION = "dpfl"
NODE_ID_RE = re.compile(r'"node-id"\s*:\s*(\d+)')
REGISTER_TIMEOUT = 60.0


@dataclass
class SecureLink:
    """What ``start_secure_link`` started: where SuperNodes connect, where the operator's CLI connects."""

    superlink: ManagedProcess
    superexec: ManagedProcess
    gateway: ManagedProcess
    public_address: str
    control_address: str
    operator_home: Path  # FLWR_HOME whose federation "dpfl" is the local Control API
    node_ids: dict[str, int] = field(default_factory=dict)  # enrolled name -> Flower node id

    def failure(self) -> str | None:
        """Why the SuperLink or the gateway is gone, or None while both run."""
        for proc, what in ((self.superlink, "flower-superlink"), (self.superexec, "the SuperLink's SuperExec"),
                           (self.gateway, "the Fleet gateway (nginx)")):
            code = proc.poll()
            if code is not None:
                return f"{what} exited ({exit_words(code)}); see {proc.log_path}"
        return None


def wait_until(predicate: Callable[[], bool], timeout: float, what: str,
               failed: Callable[[], str | None]) -> None:
    """Poll ``predicate``; a failure (``failed`` says what) or the timeout raises LaunchError."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return
        problem = failed()
        if problem:
            raise LaunchError(problem)
        time.sleep(0.1)
    raise LaunchError(f"timed out after {timeout:.0f} s waiting for {what}")


def register_nodes(operator_home: Path, nodes: Sequence[EnrolledNode], env: dict[str, str]) -> dict[str, int]:
    """Enrol every public key through the local Control API; name -> node id, or LaunchError naming the key."""

    def one(node: EnrolledNode) -> tuple[str, int]:
        cmd = ["flwr", "supernode", "register", str(node.public_key), OPERATOR_FEDERATION, "--format", "json"]
        try:
            done = subprocess.run(cmd, env={**env, "FLWR_HOME": str(operator_home)}, capture_output=True,
                                  text=True, timeout=REGISTER_TIMEOUT, check=False)
        except subprocess.TimeoutExpired:
            raise LaunchError(f"enrolling {node.name} ({node.public_key}) timed out") from None
        found = NODE_ID_RE.search(done.stdout)
        if done.returncode != 0 or not found:
            detail = " ".join((done.stdout + done.stderr).split())[-300:]
            raise LaunchError(f"enrolling {node.name} ({node.public_key}) failed: {detail}")
        return node.name, int(found.group(1))

    with ThreadPoolExecutor(max_workers=min(8, max(1, len(nodes)))) as pool:
        return dict(pool.map(one, nodes))


def start_secure_link(sup: Supervisor, *, public_host: str, public_port: int, certs: CertPaths | None,
                      enrolled: Sequence[EnrolledNode] | None, work_dir: Path, startup_timeout: float,
                      database: Path | None = None, control_port: int | None = None,
                      operator_home: Path | None = None) -> SecureLink:
    """Start the SuperLink on 127.0.0.1, enrol ``enrolled`` (None: accept any SuperNode), then the gateway.

    Enrolment needs TLS (Flower refuses ``--enable-supernode-auth`` without it). ``operator_home`` (default
    ``<work_dir>/operator``) gets a ``$FLWR_HOME/config.toml`` whose federation "dpfl" is the local Control API."""
    if enrolled is not None and certs is None:
        raise LaunchError("enrolling SuperNodes needs TLS: pass --certificates DIR (Flower's SuperNode "
                          "authentication refuses plaintext)")
    control_port = control_port or free_ports(1)[0]
    control = f"127.0.0.1:{control_port}"
    secret = write_secret(work_dir / "superexec.secret")
    command = [*superlink_command("127.0.0.1", control_port, certs, database=database), *isolation_args(secret)]
    if enrolled is not None:
        command.append("--enable-supernode-auth")
    superlink = sup.start("superlink", command, env={"FLWR_HOME": str(work_dir / "superlink")})

    def superlink_failed() -> str | None:
        code = superlink.poll()
        if code is None:
            return None
        return f"flower-superlink exited at start ({exit_words(code)}); see {superlink.log_path}"

    wait_until(lambda: port_listening(control_port), startup_timeout, f"flower-superlink on {control}",
               superlink_failed)
    superexec = sup.start("superexec", superexec_command(control, secret, ca_cert=certs.ca_cert if certs else None,
                                                         parent_pid=superlink.pid))
    operator_home = operator_home or work_dir / "operator"
    write_flower_home(operator_home, OPERATOR_FEDERATION, control, ca_cert=certs.ca_cert if certs else None)
    node_ids = register_nodes(operator_home, enrolled, sup.env()) if enrolled else {}
    gateway = sup.start("gateway", gateway_command(public_host, public_port, control_port, certs,
                                                   work_dir / "gateway"))
    link = SecureLink(superlink, superexec, gateway, f"{public_host}:{public_port}", control, operator_home, node_ids)
    wait_until(lambda: port_listening(public_port), startup_timeout,
               f"the Fleet gateway on {public_host}:{public_port}", link.failure)
    return link


def enrolment_summary(link: SecureLink) -> str:
    """One line: who is enrolled (name and Flower node id), for the operator's log."""
    if not link.node_ids:
        return "no enrolment list: any SuperNode holding the CA certificate is accepted"
    return "enrolled: " + ", ".join(f"{k} (node {v})" for k, v in sorted(link.node_ids.items()))

