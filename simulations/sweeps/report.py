"""Sweep results and report files: results.csv/json, report.md and a self-contained report.html.

report.html embeds its plots as base64 PNG and loads no external resources, scripts or fonts.

The report states which epsilon applies to the selected model: the tuning epsilon of the whole sweep,
not the epsilon of the selected run alone.
"""

from __future__ import annotations

import base64
import csv
import html
import json
import math
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from dpfl.simulations.sweeps.groups import Group, fmt_value, group_rows, privacy_axes
from dpfl.simulations.sweeps.plots import plot_accuracy_vs_epsilon, plot_accuracy_vs_rounds, plot_parameter_effects
from dpfl.simulations.sweeps.results import OK
from dpfl.simulations.sweeps.spec import SweepSpec
from dpfl.simulations.sweeps.spec import axes as spec_axes

if TYPE_CHECKING:
    from dpfl.simulations.sweeps.accounting import Tuning

CSV_FIELDS = ("id", "kind", "status", "final_accuracy", "best_accuracy", "best_round", "epsilon", "delta",
              "noise_multiplier", "rounds_completed", "stop_reason", "wall_seconds", "seed", "trial",
              "run_dir", "error", "warning")


def _num(value: Any, digits: int = 4) -> str:
    if value is None:
        return ""
    if isinstance(value, float):
        if math.isinf(value):
            return "inf"
        return f"{value:.{digits}g}" if abs(value) < 1e4 else f"{value:.0f}"
    return str(value)


# --- results tables ---------------------------------------------------------------------------------------
def write_results(out: Path, rows: Sequence[Mapping[str, Any]], *, axes: Sequence[str]) -> list[Path]:
    """results.csv (one row per point: parameters, accuracy, epsilon at delta, wall time, status) and
    results.json (the same rows with per-round curves). A baseline's epsilon is "inf" in the CSV, null in
    JSON."""
    csv_path, json_path = out / "results.csv", out / "results.json"
    fields = ["id", "kind", "status", *axes, *CSV_FIELDS[3:]]
    with open(csv_path, "w", newline="") as fh:
        writer = csv.DictWriter(fh, fieldnames=fields)
        writer.writeheader()
        for row in rows:
            flat: dict[str, Any] = {k: row.get(k) for k in CSV_FIELDS}
            for axis in axes:
                value = row["params"].get(axis)
                flat[axis] = json.dumps(value) if isinstance(value, dict) else (
                    "" if value is None else value)
            if row["not_private"] and row["status"] in OK:
                flat["epsilon"] = "inf"
            writer.writerow({k: ("" if v is None else v) for k, v in flat.items()})
    json_path.write_text(json.dumps({"axes": list(axes), "rows": list(rows)}, indent=1, default=str) + "\n")
    return [csv_path, json_path]


# --- report -----------------------------------------------------------------------------------------------
def _point_table(rows: Sequence[Mapping[str, Any]], axes: Sequence[str]) -> tuple[list[str], list[list[str]]]:
    head = ["point", "kind", "status", *axes, "final acc", "best acc", "ε", "δ", "σ", "rounds", "wall s"]
    body = []
    for r in rows:
        eps = "∞ (no DP)" if r["not_private"] and r["status"] in OK else _num(r["epsilon"])
        body.append([r["id"], r["kind"], r["status"], *(fmt_value(r["params"].get(a)) for a in axes),
                     _num(r["final_accuracy"]), _num(r["best_accuracy"]), eps, _num(r["delta"], 3),
                     fmt_value(r["noise_multiplier"]) if r["noise_multiplier"] is not None else "",
                     str(r["rounds_completed"] or ""), _num(r["wall_seconds"], 3)])
    return head, body


def _group_table(groups: Sequence[Group]) -> tuple[list[str], list[list[str]]]:
    head = ["setting", "kind", "runs ok", "ε (mean ± sd)", "final acc (mean ± sd)", "best acc", "Pareto"]
    body = []
    order = sorted(groups, key=lambda g: (g.setting, g.kind != "baseline", g.eps_mean or 0.0))
    for g in order:
        eps = "∞ (no DP)" if g.kind == "baseline" else (
            f"{g.eps_mean:.3f} ± {g.eps_sd:.3f}" if g.eps_mean is not None else "")
        acc = f"{g.acc_mean:.4f} ± {g.acc_sd:.4f}" if g.acc_mean is not None else ""
        body.append([g.label, g.kind, f"{g.n_ok}/{len(g.ids)}", eps, acc, _num(g.best_mean),
                     "yes" if g.pareto else ""])
    return head, body


def _md_table(head: Sequence[str], body: Sequence[Sequence[str]]) -> str:
    def esc(s: str) -> str:
        return s.replace("|", "\\|").replace("\n", " ")

    lines = ["| " + " | ".join(esc(h) for h in head) + " |", "|" + "---|" * len(head)]
    lines += ["| " + " | ".join(esc(c) for c in row) + " |" for row in body]
    return "\n".join(lines)


def _html_table(head: Sequence[str], body: Sequence[Sequence[str]]) -> str:
    th = "".join(f"<th>{html.escape(h)}</th>" for h in head)
    trs = "".join("<tr>" + "".join(f"<td>{html.escape(c)}</td>" for c in row) + "</tr>" for row in body)
    return f"<table><thead><tr>{th}</tr></thead><tbody>{trs}</tbody></table>"


CSS = """body{font-family:system-ui,-apple-system,Segoe UI,Helvetica,Arial,sans-serif;max-width:1100px;
margin:2em auto;padding:0 1em;color:#222;line-height:1.45}
table{border-collapse:collapse;font-size:12px;margin:1em 0}
td,th{border:1px solid #ccc;padding:3px 6px;text-align:left}th{background:#f3f3f3}
.guarantee{border-left:4px solid #2a7;background:#f2fbf6;padding:.6em 1em}
.warn{border-left:4px solid #c33;background:#fdf3f3;padding:.6em 1em}img{max-width:100%}
code{background:#f4f4f4}"""


def write_report(out: Path, spec: SweepSpec | None, rows: Sequence[Mapping[str, Any]],
                 tuning: Tuning | None) -> list[Path]:
    """report.md (plots as files under plots/) and report.html (the same, plots embedded)."""
    axes = spec_axes(spec) if spec is not None else []
    priv_axes = privacy_axes(spec)
    groups = group_rows(rows, priv_axes)
    rules = spec.random.params.items() if spec and spec.random else []
    random_numeric = {k for k, r in rules if "low" in r}
    plots: dict[str, tuple[str, bytes | None]] = {}
    if any(g.kind == "private" and g.eps_mean is not None for g in groups) or any(g.acc_mean for g in groups):
        plots["accuracy_vs_epsilon"] = ("Accuracy vs ε (Pareto front circled; dashed: non-private baseline)",
                                        plot_accuracy_vs_epsilon(groups))
        plots["accuracy_vs_rounds"] = ("Accuracy vs rounds, one line per ε", plot_accuracy_vs_rounds(groups))
    effect = plot_parameter_effects(rows, axes, priv_axes, random_numeric)
    if effect is not None:
        plots["parameter_effects"] = ("Effect of each swept parameter", effect)
    plot_dir = out / "plots"
    plot_dir.mkdir(exist_ok=True)
    for name, (_, data) in plots.items():
        if data is not None:
            (plot_dir / f"{name}.png").write_bytes(data)

    ok = sum(r["status"] in OK for r in rows)
    failed = [r for r in rows if r["status"] not in OK]
    name = spec.name if spec else out.name
    mode = spec.mode if spec else "grid"
    summary = (f"{len(rows)} points ({sum(r['kind'] == 'private' for r in rows)} private, "
               f"{sum(r['kind'] == 'baseline' for r in rows)} non-private baselines), {ok} finished, "
               f"{len(failed)} failed; mode: {mode}")
    if tuning and tuning.trials is not None:
        summary += f", K = {tuning.trials} trials drawn ({tuning.distribution}, mean {tuning.mean_trials:g})"
    sel = next((r for r in rows if tuning and r["id"] == tuning.selected), None)
    sel_lines: list[str] = []
    if sel is not None:
        params = "; ".join(f"{k}={fmt_value(v)}" for k, v in sel["params"].items())
        sel_lines.append(f"Selected point: {sel['id']} ({params}), final test accuracy "
                         f"{_num(sel['final_accuracy'])}.")
    tun_head = ["", "value"]
    tun_body: list[list[str]] = []
    if tuning is not None:
        tun_body = [["ε that applies to the selected model", _num(tuning.epsilon)],
                    ["δ", _num(tuning.delta, 3)],
                    ["how", tuning.method],
                    ["private runs composed", str(tuning.private_runs)],
                    ["ε of the selected run alone (ignores tuning; NOT its guarantee)",
                     _num(tuning.selected_epsilon_alone)]]
    notes = list(tuning.notes) if tuning else []
    point_head, point_body = _point_table(rows, axes)
    group_head, group_body = _group_table(groups)
    fail_head = ["point", "kind", *axes, "error"]
    fail_body = [[r["id"], r["kind"], *(fmt_value(r["params"].get(a)) for a in axes), r["error"]]
                 for r in failed]
    reading = ("ε is sample-level DP at each client, composed over every round the client trained in; "
               "a sweep point's ε is the max over clients at the run's δ. Accuracy is measured by the "
               "server on its test set. Points that differ only in seed are grouped (mean ± sd). The "
               "Pareto front is the set of private settings not dominated in (lower ε, higher accuracy). "
               "Selection uses server-side test accuracy only and never picks a non-private baseline; the "
               "baselines carry no guarantee.")

    md = [f"# Sweep report: {name}", "", summary, "", "## Privacy of the selected result", ""]
    md += [tuning.statement if tuning else "No tuning accounting.", ""]
    md += [*sel_lines, ""] if sel_lines else []
    if tun_body:
        md += [_md_table(tun_head, tun_body), ""]
    md += [f"- {n}" for n in notes] + ([""] if notes else [])
    md += ["## Plots", ""]
    for pname, (title, data) in plots.items():
        if data is not None:
            md += [f"### {title}", "", f"![{title}](plots/{pname}.png)", ""]
    md += ["## Settings (seeds grouped)", "", _md_table(group_head, group_body), "", "## All points", "",
           _md_table(point_head, point_body), ""]
    if failed:
        md += ["## Failed points", "", _md_table(fail_head, fail_body), ""]
    md += ["## How to read this", "", reading, ""]
    md_path = out / "report.md"
    md_path.write_text("\n".join(md))

    body = [f"<h1>Sweep report: {html.escape(name)}</h1>", f"<p>{html.escape(summary)}</p>",
            "<h2>Privacy of the selected result</h2>"]
    klass = "guarantee" if tuning and tuning.epsilon is not None else "warn"
    statement = tuning.statement if tuning else "No tuning accounting."
    sel_html = "".join(f"<p>{html.escape(s)}</p>" for s in sel_lines)
    body.append(f"<div class='{klass}'><p>{html.escape(statement)}</p>{sel_html}</div>")
    if tun_body:
        body.append(_html_table(tun_head, tun_body))
    if notes:
        body.append("<ul>" + "".join(f"<li>{html.escape(n)}</li>" for n in notes) + "</ul>")
    body.append("<h2>Plots</h2>")
    for title, data in plots.values():
        if data is not None:
            b64 = base64.b64encode(data).decode()
            body.append(f"<h3>{html.escape(title)}</h3><img alt='{html.escape(title)}' "
                        f"src='data:image/png;base64,{b64}'>")
    body += ["<h2>Settings (seeds grouped)</h2>", _html_table(group_head, group_body), "<h2>All points</h2>",
             _html_table(point_head, point_body)]
    if failed:
        body += ["<h2>Failed points</h2>", _html_table(fail_head, fail_body)]
    body += ["<h2>How to read this</h2>", f"<p>{html.escape(reading)}</p>"]
    page = (f"<!DOCTYPE html><html lang='en'><head><meta charset='utf-8'>"
            f"<title>Sweep report: {html.escape(name)}</title><style>{CSS}</style></head>"
            f"<body>{''.join(body)}</body></html>\n")
    html_path = out / "report.html"
    html_path.write_text(page)
    return [md_path, html_path]
