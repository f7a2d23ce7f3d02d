"""``dpfl runs list [DIR]`` and ``dpfl runs compare RUN...``: what was run, and how runs compare.

Everything is read from run directories through ``dpfl.privacy.rundata`` (the one reader): config.json for
what ran, summary.json for how it ended, metrics.jsonl for the curves. A run without summary.json is
``running or killed`` (``dpfl resume`` continues a killed one). ``compare`` prints one table and draws one
figure with two panels, accuracy against round and accuracy against the epsilon spent so far, the runs side
by side; it is written with matplotlib's Agg canvas (no display needed).
"""

from __future__ import annotations

import argparse
import datetime as dt
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from rich.markup import escape
from rich.table import Table

from dpfl.simulations.cli.common import console, fail
from dpfl.simulations.config.options import tags_of


@dataclass(frozen=True)
class RunRow:
    """One run directory, as the listing shows it."""

    path: Path
    started: str
    dataset: str
    model: str
    unit: str  # unit of privacy: record (sample-level DP-SGD), or none
    epsilon: float | None
    delta: float | None
    accuracy: float | None
    rounds: str
    state: str
    tags: tuple[str, ...]


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("runs", help="list run directories, or compare runs side by side",
                       description="`dpfl runs list [DIR]`: every run under DIR (default runs/). "
                                   "`dpfl runs compare RUN RUN ...`: one table and one figure (accuracy vs round, "
                                   "accuracy vs epsilon).")
    actions = p.add_subparsers(dest="runs_action", metavar="{list,compare}", required=True)
    ls = actions.add_parser("list", help="every run under DIR: name, date, dataset, model, unit of privacy, "
                                         "epsilon, accuracy, state")
    ls.add_argument("directory", nargs="?", default="runs", metavar="DIR")
    ls.add_argument("--tag", default=None, metavar="LABEL", help="only runs carrying this label (run-config key tag)")
    ls.set_defaults(func=cmd_runs_list)
    cmp = actions.add_parser("compare", help="two or more runs side by side: a table and a figure")
    cmp.add_argument("runs", nargs="+", metavar="RUN")
    cmp.add_argument("--out", default="runs-compare.png", metavar="FILE",
                     help="where the figure goes (default runs-compare.png; .png, .svg or .pdf)")
    cmp.set_defaults(func=cmd_runs_compare)


def read_row(path: Path) -> RunRow | None:
    """The listing row of a run directory, or None when ``path`` holds no dpfl run (no config.json)."""
    from dpfl.privacy.rundata import read_config, read_metrics, read_summary

    config = read_config(path)
    if config is None:
        return None
    summary = read_summary(path) or {}
    rows = read_metrics(path)
    started = dt.datetime.fromtimestamp((path / "config.json").stat().st_mtime).strftime("%Y-%m-%d %H:%M")
    dp = bool(config.get("dp", True)) and not config.get("deterministic-noise", False)
    user_level = config.get("privacy-unit") == "client" and not config.get("deterministic-noise", False)
    last = rows[-1] if rows else {}
    epsilon = summary.get("epsilon_max", last.get("epsilon_max"))
    unit = "record" if dp else "none (NOT PRIVATE)"
    if user_level:  # the user-level epsilon is the run's headline; the record-level one is in its report
        epsilon = summary.get("user_epsilon", last.get("user_epsilon"))
        unit = "client" + (" + record" if dp else "")
    total = config.get("num-server-rounds", "?")
    done = summary.get("rounds_completed", len(rows))
    if not summary:
        state = "running or killed"
    elif summary.get("stop_reason"):
        state = "interrupted" if summary["stop_reason"] == "interrupted" else "stopped early"
    else:
        state = "complete"
    return RunRow(path=path, started=started, dataset=str(config.get("dataset", "?")),
                  model=str(config.get("model", "?")), unit=unit,
                  epsilon=float(epsilon) if isinstance(epsilon, int | float) else None,
                  delta=summary.get("user_delta" if user_level else "delta", last.get("delta")),
                  accuracy=summary.get("final_accuracy", last.get("accuracy")),
                  rounds=f"{done}/{total}", state=state, tags=tuple(tags_of(str(config.get("tag", "")))))


def _fmt(value: Any, spec: str) -> str:
    return format(value, spec) if isinstance(value, int | float) else "—"


def cmd_runs_list(args: argparse.Namespace) -> int:
    root = Path(args.directory).expanduser()
    if not root.is_dir():
        return fail(f"{root} is not a directory; give the folder that holds your run directories (default runs/)")
    found = [row for p in sorted(root.iterdir()) if p.is_dir() and (row := read_row(p)) is not None]
    if args.tag:
        found = [r for r in found if args.tag.strip() in r.tags]
    if not found:
        console.print(f"no runs under {root}" + (f" tagged {args.tag!r}" if args.tag else ""))
        return 0
    table = Table(title=f"runs under {root}", show_lines=False,
                  caption="running or killed: `dpfl resume RUN_DIR` continues a killed run")
    for column in ("run", "started", "dataset", "model", "privacy unit", "ε", "δ", "accuracy", "rounds", "state",
                   "tags"):
        table.add_column(column, justify="right" if column in ("ε", "δ", "accuracy", "rounds") else "left")
    for r in found:
        table.add_row(escape(r.path.name), r.started, r.dataset, r.model, r.unit, _fmt(r.epsilon, ".3f"),
                      _fmt(r.delta, ".1e"), _fmt(r.accuracy, ".4f"), r.rounds, r.state, escape(", ".join(r.tags)))
    console.print(table)
    return 0


def cmd_runs_compare(args: argparse.Namespace) -> int:
    from dpfl.privacy.rundata import read_metrics

    paths = [Path(p).expanduser() for p in args.runs]
    rows = []
    for path in paths:
        row = read_row(path)
        if row is None:
            return fail(f"{path} holds no dpfl run (no config.json); give run directories")
        rows.append(row)
    if len(rows) < 2:
        return fail("dpfl runs compare needs at least two runs")
    out = Path(args.out).expanduser()
    if out.suffix.lower() not in (".png", ".svg", ".pdf"):
        return fail(f"--out {args.out}: the figure must be a .png, .svg or .pdf file")
    table = Table(title="runs side by side")
    for column in ("run", "dataset", "model", "privacy unit", "ε", "δ", "accuracy", "rounds", "state"):
        table.add_column(column)
    for r in rows:
        table.add_row(escape(str(r.path)), r.dataset, r.model, r.unit, _fmt(r.epsilon, ".3f"), _fmt(r.delta, ".1e"),
                      _fmt(r.accuracy, ".4f"), r.rounds, r.state)
    console.print(table)
    curves = {r.path.name: read_metrics(r.path) for r in rows}
    draw_comparison(curves, out)
    console.print(f"figure: {out}")
    return 0


def draw_comparison(curves: dict[str, list[dict[str, Any]]], out: Path) -> Path:
    """Accuracy vs round and accuracy vs epsilon, one line per run; written to ``out``."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=(11, 4.2), layout="constrained")
    FigureCanvasAgg(fig)
    by_round, by_eps = fig.subplots(1, 2)
    for name, rows in curves.items():
        rounds = [r["round"] for r in rows if isinstance(r.get("accuracy"), int | float)]
        acc = [r["accuracy"] for r in rows if isinstance(r.get("accuracy"), int | float)]
        line = by_round.plot(rounds, acc, marker="o", markersize=3, label=name)[0]
        eps = [(r["epsilon_max"], r["accuracy"]) for r in rows
               if isinstance(r.get("epsilon_max"), int | float) and isinstance(r.get("accuracy"), int | float)]
        if eps:
            by_eps.plot([e for e, _ in eps], [a for _, a in eps], marker="o", markersize=3, color=line.get_color(),
                        label=name)
    by_round.set(xlabel="round", ylabel="test accuracy", title="accuracy vs round")
    by_eps.set(xlabel="ε spent so far (max over clients)", ylabel="test accuracy", title="accuracy vs ε")
    for ax in (by_round, by_eps):
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out, dpi=120)
    return out
