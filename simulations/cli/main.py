"""The ``dpfl`` command line: builds the parser, runs simulate, privacy and report, registers deploy and sweep.

Every subcommand validates its input first: a bad value prints one line naming the key, the value
and what is allowed, and exits with code 2, before any work starts. What the commands share (exit
codes, console, the error line, logging) is in ``cli/common.py``, so ``cli/deploy.py`` and
``cli/sweep.py`` never import this module.
"""

from __future__ import annotations

import argparse
import re
import sys

from rich.console import Console

from dpfl.simulations.cli import audit as audit_cli
from dpfl.simulations.cli import calculator as calculator_cli
from dpfl.simulations.cli import deploy as deploy_cli
from dpfl.simulations.cli import enrol as enrol_cli
from dpfl.simulations.cli import predict as predict_cli
from dpfl.simulations.cli import resume as resume_cli
from dpfl.simulations.cli import runs as runs_cli
from dpfl.simulations.cli import sweep as sweep_cli
from dpfl.simulations.cli.common import EXIT_FAILED, EXIT_INTERRUPTED, console, error, fail, setup_logging
from dpfl.simulations.config import ConfigError, add_config_flags, config_from_args, explicit_keys


# --- simulate -----------------------------------------------------------------------------------
def cmd_simulate(args: argparse.Namespace) -> int:
    from dpfl.simulations.data.datasets import DataError

    try:
        cfg = config_from_args(args)
    except ConfigError as exc:
        return fail(str(exc))
    from dpfl.simulations.cli.progress import RichReporter
    from dpfl.simulations.engines.ray_engine import RayEngineError
    from dpfl.simulations.engines.simulate import plan_nodes, preflight, simulate

    try:
        cfg, nodes = plan_nodes(cfg, args.privacy_policy, args.client_data,
                                clients_given="num-clients" in explicit_keys(args))
        sigmas = preflight(cfg, nodes)
    except (ConfigError, DataError) as exc:
        return fail(str(exc))
    console.print(f"[bold]dpfl simulate[/] · {cfg['dataset']} · {cfg['num-clients']} clients · model {cfg['model']} · "
                  f"{cfg['num-server-rounds']} rounds · engine {args.engine}")
    if sigmas:
        distinct = sorted(set(sigmas.values()))
        console.print(f"target ε = {cfg['target-epsilon']} per client after {cfg.max_participations} rounds → "
                      f"noise multiplier σ = {', '.join(f'{s:.4f}' for s in distinct)} "
                      f"({'all clients' if len(distinct) == 1 else 'per client size'}; {cfg['accountant']})")
    try:
        outcome = simulate(cfg, reporter=RichReporter(console), engine=args.engine,
                           privacy_policy=args.privacy_policy, checked=sigmas, nodes=nodes)
    except (ConfigError, DataError) as exc:
        return fail(str(exc))
    except KeyboardInterrupt:
        Console(stderr=True).print("interrupted: the run directory keeps every finished round and all ledgers")
        return EXIT_INTERRUPTED
    except RayEngineError as exc:  # the Ray run failed in its own processes; the message names the logs
        return error(str(exc))
    from dpfl.privacy.rundata import read_summary
    from dpfl.simulations.cli.summary import SummaryError, print_summary, result_from_summary

    summary = read_summary(outcome.run_path)
    try:  # engines in other processes (Ray) have no result here: the ServerApp wrote summary.json
        result = outcome.result if outcome.result is not None else result_from_summary(summary, outcome.run_path)
    except SummaryError as exc:
        return error(str(exc))
    print_summary(cfg, result, outcome.run_path, summary)
    return 0 if not result.stop_reason or result.rounds_completed > 0 else EXIT_FAILED


# --- report ------------------------------------------------------------------------------------------
def cmd_report(args: argparse.Namespace) -> int:
    import json
    from pathlib import Path

    from dpfl.privacy.report import write_report
    from dpfl.privacy.rundata import CONFIG_FILE, SUMMARY_FILE, has_metrics

    run = Path(args.run_dir)
    if not (has_metrics(run) or (run / SUMMARY_FILE).exists() or (run / CONFIG_FILE).exists()):
        return fail(f"{run} is not a dpfl run directory (no metrics.jsonl, summary.json or config.json); "
                    "pass runs/<run-id>")
    paths = write_report(run)
    for p in paths:
        console.print(str(p))
    report_json = next((p for p in paths if Path(p).name == "report.json"), run / "report" / "report.json")
    try:  # the report's own cross-checks: a failed one is a failed command, not a footnote
        verdict = json.loads(Path(report_json).read_text(encoding="utf-8")).get("verdict") or {}
    except (OSError, ValueError):
        return error(f"{report_json} could not be read back")
    if verdict.get("ok") is False:
        return error("the report's cross-checks failed: " + "; ".join(map(str, verdict.get("failures") or [])))
    return 0


def _version_line() -> str:
    """``dpfl 0.1.0 (torch 2.13.0, opacus 1.6.0, flwr 1.42.0, dp-accounting 0.6.0)``: read from the installed
    distributions' metadata, so printing it imports none of them."""
    from importlib.metadata import PackageNotFoundError, version

    import dpfl

    def of(name: str) -> str:
        try:
            return version(name)
        except PackageNotFoundError:
            return "not installed"

    libraries = ", ".join(f"{name} {of(name)}" for name in ("torch", "opacus", "flwr", "dp-accounting"))
    return f"dpfl {dpfl.__version__} ({libraries})"


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="dpfl", description="Federated learning with differential privacy")
    parser.add_argument("-v", "--verbose", action="store_true", help="log every step")
    parser.add_argument("--version", action="version", version=_version_line(),
                        help="print the versions of dpfl and of the libraries behind its guarantee, and exit")
    sub = parser.add_subparsers(dest="command", required=True)

    p_sim = sub.add_parser("simulate", help="run a federation on this machine (in-process engine by default)")
    p_sim.add_argument("--engine", choices=("inprocess", "ray"), default="inprocess")
    p_sim.add_argument("--privacy-policy", default=None, metavar="FILE|DIR",
                       help="a data owner's privacy policy (TOML) applied to every client, or a folder of "
                            "<client-id>.toml; clients decline what it forbids (see docs/privacy-policy.md)")
    p_sim.add_argument("--client-data", default=None, metavar="DIR_OR_GLOB",
                       help="one data owner per file or folder (its name, without suffix, is the client id), "
                            "each client reading only its own records with the run's dataset kind and schema; "
                            "sets num-clients")
    add_config_flags(p_sim)
    p_sim.set_defaults(func=cmd_simulate)

    calculator_cli.register(sub)  # privacy epsilon, privacy noise

    p_rep = sub.add_parser("report", help="write report.json/md/html for a run directory")
    p_rep.add_argument("run_dir")
    p_rep.set_defaults(func=cmd_report)

    deploy_cli.register(sub)  # launch, server, client, certs
    enrol_cli.register(sub)  # keys, app-hash
    resume_cli.register(sub)  # resume
    predict_cli.register(sub)  # predict
    audit_cli.register(sub)  # audit
    runs_cli.register(sub)  # runs list, runs compare
    sweep_cli.register(sub)  # sweep
    return parser


NEGATIVE_NUMBER = re.compile(r"^-(\d+\.?\d*|\.\d+)([eE][-+]?\d+)?$|^-(inf|nan)$", re.IGNORECASE)


def attach_negative_values(argv: list[str]) -> list[str]:
    """``--flag -1e-5`` -> ``--flag=-1e-5``: argparse reads a negative number in scientific notation as an
    unknown option ("expected one argument"), so the value would never reach the check that names it."""
    out: list[str] = []
    for token in argv:
        if out and NEGATIVE_NUMBER.match(token) and out[-1].startswith("--") and "=" not in out[-1]:
            out[-1] = f"{out[-1]}={token}"
        else:
            out.append(token)
    return out


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(attach_negative_values(sys.argv[1:] if argv is None else list(argv)))
    from dpfl.simulations.user_code import expose_user_code

    expose_user_code()  # `--model mymodels:Net` imports from here, in this process and in every worker
    if (getattr(args, "engine", None) == "inprocess" and args.func is cmd_simulate) or args.command == "audit":
        from dpfl.simulations.engines import worker_server

        worker_server.start()  # imports the workers' modules on the other core while this process imports
    setup_logging(args.verbose)
    return int(args.func(args) or 0)


if __name__ == "__main__":
    sys.exit(main())
