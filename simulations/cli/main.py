"""The ``dpfl`` command line: builds the parser, runs simulate, privacy and report, registers deploy and sweep.

Every subcommand validates its input first: a bad value prints one line naming the key, the value
and what is allowed, and exits with code 2, before any work starts. What the commands share (exit
codes, console, the error line, logging) is in ``cli/common.py``, so ``cli/deploy.py`` and
``cli/sweep.py`` never import this module.
"""

from __future__ import annotations

import argparse
import math
import re
import sys

from rich.console import Console

from dpfl.simulations.cli import deploy as deploy_cli
from dpfl.simulations.cli import enrol as enrol_cli
from dpfl.simulations.cli import resume as resume_cli
from dpfl.simulations.cli import runs as runs_cli
from dpfl.simulations.cli import sweep as sweep_cli
from dpfl.simulations.cli.common import EXIT_FAILED, EXIT_INTERRUPTED, console, error, fail, setup_logging
from dpfl.simulations.config import OPTION_BY_KEY, ConfigError, add_config_flags, config_from_args, explicit_keys


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


# --- privacy calculator ---------------------------------------------------------------------------
def cmd_privacy(args: argparse.Namespace) -> int:
    import json

    from dpfl.privacy import ACCOUNTANTS, DpSgdRelease, calibrate_noise, epsilon, validate_release_params

    try:
        if not (0 < args.delta < 1):
            raise ValueError(f"--delta {args.delta} is not valid: expected a number in (0, 1)")
        if args.what == "epsilon":
            validate_release_params(args.noise_multiplier, args.sample_rate, args.steps)
        else:
            validate_release_params(1.0, args.sample_rate, args.steps)
            if not (args.target_epsilon > 0 and math.isfinite(args.target_epsilon)):
                raise ValueError(f"--target-epsilon {args.target_epsilon} is not valid: expected a number > 0")
    except ValueError as exc:
        return fail(str(exc))
    names = list(ACCOUNTANTS) if args.accountant == "all" else [args.accountant]
    if args.neighbouring == "replace-one" and args.accountant == "all":
        names = ["pld"]  # dp-accounting's RDP (and the PRV accountant) support add/remove only
    values: dict[str, float] = {}
    try:
        for name in names:
            if args.what == "epsilon":
                release = DpSgdRelease(args.noise_multiplier, args.sample_rate, args.steps)
                values[name] = epsilon([release], args.delta, name, neighbouring=args.neighbouring)
            else:
                values[name] = calibrate_noise(args.target_epsilon, args.delta, args.sample_rate, args.steps, 1,
                                               accountant=name, neighbouring=args.neighbouring)
    except ValueError as exc:
        return fail(str(exc))
    key = "epsilon" if args.what == "epsilon" else "noise_multiplier"
    if args.json:
        out = {key: values if args.accountant == "all" else values[names[0]], "delta": args.delta,
               "neighbouring": args.neighbouring,
               "accountant": {n: values[n] for n in names} if args.accountant == "all" else names[0]}
        print(json.dumps(out))
        return 0
    what = "ε" if key == "epsilon" else "σ"
    for name in names:
        console.print(f"{name:>4}  {what} = {values[name]:.6g}")
    return 0


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


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="dpfl", description="Federated learning with differential privacy")
    parser.add_argument("-v", "--verbose", action="store_true", help="log every step")
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

    p_priv = sub.add_parser("privacy", help="privacy calculator (no training)")
    priv_sub = p_priv.add_subparsers(dest="what", required=True)
    for what in ("epsilon", "noise"):
        p = priv_sub.add_parser(what, help="epsilon of DP-SGD" if what == "epsilon" else "sigma for a target epsilon")
        p.add_argument("--sample-rate", type=float, required=True)
        p.add_argument("--steps", type=int, required=True)
        p.add_argument("--delta", type=float, required=True)
        if what == "epsilon":
            p.add_argument("--noise-multiplier", type=float, required=True)
        else:
            p.add_argument("--target-epsilon", type=float, required=True)
        p.add_argument("--accountant", choices=(*OPTION_BY_KEY["accountant"].choices, "all"),
                       default="all" if what == "epsilon" else OPTION_BY_KEY["accountant"].default)
        p.add_argument("--neighbouring", choices=OPTION_BY_KEY["neighbouring"].choices,
                       default=OPTION_BY_KEY["neighbouring"].default,
                       help="neighbouring relation (replace-one: PLD only)")
        p.add_argument("--json", action="store_true")
        p.set_defaults(func=cmd_privacy)

    p_rep = sub.add_parser("report", help="write report.json/md/html for a run directory")
    p_rep.add_argument("run_dir")
    p_rep.set_defaults(func=cmd_report)

    deploy_cli.register(sub)  # launch, server, client, certs
    enrol_cli.register(sub)  # keys, app-hash
    resume_cli.register(sub)  # resume
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
    if getattr(args, "engine", None) == "inprocess" and args.func is cmd_simulate:
        from dpfl.simulations.engines import worker_server

        worker_server.start()  # imports the workers' modules on the other core while this process imports
    setup_logging(args.verbose)
    return int(args.func(args) or 0)


if __name__ == "__main__":
    sys.exit(main())
