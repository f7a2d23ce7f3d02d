"""Run the peer app the way a Flower user would, and leave nothing behind.

    python bench/peers/flower_opacus_example/run.py --run-config "k=v ..." --out FILE

It runs ``flwr run <this dir> --federation-config "num-supernodes=N client-resources-num-cpus=1"
--run-config <overrides.toml> --stream`` under a temporary FLWR_HOME, with runtime dependency installation
off and one thread per process, on free local ports (so a concurrent run elsewhere on the machine is
neither reused nor disturbed). ``flwr run`` starts a detached local SuperLink (which starts the Ray
simulation); every process it spawns inherits a marker in its environment, and all marked processes are
stopped afterwards: the SuperLink, the simulation and Ray's daemons, which a process group would miss.
The marker, free ports and TOML values come from dpfl's own deployment engine (dpfl.simulations.deploy.processes
and .flower), as the app's model and data come from dpfl: only how the work is run differs from dpfl.

FILE gets {"round_seconds", "final_accuracy", "epsilon_max" (the per-round epsilon the peer reports for
its last round, as Flower's Opacus example prints it: NOT cumulative), "wall_seconds_inner", "rounds"}.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import tomllib
import uuid
from pathlib import Path
from typing import Any

from dpfl.simulations.deploy.flower import toml_value
from dpfl.simulations.deploy.processes import MARKER_ENV, free_ports, pids_with_marker

APP_DIR = Path(__file__).resolve().parent
STOP_GRACE_SECONDS = 10.0


def app_defaults() -> dict[str, Any]:
    with (APP_DIR / "pyproject.toml").open("rb") as fh:
        return dict(tomllib.load(fh)["tool"]["flwr"]["app"]["config"])


def parse_overrides(text: str, defaults: dict[str, Any]) -> dict[str, Any]:
    """``k=v`` pairs (as bench/speed.py writes them, strings unquoted) typed like the app's defaults."""
    out: dict[str, Any] = {}
    for item in text.split():
        key, sep, raw = item.partition("=")
        if not sep or key not in defaults:
            raise SystemExit(f"unknown or malformed run-config entry {item!r}; keys: {', '.join(defaults)}")
        default = defaults[key]
        raw = raw.strip("'\"")
        if isinstance(default, bool):
            out[key] = raw.lower() in ("1", "true", "yes")
        elif isinstance(default, int):
            out[key] = int(float(raw))
        elif isinstance(default, float):
            out[key] = float(raw)
        else:
            out[key] = raw
    return out


def toml_dumps(values: dict[str, Any]) -> str:
    return "".join(f"{k} = {toml_value(v)}\n" for k, v in values.items())


def stop_marked(value: str) -> list[int]:
    """SIGTERM every marked process, SIGKILL what is left after a grace period; returns what was found."""
    found = pids_with_marker(value)
    for pid in found:
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGTERM)
    deadline = time.monotonic() + STOP_GRACE_SECONDS
    while (left := pids_with_marker(value)) and time.monotonic() < deadline:
        time.sleep(0.2)
    for pid in left:
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)
    time.sleep(0.2)
    if still := pids_with_marker(value):
        print(f"warning: processes still alive after SIGKILL: {still}", file=sys.stderr)
    return found


def summarise(timing: dict[str, Any]) -> dict[str, Any]:
    rounds = timing["rounds"]
    if not rounds:
        raise SystemExit("the peer's server app recorded no round")
    return {"round_seconds": [r["seconds"] for r in rounds], "final_accuracy": rounds[-1]["accuracy"],
            "epsilon_max": rounds[-1]["epsilon_max"], "wall_seconds_inner": timing["wall_seconds_inner"],
            "rounds": rounds}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--run-config", default="", help='"key=value ..." overrides of the app config')
    parser.add_argument("--out", required=True, help="JSON file to write")
    parser.add_argument("--timeout", type=float, default=3600.0, help="seconds before the run is abandoned")
    parser.add_argument("--keep-home", action="store_true", help="keep the temporary FLWR_HOME (debugging)")
    args = parser.parse_args()

    defaults = app_defaults()
    cfg = {**defaults, **parse_overrides(args.run_config, defaults)}
    home = Path(tempfile.mkdtemp(prefix="peer-flwr-home-"))
    timing_file = home / "timing.json"
    overrides = home / "run-config.toml"
    overrides.write_text(toml_dumps({**parse_overrides(args.run_config, defaults),
                                     "timing-file": str(timing_file)}))
    http_port, control_port = free_ports(2)
    marker = uuid.uuid4().hex
    env = {**os.environ, "FLWR_HOME": str(home), "FLWR_DISABLE_RUNTIME_DEPENDENCY_INSTALLATION": "1",
           "FLWR_LOCAL_SUPERLINK_HTTP_API_PORT": str(http_port),
           "FLWR_LOCAL_CONTROL_API_PORT": str(control_port), "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1",
           MARKER_ENV: marker}
    cmd = ["flwr", "run", str(APP_DIR), "--federation-config",
           f"num-supernodes={int(cfg['num-clients'])} client-resources-num-cpus=1",
           "--run-config", str(overrides), "--stream"]
    log_path = home / "flwr-run.log"
    t0 = time.perf_counter()
    try:
        with log_path.open("w") as log:
            proc = subprocess.run(cmd, env=env, stdout=log, stderr=subprocess.STDOUT, timeout=args.timeout,
                                  check=False)
        wall = time.perf_counter() - t0
        if proc.returncode != 0 or not timing_file.exists():
            tail = log_path.read_text()[-4000:]
            superlink_log = home / "local-superlink" / "superlink.log"
            if superlink_log.exists():
                tail += "\n--- superlink.log ---\n" + superlink_log.read_text()[-4000:]
            print(tail, file=sys.stderr)
            raise SystemExit(f"peer run failed (flwr run exit {proc.returncode}; timing file "
                             f"{'present' if timing_file.exists() else 'missing'})")
        out = {**summarise(json.loads(timing_file.read_text())), "wall_seconds_flwr_run": wall}
    finally:
        stopped = stop_marked(marker)
        if args.keep_home:
            print(f"FLWR_HOME kept at {home}", file=sys.stderr)
        else:
            shutil.rmtree(home, ignore_errors=True)
    out["stopped_processes"] = len(stopped)
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(out, indent=2))
    print(json.dumps({k: v for k, v in out.items() if k != "rounds"}))


if __name__ == "__main__":
    main()
