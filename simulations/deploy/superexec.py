"""Each Flower server or node with its own SuperExec, authenticated by a secret only the two of them share.

A SuperExec asks its SuperLink's or SuperNode's Runtime API for tasks and starts the ServerApp or ClientApp
process for them. In Flower's default ``--isolation subprocess`` the SuperLink/SuperNode starts that
SuperExec itself and Flower ignores ``--superexec-auth-secret-file`` (it says so in its log), so any local
process that reaches the Runtime API could claim a task: the run's config, the model, the app bundle. dpfl
therefore runs both sides with ``--isolation process`` and starts the SuperExec itself, both holding a fresh
random secret (mode 600): a SuperExec without it is answered 401 and exits (checked by hand with Flower
1.42.0; tests/test_enrolment.py keeps checking that the node's side still works end to end).

On a data owner's node the SuperExec also carries the app guard's environment (``approval.py``), so every
ClientApp it starts is checked against the owner's approved bundles first.
"""

from __future__ import annotations

import os
import secrets
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from dpfl.simulations.deploy.approval import guard_environment
from dpfl.simulations.deploy.flower import supernode_command
from dpfl.simulations.deploy.supervisor import ManagedProcess, Supervisor

SECRET_BYTES = 32


def write_secret(path: Path) -> Path:
    """A fresh random shared secret in ``path`` (mode 600), returned as an absolute path."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "wb") as fh:
        fh.write(secrets.token_bytes(SECRET_BYTES))
    return path.resolve()


def isolation_args(secret: Path) -> list[str]:
    """The flags that make a SuperLink or SuperNode wait for an authenticated SuperExec of its own."""
    return ["--isolation", "process", "--superexec-auth-secret-file", str(secret)]


def superexec_command(runtime_address: str, secret: Path, *, ca_cert: Path | None, parent_pid: int) -> list[str]:
    """``flower-superexec`` for one Runtime API; it exits when ``parent_pid`` does."""
    tls = ["--root-certificates", str(ca_cert)] if ca_cert else ["--insecure"]
    return ["flower-superexec", "--runtime-api-address", runtime_address, *tls,
            "--superexec-auth-secret-file", str(secret), "--parent-pid", str(parent_pid)]


def start_node(sup: Supervisor, name: str, superlink: str, port: int, node_config: Mapping[str, Any],
               ca_cert: Path | None, *, home: Path, approved: Sequence[str], node_key: Path | None = None,
               env: Mapping[str, str] | None = None) -> ManagedProcess:
    """One data owner's node: ``flower-supernode`` (Runtime API on 127.0.0.1:``port``) and its SuperExec.

    The SuperExec runs only bundles in ``approved``; it is supervised as ``<name>-superexec`` and exits with
    the SuperNode. Returns the SuperNode's process (the one whose exit means the node is gone)."""
    secret = write_secret(home / "superexec.secret")
    base = {"FLWR_HOME": str(home), **(env or {})}
    node = sup.start(name, [*supernode_command(superlink, port, node_config, ca_cert, node_key=node_key),
                            *isolation_args(secret)], env=base)
    sup.start(f"{name}-superexec", superexec_command(f"127.0.0.1:{port}", secret, ca_cert=None, parent_pid=node.pid),
              env={**base, **guard_environment(home, approved)})
    return node
