"""``dpfl resume RUN_DIR``: continue an interrupted run (Ctrl-C, SIGKILL, a crash) from its last complete round.

The run directory says everything: config.json is the run config, plan.json how it was started (engine,
node configs, TLS), the checkpoint and the ledgers where it stands. The same federation is started again
with ``resume = true``; the ServerApp then continues after the last complete round (server/resume.py) and
each client re-sends an update it already paid for instead of training again (client/resend.py).
"""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import TYPE_CHECKING

from dpfl.simulations.cli.common import EXIT_FAILED, EXIT_INTERRUPTED, console, error, fail

if TYPE_CHECKING:
    from dpfl.simulations.config import RunConfig


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("resume", help="continue an interrupted run from its last complete round",
                       description="Continue the run in RUN_DIR (killed at any moment, SIGKILL included) from its "
                                   "last complete round, with the same config, engine and clients: its model, "
                                   "server momentum, EMA, sampling RNG and ledgers are restored; no round is "
                                   "charged twice. Refuses, with the reason, when the checkpoint and the ledgers "
                                   "disagree.")
    p.add_argument("run_dir", metavar="RUN_DIR")
    p.add_argument("--timeout", type=float, default=0.0, metavar="SECONDS",
                   help="launched federations: stop everything if the run has not finished after this long")
    p.set_defaults(func=cmd_resume)


def cmd_resume(args: argparse.Namespace) -> int:
    from dpfl.privacy.rundata import RUN_DIRECTORY_KEYS, read_config, read_summary
    from dpfl.simulations.config import ConfigError, resolve
    from dpfl.simulations.data.datasets import DataError
    from dpfl.simulations.engines.run_plan import read_plan
    from dpfl.simulations.engines.simulate import check_run_directory

    run_path = Path(args.run_dir).expanduser().resolve()
    try:
        stored = read_config(run_path)
        if stored is None:
            raise ConfigError(f"{run_path} holds no config.json: give the run directory of a dpfl run")
        summary = read_summary(run_path)
        if summary and summary.get("stop_reason") != "interrupted":
            ended = summary.get("stop_reason") or f"all {summary.get('rounds_completed')} rounds finished"
            raise ConfigError(f"{run_path} ended ({ended}); only an interrupted run can be resumed")
        keys = {k: v for k, v in stored.items() if k not in RUN_DIRECTORY_KEYS}
        cfg = resolve({**keys, "resume": True, "run-dir": str(run_path.parent), "run-name": run_path.name})
        plan = read_plan(run_path)
        check_run_directory(run_path, True)
    except (ConfigError, DataError) as exc:
        return fail(str(exc))
    from dpfl.server.rundir import RunDirectory

    checkpoint = RunDirectory(run_path).latest_checkpoint()
    after = f"after round {checkpoint.round}" if checkpoint else "before round 1"
    console.print(f"[bold]dpfl resume[/] · {run_path} · {plan['engine']} · continuing {after} of "
                  f"{cfg['num-server-rounds']}")
    if plan["engine"] == "launch":
        return _resume_launch(cfg, run_path, plan, args.timeout)
    return _resume_simulation(cfg, run_path, plan)


def _resume_simulation(cfg: RunConfig, run_path: Path, plan: dict) -> int:
    from dpfl.simulations.cli.progress import RichReporter
    from dpfl.simulations.cli.summary import SummaryError, print_summary, result_from_summary
    from dpfl.simulations.config import ConfigError
    from dpfl.simulations.data.datasets import DataError
    from dpfl.simulations.engines.ray_engine import RayEngineError
    from dpfl.simulations.engines.simulate import simulate

    try:
        outcome = simulate(cfg, reporter=RichReporter(console), engine=plan["engine"], run_path=run_path,
                           nodes=plan["nodes"])
    except (ConfigError, DataError) as exc:
        return fail(str(exc))
    except KeyboardInterrupt:
        console.print("interrupted: the run directory keeps every finished round and all ledgers; "
                      f"`dpfl resume {run_path}` continues it")
        return EXIT_INTERRUPTED
    except RayEngineError as exc:
        return error(str(exc))
    from dpfl.privacy.rundata import read_summary

    summary = read_summary(run_path)
    try:
        result = outcome.result if outcome.result is not None else result_from_summary(summary, run_path)
    except SummaryError as exc:
        return error(str(exc))
    print_summary(cfg, result, run_path, summary)
    return 0 if not result.stop_reason or result.rounds_completed > 0 else EXIT_FAILED


def _resume_launch(cfg: RunConfig, run_path: Path, plan: dict, timeout: float) -> int:
    from dpfl.simulations.cli.deploy import report_launch
    from dpfl.simulations.deploy.certs import CertificateError, load_certificates
    from dpfl.simulations.deploy.launch import launch_federation

    try:
        certs = load_certificates(plan["certificates"]) if plan.get("certificates") else None
    except CertificateError as exc:
        return fail(str(exc))
    result = launch_federation(cfg, run_path, certs=certs, secure=bool(plan.get("secure", True)), console=console,
                               timeout=timeout, node_configs=plan["nodes"])
    return report_launch(cfg, run_path, result)
