"""``dpfl simulate --engine ray``: the same apps on Flower's Ray simulation engine, through ``flwr run``.

Flower's local simulation path starts a *detached* ``flower-superlink --simulation`` (the ``:local:``
address) that outlives ``flwr run``. We run it under a throw-away ``FLWR_HOME`` on free ports
(``FLWR_LOCAL_SUPERLINK_HTTP_API_PORT`` / ``FLWR_LOCAL_CONTROL_API_PORT``, so a user's own local
SuperLink on the default 39091 is neither reused nor disturbed), with every process marked by the
supervisor, and stop that SuperLink and everything under it when the run ends, fails or is interrupted.
"""

from __future__ import annotations

import contextlib
import json
import shutil
import tempfile
import time
from pathlib import Path

from rich.console import Console

from dpfl.privacy.rundata import read_summary
from dpfl.simulations.config import RunConfig
from dpfl.simulations.deploy.flower import absolute_paths, repo_root, write_run_config
from dpfl.simulations.deploy.logs import LogPrinter
from dpfl.simulations.deploy.processes import free_ports, port_listening
from dpfl.simulations.deploy.supervisor import LaunchError, Supervisor, interrupts_deferred, sigterm_as_exception

LOCAL_FEDERATION = "local"


class RayEngineError(RuntimeError):
    """The Ray run did not finish; the message says where its logs are."""


def ray_command(root: Path, run_config: Path, num_clients: int, cpus_per_client: float) -> list[str]:
    """``flwr run`` of the checkout on Flower's local simulation federation with ``num_clients`` SuperNodes."""
    cpus = int(cpus_per_client) if float(cpus_per_client).is_integer() else cpus_per_client
    return ["flwr", "run", str(root), LOCAL_FEDERATION, "--federation-config",
            f"num-supernodes={num_clients} client-resources-num-cpus={cpus}",
            "--run-config", str(run_config), "--stream"]


def simulate_on_ray(cfg: RunConfig, run_path: Path, *, console: Console | None = None, verbose: bool = False,
                    cpus_per_client: float = 1.0) -> None:
    """Run ``cfg`` with ``flwr run`` on Ray; the ServerApp writes ``run_path`` as in-process runs do."""
    try:
        root = repo_root()
    except LaunchError as exc:
        raise RayEngineError(str(exc)) from None
    console = console or Console(highlight=False)
    cfg = absolute_paths(cfg, run_path)
    log_dir = run_path / "logs"
    home = Path(tempfile.mkdtemp(prefix="dpfl-ray-"))
    link_port, control_port = free_ports(2)
    (home / "config.toml").write_text(f'[superlink]\ndefault = "{LOCAL_FEDERATION}"\n\n'
                                      f'[superlink.{LOCAL_FEDERATION}]\naddress = ":local:"\n')
    run_config = write_run_config(log_dir / "run-config.toml", cfg)
    printer = LogPrinter(console, verbose=verbose, merged_log=log_dir / "ray.log", server_names=("ray",))
    sup = Supervisor(log_dir, printer)
    env = {"FLWR_HOME": str(home), "FLWR_LOCAL_SUPERLINK_HTTP_API_PORT": str(link_port),
           "FLWR_LOCAL_CONTROL_API_PORT": str(control_port)}
    (log_dir / "ray-engine.json").write_text(json.dumps({
        "flower_home": str(home), "marker": sup.marker, "superlink_port": link_port,
        "control_port": control_port}, indent=2) + "\n")  # what to look for if anything is left
    code: int | None = None
    try:
        with sigterm_as_exception():
            proc = sup.start("ray", ray_command(root, run_config, cfg["num-clients"], cpus_per_client),
                             env=env, cwd=str(root))
            while (code := proc.poll()) is None:
                time.sleep(0.2)
            proc.wait_output(5.0)
    finally:
        with interrupts_deferred():
            leftovers = sup.stop_all()  # the detached local SuperLink and its SuperExec carry our marker
        printer.close()
        with contextlib.suppress(OSError):
            shutil.copy(home / "local-superlink" / "superlink.log", log_dir / "superlink.log")
        shutil.rmtree(home, ignore_errors=True)
    if leftovers or port_listening(link_port):
        raise RayEngineError(f"processes {leftovers} (or port {link_port}) survived the Ray run's cleanup")
    if read_summary(run_path) is None:
        raise RayEngineError(f"the Ray run did not finish (`flwr run` exit code {code}, no summary.json); "
                             f"see {log_dir}/ray.log and {log_dir}/superlink.log")
