"""The report's plots, drawn only from the report dict (so every plotted number is in report.json).

Uses matplotlib's Agg canvas on explicit Figure objects: no pyplot, no global backend switch, so
it is safe on headless servers and inside processes that use matplotlib differently.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure

PLOT_FILES = {
    "epsilon": "epsilon_per_round.png",
    "accuracy": "accuracy_per_round.png",
    "accuracy_vs_epsilon": "accuracy_vs_epsilon.png",
    "audit": "audit_scores.png",
}
DPI = 110


def _figure() -> tuple[Figure, Any]:
    fig = Figure(figsize=(8, 4.5), dpi=DPI, layout="constrained")
    FigureCanvasAgg(fig)
    ax = fig.add_subplot()
    ax.grid(True, alpha=0.3)
    return fig, ax


def _save(fig: Figure, path: Path) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, format="png", metadata={"Software": None})
    return path


def _series(values: list[float | None], rounds: list[int]) -> tuple[list[int], list[float]]:
    pairs = [(r, v) for r, v in zip(rounds, values, strict=True) if v is not None]
    return [r for r, _ in pairs], [v for _, v in pairs]


def identical_curves(eps: dict[str, Any]) -> list[list[str]]:
    """Clients grouped by equal ε series, in client order: ten clients with one schedule are one line,
    not ten lines drawn on top of each other."""
    groups: dict[tuple, list[str]] = {}
    for cid in eps["clients"]:
        key = tuple(None if v is None else round(v, 9) for v in eps["per_client"][cid])
        groups.setdefault(key, []).append(cid)
    return list(groups.values())


def _limit_label(fed: dict[str, Any]) -> str:
    word = "target" if fed.get("budget_source") == "target-epsilon" else "budget"
    return f"{word} ε = {fed['budget']:g}"


def plot_epsilon(report: dict[str, Any], path: Path) -> Path | None:
    eps, fed = report["epsilon"], report["federation"]
    rounds = eps["rounds"]
    if not rounds or not eps["clients"]:
        return None
    fig, ax = _figure()
    if eps["plot_mode"] == "band":
        lo, med, hi = eps["stats"]["min"], eps["stats"]["median"], eps["stats"]["max"]
        ax.fill_between(rounds, lo, hi, alpha=0.25, color="tab:blue", label="min to max over clients")
        ax.plot(rounds, hi, color="tab:red", marker="o", ms=3, label="max = federation ε")
        ax.plot(rounds, med, color="tab:blue", marker="o", ms=3, label="median client")
        ax.plot(rounds, lo, color="tab:blue", lw=0.8, ls=":", label="min client")
        title = f"ε per client after each round ({len(eps['clients'])} clients)"
    else:
        for members in identical_curves(eps):
            xs, ys = _series(eps["per_client"][members[0]], rounds)
            label = members[0] if len(members) == 1 else (
                f"{len(members)} clients with equal ε ({members[0]} ... {members[-1]})")
            ax.plot(xs, ys, marker="o", ms=3, label=label)
        title = "ε per client after each round"
    top = max((v for vals in eps["per_client"].values() for v in vals if v is not None), default=0.0)
    if fed.get("budget"):
        ax.axhline(fed["budget"], color="black", ls="--", lw=1, label=_limit_label(fed))
        top = max(top, fed["budget"])
    delta = fed.get("delta")
    ax.set_title(f"{title}  (δ = {delta:g}, {fed['accountant']})" if delta else title)
    ax.set_xlabel("round")
    ax.set_ylabel("cumulative ε")
    ax.set_ylim(0, top * 1.12 if top > 0 else 1.0)
    ax.set_xticks(rounds if len(rounds) <= 20 else rounds[:: max(1, len(rounds) // 10)])
    n_labels = len(ax.get_legend_handles_labels()[1])
    ax.legend(fontsize=8, ncol=1 if n_labels <= 8 else 2, loc="best")
    return _save(fig, path)


def plot_accuracy(report: dict[str, Any], path: Path) -> Path | None:
    rows = [r for r in report["training"]["rounds"] if r["accuracy"] is not None]
    if not rows:
        return None
    fig, ax = _figure()
    xs = [r["round"] for r in rows]
    lines = ax.plot(xs, [r["accuracy"] for r in rows], marker="o", color="tab:green", label="test accuracy")
    ax.set_xlabel("round")
    ax.set_ylabel("test accuracy", color="tab:green")
    if any(r["loss"] is not None for r in rows):
        ax2 = ax.twinx()  # a missing (non-finite) loss leaves a gap rather than a made-up segment
        lines += ax2.plot(xs, [math.nan if r["loss"] is None else r["loss"] for r in rows], marker="s", ms=3,
                          color="tab:gray", ls="--", label="test loss")
        ax2.set_ylabel("test loss", color="tab:gray")
    ax.legend(lines, [line.get_label() for line in lines], fontsize=8, loc="center right")
    ax.set_title("Global model on the server's test set")
    ax.set_xticks(xs if len(xs) <= 20 else xs[:: max(1, len(xs) // 10)])
    return _save(fig, path)


def plot_accuracy_vs_epsilon(report: dict[str, Any], path: Path) -> Path | None:
    rows = [r for r in report["training"]["rounds"]
            if r["accuracy"] is not None and r["epsilon_max"] is not None]
    if not rows:
        return None
    fig, ax = _figure()
    xs, ys = [r["epsilon_max"] for r in rows], [r["accuracy"] for r in rows]
    ax.plot(xs, ys, marker="o", color="tab:purple")
    step = max(1, len(rows) // 12)
    for r in rows[::step]:
        ax.annotate(f"r{r['round']}", (r["epsilon_max"], r["accuracy"]), textcoords="offset points",
                    xytext=(4, -10), fontsize=8)
    fed = report["federation"]
    if fed.get("budget"):
        ax.axvline(fed["budget"], color="black", ls="--", lw=1, label=_limit_label(fed))
        ax.legend(fontsize=8, loc="lower right")
    ax.set_xlabel(f"federation ε after the round (max over clients, δ = {fed['delta']:g})" if fed.get("delta")
                  else "federation ε after the round")
    ax.set_ylabel("test accuracy")
    ax.set_title("Privacy / utility: test accuracy against ε spent")
    return _save(fig, path)


def plot_audit(report: dict[str, Any], path: Path) -> Path | None:
    a = report.get("audit")
    if not a or not (a["scores_included"] or a["scores_excluded"]):
        return None
    fig, ax = _figure()
    values = [*a["scores_included"], *a["scores_excluded"]]
    lo, hi = min(values), max(values)
    bins = [lo + (hi - lo) * k / 40 for k in range(41)] if hi > lo else 10
    ax.hist(a["scores_excluded"], bins=bins, alpha=0.6, color="tab:blue", label="excluded by their coin")
    ax.hist(a["scores_included"], bins=bins, alpha=0.6, color="tab:red", label="included by their coin")
    one = a["one_run"]
    ax.set_xlabel("canary score (higher: more likely included)")
    ax.set_ylabel("canaries")
    ax.set_title(f"Audit: measured ε ≥ {one['epsilon_lower_bound']:.3f} vs accountant's ε ≤ "
                 f"{a['claimed_epsilon']:.3f} ({one['canaries']} {a['kind']} canaries)")
    ax.legend(fontsize=8)
    return _save(fig, path)


def write_plots(report: dict[str, Any], plot_dir: Path) -> dict[str, Path]:
    """Draw every plot the data allows; returns {plot name: png path}."""
    out: dict[str, Path] = {}
    for name, fn in (("epsilon", plot_epsilon), ("accuracy", plot_accuracy),
                     ("accuracy_vs_epsilon", plot_accuracy_vs_epsilon), ("audit", plot_audit)):
        path = fn(report, plot_dir / PLOT_FILES[name])
        if path is not None:
            out[name] = path
    return out
