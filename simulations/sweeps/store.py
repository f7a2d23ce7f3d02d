"""The sweep directory on disk: when a point's run counts as finished, atomic JSON files, kept attempts.

A run directory itself is read through ``dpfl.privacy.rundata`` (the one reader of that contract); this
module only adds what the sweep keeps beside it: ``plan.json`` and each run's ``point.json``, written
atomically so an interrupted sweep never leaves a torn file, and ``attempts/``, where an unfinished run
is moved before its point runs again (its releases were spent, so its ledgers must stay countable).
"""

from __future__ import annotations

import json
import os
import shutil
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from dpfl.privacy.rundata import has_metrics, read_json_object, read_summary

RUNS, ATTEMPTS = "runs", "attempts"
POINT_FILE = "point.json"
TOKEN_FILE = ".sweep-token"  # a random id: a Ray node that reads the same one shares the sweep directory


def write_json(path: Path, data: Mapping[str, Any]) -> None:
    """Write through a temporary file and rename: readers see the old file or the new one."""
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    tmp.write_text(json.dumps(data, indent=2, default=str) + "\n")
    os.replace(tmp, path)


def read_point_info(run: Path) -> dict[str, Any]:
    """RUN/point.json: how the sweep ran this point (status, error, wall time, host); {} when absent."""
    return read_json_object(run / POINT_FILE) or {}


def run_complete(path: Path) -> bool:
    """A finished point: summary.json written (training over, early stop included) and not interrupted."""
    summary = read_summary(path)
    return (summary is not None and "rounds_completed" in summary
            and summary.get("stop_reason") != "interrupted" and has_metrics(path))


def archive_attempt(path: Path, attempts_dir: Path) -> Path | None:
    """Move an unfinished run aside: its ledgers stay, because those releases were spent."""
    if not path.exists():
        return None
    attempts_dir.mkdir(parents=True, exist_ok=True)
    n = 1
    while (attempts_dir / f"{path.name}-{n}").exists():
        n += 1
    target = attempts_dir / f"{path.name}-{n}"
    shutil.move(str(path), str(target))
    return target
