"""Flower commands and files: the source checkout, TOML values, run-config and FLWR_HOME files, the
``flower-superlink`` / ``flower-supernode`` / ``flwr run`` command lines.

Kept apart from process supervision so that ``dpfl server`` / ``dpfl client`` (which print these commands
for people to run elsewhere) and the engines build exactly the same command lines.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import dpfl
from dpfl.simulations.config import ConfigError, RunConfig
from dpfl.simulations.deploy.certs import CertPaths
from dpfl.simulations.deploy.supervisor import LaunchError


def repo_root() -> Path:
    """The source checkout holding pyproject.toml: the folder of the ``dpfl`` package itself (an editable
    install maps ``dpfl`` onto the checkout root). ``flwr run`` builds the Flower app (FAB) from it."""
    root = Path(dpfl.__file__).resolve().parent
    pyproject = root / "pyproject.toml"
    if not pyproject.is_file() or "[tool.flwr.app" not in pyproject.read_text():
        raise LaunchError(f"{root} is not a dpfl source checkout (no pyproject.toml with [tool.flwr.app]); "
                          "Flower's engines (`flwr run`, launch, ray) build the app from the source tree: "
                          "run them from a git checkout installed with `pip install -e .`")
    return root


def toml_value(value: Any) -> str:
    """One TOML value (Flower parses --node-config / --run-config values as TOML)."""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int | float):
        return repr(value)
    return json.dumps(str(value))  # a JSON string is a valid TOML basic string


def node_config_string(entries: Mapping[str, Any]) -> str:
    """``--node-config`` text for ``entries``; refuses a value with spaces, which Flower would split."""
    for key, value in entries.items():
        if isinstance(value, str) and any(ch.isspace() for ch in value):
            raise ConfigError(f"node config {key}={value!r} is not valid: Flower splits --node-config on "
                              "spaces, so the value must not contain any")
    return " ".join(f"{k}={toml_value(v)}" for k, v in entries.items())


def write_run_config(path: Path, cfg: RunConfig) -> Path:
    """Every resolved key, as the TOML file ``flwr run --run-config FILE`` accepts (no quoting pitfalls)."""
    import tomli_w

    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(tomli_w.dumps(cfg.as_dict()))
    return path


def write_flower_home(home: Path, name: str, address: str, *, ca_cert: Path | None,
                      extra: Mapping[str, Any] | None = None) -> Path:
    """A ``$FLWR_HOME/config.toml`` whose only SuperLink connection is ``name`` (TLS when a CA is given)."""
    import tomli_w

    entry: dict[str, Any] = {"address": address}
    if ca_cert is not None:
        entry["root-certificates"] = str(ca_cert.resolve())
    else:
        entry["insecure"] = True
    entry.update(extra or {})
    home.mkdir(parents=True, exist_ok=True)
    path = home / "config.toml"
    path.write_text(tomli_w.dumps({"superlink": {"default": name, name: entry}}))
    return path


def superlink_command(host: str, port: int, certs: CertPaths | None, *,
                      database: Path | None = None) -> list[str]:
    """``flower-superlink`` on ``host:port``, TLS with ``certs`` else plaintext, no runtime installs."""
    # Flower 1.42 serves the Fleet, Control and Runtime (ServerAppIo) APIs over one HTTP server at
    # --host/--port; --fleet-api-address/--control-api-address are deprecated no-ops without FLWR_INTERNAL_*.
    cmd = ["flower-superlink", "--host", host, "--port", str(port),
           "--disable-runtime-dependency-installation"]
    cmd += certs.superlink_args() if certs else ["--insecure"]
    if database is not None:
        cmd += ["--database", str(database)]
    return cmd


def supernode_command(superlink: str, port: int, node_config: Mapping[str, Any], ca_cert: Path | None,
                      *, host: str = "127.0.0.1", node_key: Path | None = None) -> list[str]:
    """``flower-supernode`` for one client: its SuperLink, its own ClientApp runtime port, its node config,
    and the private key it signs with when the SuperLink admits only enrolled nodes."""
    cmd = ["flower-supernode", "--superlink", superlink, "--host", host, "--port", str(port),
           "--node-config", node_config_string(node_config)]
    cmd += ["--root-certificates", str(ca_cert)] if ca_cert else ["--insecure"]
    if node_key is not None:
        cmd += ["--auth-supernode-private-key", str(node_key)]
    return cmd


def flwr_run_command(app: Path, federation: str, run_config: Path, *, stream: bool = True) -> list[str]:
    """``flwr run`` of the app in ``app`` on a federation of ``$FLWR_HOME/config.toml``, every key from a file."""
    cmd = ["flwr", "run", str(app), federation, "--run-config", str(run_config)]
    return cmd + (["--stream"] if stream else [])


def absolute_paths(cfg: RunConfig, run_path: Path) -> RunConfig:
    """Fix the run directory and make path keys absolute: the ServerApp and ClientApps run with other
    working directories (and, on other machines, other file systems)."""
    changes: dict[str, Any] = {"run-dir": str(run_path.parent), "run-name": run_path.name}
    for key in ("data-path", "test-data-path", "data-schema", "state-dir"):
        if str(cfg[key]):
            changes[key] = str(Path(str(cfg[key])).expanduser().resolve())
    return cfg.replace(**changes)
