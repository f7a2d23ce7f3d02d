"""Privacy accounting report of a run directory: report.json, report.md, report.html and plots/*.png.

Written for a data-protection officer (what is protected, at which epsilon and delta, what is not
covered) and an ML engineer (epsilon per client per round, accuracy against epsilon, every accountant
side by side, and how to reproduce each number).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from dpfl.privacy.report.content import build_report
from dpfl.privacy.report.document import build_document
from dpfl.privacy.report.jsonsafe import dumps
from dpfl.privacy.report.plots import write_plots
from dpfl.privacy.report.render_html import render_html
from dpfl.privacy.report.render_md import render_markdown
from dpfl.privacy.rundata import RunData, load_run

__all__ = ["RunData", "build_report", "load_run", "write_report"]


def _write(path: Path, text: str) -> Path:
    """Write via a temp file and rename, so a reader never sees half a report."""
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(text, encoding="utf-8")
    tmp.replace(path)
    return path


def write_report(run_dir: str | Path) -> list[Path]:
    """Write RUN/report/{report.json, report.md, report.html, plots/*.png}; returns the paths written."""
    run = load_run(run_dir)
    out = run.path / "report"
    out.mkdir(parents=True, exist_ok=True)
    report: dict[str, Any] = build_report(run)
    plots = write_plots(report, out / "plots")
    report["plots"] = {name: p.relative_to(out).as_posix() for name, p in plots.items()}
    title, sections = build_document(report)
    images = {name: path.read_bytes() for name, path in plots.items()}
    paths = [_write(out / "report.json", dumps(report)),
             _write(out / "report.md", render_markdown(title, sections, report["plots"])),
             _write(out / "report.html", render_html(title, sections, images))]
    return paths + list(plots.values())
