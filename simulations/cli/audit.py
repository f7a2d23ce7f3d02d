"""``dpfl audit [run flags] --canaries M [--canary-kind gradient|input] [--confidence 0.95] [--runs R]``.

Runs a federation whose clients also hold M canaries, each included by a secret fair coin, with the same mechanism
and ledgers as any run (the audit run is charged like any other), then scores the canaries and prints the measured
lower bound on epsilon beside the accountant's epsilon. Gradient canaries (white-box: the server sees every
client update) are C times a unit vector on one model coordinate; input canaries (black-box: the final model
only) are test records with a wrong label. The run's report gets an audit section; report/audit.json holds the
scores. Exit 0 when the bound stays at or below the accountant's epsilon, 3 when it exceeds it (a violation:
the mechanism leaks more than its ledger says).
"""

from __future__ import annotations

import argparse
import shlex
import sys

from dpfl.simulations.cli.common import EXIT_INTERRUPTED, console, error, fail
from dpfl.simulations.config import ConfigError, add_config_flags, config_from_args

EXIT_VIOLATION = 3


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("audit", help="measure a lower bound on epsilon from a run with canaries",
                       description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--canaries", type=int, default=1000, metavar="M",
                   help="number of canaries, dealt to the clients in turn (default 1000)")
    p.add_argument("--canary-kind", choices=("gradient", "input"), default="gradient",
                   help="gradient: white-box Dirac gradient canaries (default); input: black-box mislabelled records")
    p.add_argument("--confidence", type=float, default=0.95, help="confidence of the lower bound (default 0.95)")
    p.add_argument("--guesses", type=int, default=0, metavar="K",
                   help="guess 'in' for the K highest scores (0, the default: planned from the claimed mechanism "
                        "before scoring; input canaries: M/10)")
    p.add_argument("--runs", type=int, default=1, metavar="R",
                   help="audited runs with fresh coins; R > 1 adds the many-run bounds on the pooled scores")
    add_config_flags(p)
    p.set_defaults(func=cmd_audit)


def cmd_audit(args: argparse.Namespace) -> int:
    from dpfl.simulations.audit.plan import AuditPlanError
    from dpfl.simulations.audit.run import run_audits
    from dpfl.simulations.audit.score import AuditScoreError
    from dpfl.simulations.cli.progress import RichReporter
    from dpfl.simulations.data.datasets import DataError

    try:
        cfg = config_from_args(args)
    except ConfigError as exc:
        return fail(str(exc))
    command = "dpfl " + " ".join(shlex.quote(a) for a in sys.argv[1:])

    def on_run(k: int, path: object) -> None:
        console.print(f"[bold]dpfl audit[/] · run {k + 1}/{args.runs} · {args.canaries} {args.canary_kind} canaries · "
                      f"{cfg['dataset']} · {cfg['num-clients']} clients · {cfg['num-server-rounds']} rounds → {path}")

    try:
        outcomes = run_audits(cfg, kind=args.canary_kind, canaries=args.canaries, confidence=args.confidence,
                              guesses=args.guesses, runs=args.runs, command=command,
                              reporter=RichReporter(console), on_run=on_run)
    except (ConfigError, DataError, AuditPlanError) as exc:
        return fail(str(exc))
    except AuditScoreError as exc:
        return error(str(exc))
    except KeyboardInterrupt:
        return error("interrupted: the audit was not scored", EXIT_INTERRUPTED)
    violated = False
    for o in outcomes:
        r, one = o.record, o.record["one_run"]
        violated |= r["verdict"] != "consistent"
        console.print(f"ε ≤ {r['claimed_epsilon']:.3f} by the accountant ({r['accountant']}); ε ≥ "
                      f"{one['epsilon_lower_bound']:.3f} measured on this run ({one['correct']}/{one['guesses']} "
                      f"guesses right, {one['canaries']} canaries, confidence {one['confidence']:g}, δ = "
                      f"{one['delta']:.3g}) · {r['verdict']} · {o.run_path / 'report' / 'audit.json'}")
    many = outcomes[-1].record.get("many_runs")
    if many:
        cp = many["clopper_pearson_epsilon"]
        shown = "∞" if cp is None else f"{cp:.3f}"
        console.print(f"{many['runs']} runs pooled: Clopper-Pearson ε ≥ {shown}, Gaussian-DP estimate ε ≈ "
                      f"{many['gdp_epsilon_estimate']:.3f} (μ = {many['gdp_mu_estimate']:.3f})")
    if violated:
        return error("the measured lower bound exceeds the accountant's ε: the mechanism leaks more than its ledger "
                     "says; see the audit section of the report", EXIT_VIOLATION)
    return 0
