"""``dpfl privacy epsilon|noise``: the privacy calculator, with no training.

A schedule is given one of two ways: the mechanism's own terms (``--sample-rate q --steps T``, T the total
DP-SGD steps) or a training recipe (``--batch-size B --records N --epochs E --rounds R``), turned into
(q, steps per round) by ``privacy.calibration.steps_per_round``, the one definition the clients and the
server use, so the calculator cannot disagree with a run's ledger. ``--rounds`` is required in the recipe
form: without it a user would read one round's ε as the whole run's.
"""

from __future__ import annotations

import argparse
import json
import math
from dataclasses import dataclass

from dpfl.simulations.cli.common import console, fail
from dpfl.simulations.config import OPTION_BY_KEY

RECIPE_FLAGS = ("batch_size", "records", "epochs", "rounds")


@dataclass(frozen=True)
class Schedule:
    """(q, steps per round, rounds) and how it was derived, for the output line."""

    sample_rate: float
    steps_per_round: int
    rounds: int
    derivation: str

    @property
    def total_steps(self) -> int:
        return self.steps_per_round * self.rounds


def register(sub: argparse._SubParsersAction) -> None:
    p_priv = sub.add_parser("privacy", help="privacy calculator (no training)",
                            description="ε of a DP-SGD schedule, or σ for a target ε. Give the schedule as "
                                        "--sample-rate and --steps, or as --batch-size, --records, --epochs "
                                        "and --rounds (one client's training recipe).")
    priv_sub = p_priv.add_subparsers(dest="what", required=True)
    for what in ("epsilon", "noise"):
        p = priv_sub.add_parser(what, help="ε of DP-SGD for a noise multiplier" if what == "epsilon"
                                else "the smallest noise multiplier σ that meets a target ε")
        mech = p.add_argument_group("the schedule in the mechanism's terms")
        mech.add_argument("--sample-rate", type=float, default=None, metavar="Q",
                          help="Poisson sampling rate q of one step (batch size / records)")
        mech.add_argument("--steps", type=int, default=None, metavar="T",
                          help="total number of DP-SGD steps over the whole run")
        recipe = p.add_argument_group("or the schedule as a training recipe (q = B/N, "
                                      "steps = E x ceil(N/B) per round)")
        recipe.add_argument("--batch-size", type=int, default=None, metavar="B",
                            help="expected batch size (Poisson sampling)")
        recipe.add_argument("--records", type=int, default=None, metavar="N",
                            help="the client's record count (under add-remove: its public declared count)")
        recipe.add_argument("--epochs", type=int, default=None, metavar="E", help="local epochs per round "
                            "(default 1)")
        recipe.add_argument("--rounds", type=int, default=None, metavar="R",
                            help="rounds the client takes part in (required with --records or --clients)")
        user = p.add_argument_group("or a user-level schedule (privacy-unit = client: q = K/N, one Poisson-"
                                    "sampled Gaussian release per round)")
        user.add_argument("--clients", type=int, default=None, metavar="N",
                          help="the population clients are sampled from")
        user.add_argument("--expected-cohort", type=int, default=None, metavar="K",
                          help="clients per round on average (fraction-train = K/N)")
        p.add_argument("--delta", type=float, required=True, help="δ of the (ε, δ) guarantee, in (0, 1); "
                       "well below 1/records")
        if what == "epsilon":
            p.add_argument("--noise-multiplier", type=float, required=True, metavar="SIGMA",
                           help="σ: noise std divided by the clipping norm")
        else:
            p.add_argument("--target-epsilon", type=float, required=True, metavar="EPS",
                           help="the ε the whole schedule must not exceed")
        p.add_argument("--accountant", choices=(*OPTION_BY_KEY["accountant"].choices, "all"),
                       default="all" if what == "epsilon" else OPTION_BY_KEY["accountant"].default,
                       help="which accountant (all: every one side by side; default %(default)s)")
        p.add_argument("--neighbouring", choices=OPTION_BY_KEY["neighbouring"].choices,
                       default=OPTION_BY_KEY["neighbouring"].default,
                       help="neighbouring relation: add-remove (default) or replace-one (PLD only)")
        p.add_argument("--json", action="store_true", help="print one JSON object instead of a table")
        p.set_defaults(func=cmd_privacy)


def schedule_of(args: argparse.Namespace) -> Schedule:
    """The schedule the flags describe; ValueError naming the flags when they are mixed or incomplete."""
    recipe = {f: getattr(args, f) for f in RECIPE_FLAGS if getattr(args, f) is not None}
    mechanism = args.sample_rate is not None or args.steps is not None
    if args.clients is not None or args.expected_cohort is not None:
        return _user_level_schedule(args, recipe, mechanism)
    if recipe and mechanism:
        raise ValueError("give the schedule one way: --sample-rate and --steps, or --batch-size, --records, "
                         "--epochs and --rounds, not both")
    if mechanism or not recipe:
        if args.sample_rate is None or args.steps is None:
            raise ValueError("the schedule is missing: give --sample-rate Q and --steps T (total steps), or "
                             "--batch-size B --records N --rounds R [--epochs E]")
        return Schedule(args.sample_rate, args.steps, 1, f"q = {args.sample_rate:g}, {args.steps} steps")
    missing = [f"--{f.replace('_', '-')}" for f in ("batch_size", "records", "rounds") if f not in recipe]
    if missing:
        raise ValueError(f"the recipe needs {', '.join(missing)} as well (--rounds: the rounds the client "
                         "trains in; one round's ε is not the run's)")
    from dpfl.privacy.calibration import steps_per_round

    epochs = recipe.get("epochs", 1)
    for flag, value in (("--batch-size", args.batch_size), ("--records", args.records), ("--epochs", epochs),
                        ("--rounds", args.rounds)):
        if value < 1:
            raise ValueError(f"{flag} {value} is not valid: expected an integer >= 1")
    q, steps = steps_per_round(args.records, args.batch_size, epochs)
    return Schedule(q, steps, args.rounds,
                    f"q = {args.batch_size}/{args.records} = {q:.6g}, {epochs} x ceil({args.records}/"
                    f"{args.batch_size}) = {steps} steps per round x {args.rounds} rounds = {steps * args.rounds} "
                    "steps")


def _user_level_schedule(args: argparse.Namespace, recipe: dict[str, int], mechanism: bool) -> Schedule:
    if mechanism or set(recipe) - {"rounds"}:
        raise ValueError("give a user-level schedule as --clients N --expected-cohort K --rounds R alone (no "
                         "--sample-rate/--steps, --batch-size/--records/--epochs)")
    if args.clients is None or args.expected_cohort is None or args.rounds is None:
        raise ValueError("a user-level schedule needs --clients N, --expected-cohort K and --rounds R")
    if not 1 <= args.expected_cohort <= args.clients or args.rounds < 1:
        raise ValueError(f"--expected-cohort {args.expected_cohort} of --clients {args.clients} over --rounds "
                         f"{args.rounds} is not valid: expected 1 <= K <= N and R >= 1")
    q = args.expected_cohort / args.clients
    return Schedule(q, 1, args.rounds, f"user-level: q = {args.expected_cohort}/{args.clients} = {q:.6g}, one "
                                       f"release per round x {args.rounds} rounds")


def cmd_privacy(args: argparse.Namespace) -> int:
    from dpfl.privacy import ACCOUNTANTS, DpSgdRelease, calibrate_noise, epsilon, validate_release_params

    try:
        if not (0 < args.delta < 1):
            raise ValueError(f"--delta {args.delta} is not valid: expected a number in (0, 1)")
        schedule = schedule_of(args)
        if args.what == "epsilon":
            validate_release_params(args.noise_multiplier, schedule.sample_rate, schedule.steps_per_round)
        else:
            validate_release_params(1.0, schedule.sample_rate, schedule.steps_per_round)
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
                # one release of all the steps: composition depends only on the total (same sigma and q)
                release = DpSgdRelease(args.noise_multiplier, schedule.sample_rate, schedule.total_steps)
                values[name] = epsilon([release], args.delta, name, neighbouring=args.neighbouring)
            else:
                values[name] = calibrate_noise(args.target_epsilon, args.delta, schedule.sample_rate,
                                               schedule.steps_per_round, schedule.rounds, accountant=name,
                                               neighbouring=args.neighbouring)
    except ValueError as exc:
        return fail(str(exc))
    key = "epsilon" if args.what == "epsilon" else "noise_multiplier"
    if args.json:
        out = {key: values if args.accountant == "all" else values[names[0]], "delta": args.delta,
               "neighbouring": args.neighbouring, "sample_rate": schedule.sample_rate,
               "steps": schedule.total_steps,
               "accountant": {n: values[n] for n in names} if args.accountant == "all" else names[0]}
        print(json.dumps(out))
        return 0
    console.print(f"{schedule.derivation}, δ = {args.delta:g}, {args.neighbouring}")
    what = "ε" if key == "epsilon" else "σ"
    for name in names:
        console.print(f"{name:>4}  {what} = {values[name]:.6g}")
    return 0
