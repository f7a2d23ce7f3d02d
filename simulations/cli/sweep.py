"""``dpfl sweep``: a privacy/utility sweep from a TOML file and/or flags.

    dpfl sweep --config sweeps/fashion-mnist-epsilon.toml --jobs 2
    dpfl sweep --dataset digits --model mlp --grid noise-multiplier=0.8,1.5 --grid seed=1,2 --out runs/sw
    dpfl sweep --config sweep.toml --resume            # finished points are skipped

Exit codes: 0 every point finished, 1 some points failed (results and report are still written),
2 bad input (nothing ran), 130 interrupted (rerun with --resume).
"""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from rich.console import Console
from rich.markup import escape
from rich.table import Table

from dpfl.simulations.cli.common import fail
from dpfl.simulations.cli.progress import LiveBar
from dpfl.simulations.config import OPTIONS, ConfigError, parse_run_config_string, read_toml


def parse_value(text: str) -> Any:
    """A flag value typed as TOML would type it (resolve coerces again; this makes tables read well)."""
    t = text.strip()
    if t.lower() in ("true", "false"):
        return t.lower() == "true"
    for kind in (int, float):
        try:
            return kind(t)
        except ValueError:
            pass
    return t


def _split_assignment(text: str, flag: str) -> tuple[str, str]:
    if "=" not in text:
        raise ConfigError(f"{flag} {text!r} is not valid: expected KEY=VALUES")
    key, values = text.split("=", 1)
    return key.strip(), values.strip()


def _random_rule(item: str, rule: str) -> dict[str, Any]:
    if "|" in rule:
        return {"choices": [parse_value(v) for v in rule.split("|")]}
    parts = rule.split(":")
    if len(parts) not in (2, 3) or (len(parts) == 3 and parts[2] != "log"):
        raise ConfigError(f"--random {item!r} is not valid: expected KEY=LOW:HIGH[:log] or KEY=A|B|C")
    return {"low": parse_value(parts[0]), "high": parse_value(parts[1]), "log": len(parts) == 3}


def spec_from_args(args: argparse.Namespace) -> Any:
    """The sweep file (--config), then --run-config and config flags over [base], then --grid/--random."""
    from dpfl.simulations.sweeps.spec import TABLES, spec_from_dict

    data: dict[str, Any] = {}
    if args.config_file:
        path = Path(args.config_file)
        data = read_toml(path, "sweep file")
        if not TABLES & set(data):
            data = {"base": data}
        values = sorted(k for k in TABLES & set(data) if not isinstance(data[k], dict))
        if values:
            raise ConfigError(f"sweep file {str(path)!r}: {', '.join(values)} must be a table ([{values[0]}]), "
                              "not a value")
        data = {k: dict(v) if isinstance(v, dict) else v for k, v in data.items()}
        data.setdefault("sweep", {}).setdefault("name", path.stem)
    base = data.setdefault("base", {})
    if args.run_config_string:
        base.update(parse_run_config_string(args.run_config_string))
    base.update({o.key: getattr(args, o.key) for o in OPTIONS if getattr(args, o.key, None) is not None})
    for item in args.grid:
        key, values = _split_assignment(item, "--grid")
        data.setdefault("grid", {})[key] = [parse_value(v) for v in values.split(",") if v.strip()]
    for item in args.random:
        key, rule = _split_assignment(item, "--random")
        data.setdefault("random", {})[key] = _random_rule(item, rule)
    if args.trials is not None:
        data.setdefault("random", {})["trials"] = args.trials
    if args.distribution is not None:
        data.setdefault("random", {})["distribution"] = args.distribution
    return spec_from_dict(data)


class RichSweepProgress(LiveBar):
    """A bar over points with an ETA, and one line per finished point."""

    def start(self, total: int, reused: int) -> None:
        if reused:
            self.console.print(f"reusing {reused} finished point(s) from an earlier run of this sweep")
        if total:
            self.start_bar("points", total)

    def point_done(self, point: Any, outcome: Mapping[str, Any]) -> None:
        from dpfl.simulations.sweeps.groups import fmt_value

        params = " ".join(f"{k}={fmt_value(v)}" for k, v in point.params.items() if v is not None)
        wall = f"({outcome.get('wall_seconds') or 0:.0f} s)"
        if outcome.get("status") == "ok":
            acc, eps = outcome.get("final_accuracy"), outcome.get("epsilon")
            acc_text = f"acc {acc:.4f}" if isinstance(acc, float) else "acc n/a"
            eps_text = "ε ∞ (no DP)" if eps is None else f"ε {eps:.3f}"
            line = f"[green]✓[/] {point.id} {point.kind:<8} {acc_text}  {eps_text}  {wall}  {escape(params)}"
        else:
            error = escape(str(outcome.get("error", "")))
            line = f"[red]✗[/] {point.id} {point.kind:<8} {error}  {wall}  {escape(params)}"
        self.console.print(line, highlight=False)
        self.advance()


def print_results(console: Console, outcome: Any, axes: list[str]) -> None:
    from dpfl.simulations.sweeps.groups import fmt_value

    table = Table(title="sweep results")
    for col in ("point", "kind", "status", *axes, "final acc", "best acc", "ε", "wall s"):
        table.add_column(col)
    for r in outcome.rows:
        if r["not_private"] and r["status"] in ("ok", "stopped"):
            eps = "∞"
        else:
            eps = f"{r['epsilon']:.3f}" if isinstance(r["epsilon"], float) else ""
        acc = f"{r['final_accuracy']:.4f}" if r["final_accuracy"] is not None else ""
        best = f"{r['best_accuracy']:.4f}" if r["best_accuracy"] is not None else ""
        wall = f"{r['wall_seconds']:.0f}" if r["wall_seconds"] is not None else ""
        status = r["status"] if r["status"] != "failed" else "[red]failed[/]"
        table.add_row(r["id"], r["kind"], status, *(escape(fmt_value(r["params"].get(a))) for a in axes), acc,
                      best, eps, wall)
    console.print(table)
    if outcome.tuning is not None:
        console.print(f"[bold]privacy of the selected result[/]: {escape(outcome.tuning.statement)}")
        for note in outcome.tuning.notes:
            console.print(f"  - {escape(note)}")
    for r in outcome.rows:
        if r["status"] == "failed":
            console.print(f"[red]failed[/] {r['id']}: {escape(r['error'])}")
    for f in outcome.files:
        console.print(f"  {f}")


def _print_plan(console: Console, spec: Any, points: list[Any], axes: list[str], where: str) -> None:
    from dpfl.simulations.sweeps.groups import fmt_value

    table = Table(title=f"sweep plan: {spec.name} ({spec.mode})")
    for col in ("point", "kind", *axes, "valid"):
        table.add_column(col)
    for p in points:
        valid = "yes" if p.valid else p.error
        table.add_row(p.id, p.kind, *(escape(fmt_value(p.params.get(a))) for a in axes), escape(valid))
    console.print(table)
    console.print(f"{len(points)} point(s) → {escape(where)}; nothing was run (--dry-run)")


def cmd_sweep(args: argparse.Namespace) -> int:
    from dpfl.simulations.sweeps.runner import report_only, run_sweep
    from dpfl.simulations.sweeps.spec import SweepError, draw_trial_count, expand
    from dpfl.simulations.sweeps.spec import axes as swept_axes

    console = Console(file=sys.stdout, highlight=False)
    try:
        if args.report_only:
            if not args.out:
                raise SweepError("--report-only needs --out DIR (the sweep directory)")
            outcome = report_only(args.out)
            axes = list(outcome.rows[0]["params"]) if outcome.rows else []
            print_results(console, outcome, axes)
            return 0
        if args.threads < 1 or (args.jobs is not None and args.jobs < 1):
            raise SweepError("--jobs and --threads must be >= 1")
        spec = spec_from_args(args)
        out = args.out or spec.out or os.path.join("runs", "sweeps", spec.name)
        jobs = args.jobs or spec.jobs or (os.cpu_count() or 1)
        axes = swept_axes(spec)
        if args.dry_run:
            trials = None
            if spec.random is not None:
                trials = draw_trial_count(spec.random.distribution, spec.random.trials, spec.random.eta)
            where = f"{out} (engine {args.engine}, jobs {jobs}"
            where += "" if trials is None else f", K = {trials}"
            _print_plan(console, spec, expand(spec, trials=trials), axes, where + ")")
            return 0
        cores = os.cpu_count() or 1
        if args.engine == "local" and jobs * args.threads > cores:
            console.print(f"[yellow]warning:[/] --jobs {jobs} x --threads {args.threads} > {cores} cores: "
                          "points will compete for CPU")
        console.print(f"[bold]dpfl sweep[/] · {spec.name} · {spec.mode} · engine {args.engine} · "
                      f"jobs {jobs} · out {out}")
        outcome = run_sweep(spec, out, jobs=jobs, engine=args.engine, ray_address=args.ray_address,
                            resume=args.resume, threads=args.threads, progress=RichSweepProgress(console))
    except (SweepError, ConfigError) as exc:
        return fail(str(exc))
    except KeyboardInterrupt:
        Console(stderr=True).print("interrupted: finished points are kept; rerun with --resume to continue")
        return 130
    print_results(console, outcome, axes)
    console.print(f"{outcome.ran} point(s) run, {outcome.reused} reused, {outcome.failed} failed · "
                  f"{outcome.wall_seconds:.0f} s · {outcome.out}")
    return 0 if outcome.failed == 0 else 1


def register(sub: argparse._SubParsersAction) -> None:
    """Add ``dpfl sweep`` to the dpfl command line."""
    p = sub.add_parser("sweep", help="privacy/utility sweep: grid or random search over run options, "
                                     "with non-private baselines, resume and a report",
                       description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--config", dest="config_file", default=None,
                   help="sweep TOML ([sweep], [base], [grid], [random]); a plain run-config TOML is [base]")
    p.add_argument("--jobs", type=int, default=None,
                   help="points at once (default: [sweep] jobs, else the number of cores)")
    p.add_argument("--threads", type=int, default=1, help="torch threads per point (default 1)")
    p.add_argument("--engine", choices=("local", "ray"), default="local",
                   help="local: worker processes on this machine; ray: one Ray task per point")
    p.add_argument("--ray-address", default=None,
                   help="Ray cluster to use (default: $RAY_ADDRESS, else a local Ray with --jobs CPUs)")
    p.add_argument("--out", default=None,
                   help="sweep directory (default: [sweep] out, else runs/sweeps/<name>)")
    p.add_argument("--resume", action="store_true", help="continue a sweep: finished points are skipped")
    p.add_argument("--grid", action="append", default=[], metavar="KEY=V1,V2",
                   help="grid axis (repeatable; replaces the file's axis of the same key)")
    p.add_argument("--random", action="append", default=[], metavar="KEY=LOW:HIGH[:log]|KEY=A|B",
                   help="random-search parameter (repeatable)")
    p.add_argument("--trials", type=float, default=None,
                   help="random search: mean number of trials (exact with --distribution fixed)")
    p.add_argument("--distribution", choices=("poisson", "truncated-negative-binomial", "fixed"),
                   default=None, help="random search: distribution of the number of trials (default poisson)")
    p.add_argument("--dry-run", action="store_true",
                   help="print the points and their validation; run nothing")
    p.add_argument("--report-only", action="store_true", help="rebuild results and report from --out")
    p.add_argument("--run-config", dest="run_config_string", default=None,
                   help='base overrides, Flower style: "key=value key2=value2"')
    group = p.add_argument_group("base run configuration (every run-config key is a flag; overrides [base])")
    for option in OPTIONS:
        if option.key == "resume":  # every point is a run of its own; the sweep's --resume skips finished ones
            continue
        if option.kind is bool:
            group.add_argument(f"--{option.key}", dest=option.key, nargs="?", const="true", default=None,
                               metavar="BOOL", help=option.help)
        else:
            group.add_argument(f"--{option.key}", dest=option.key, default=None, metavar="VALUE",
                               help=option.help)
    p.set_defaults(func=cmd_sweep)
