"""The run directory contract every engine honours (see docs/architecture.md).

``runs/<run-id>/``: ``config.json``, ``metrics.jsonl``, ``ledgers/<client>.jsonl``,
``checkpoints/`` (global model + server state per round), ``model.pt`` and ``summary.json``; from each
metrics row also ``metrics.csv``, ``tensorboard/`` and the configured tracker (``server/tracking.py``).
Writes that matter go through a temp file and an atomic rename.
"""

from __future__ import annotations

import json
import os
import tempfile
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch

from dpfl.privacy.rundata import CONFIG_FILE, LEDGER_DIR, METRICS_FILE, SUMMARY_FILE, read_config, read_metrics
from dpfl.server.tracking import RunTracking


def atomic_write_text(path: Path, text: str) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "w") as fh:
            fh.write(text)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


class RunDirectory:
    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)
        self.ledgers = self.path / LEDGER_DIR
        self.checkpoints = self.path / "checkpoints"
        self.tracking: RunTracking | None = None  # made when config.json is written, closed with summary.json

    def create(self) -> RunDirectory:
        for p in (self.path, self.ledgers, self.checkpoints):
            p.mkdir(parents=True, exist_ok=True)
        return self

    def write_json(self, name: str, data: Mapping[str, Any]) -> Path:
        target = self.path / name
        atomic_write_text(target, json.dumps(data, indent=2, sort_keys=False, default=str) + "\n")
        if name == CONFIG_FILE:
            self.close_tracking()
            self.tracking = RunTracking(self.path, data, atomic_write_text)
        elif name == SUMMARY_FILE:
            self.close_tracking()
        return target

    def append_metrics(self, row: Mapping[str, Any]) -> None:
        with open(self.path / METRICS_FILE, "a") as fh:
            fh.write(json.dumps(row, default=str) + "\n")
            fh.flush()
            os.fsync(fh.fileno())
        # only now, with the row durable in metrics.jsonl: TensorBoard, metrics.csv, the tracker (never raise)
        if self.tracking is None:
            self.tracking = RunTracking(self.path, read_config(self.path), atomic_write_text)
        self.tracking.round(row)

    def close_tracking(self) -> None:
        """Flush and close TensorBoard and the tracker (done when summary.json is written)."""
        if self.tracking is not None:
            self.tracking.close()
            self.tracking = None

    def read_metrics(self) -> list[dict]:
        """The rows written so far, read by the one run-directory reader (torn lines skipped)."""
        return read_metrics(self.path)

    def save_checkpoint(self, server_round: int, state_dict: Mapping[str, torch.Tensor],
                        server_state: Mapping[str, Any]) -> None:
        """Global model and server state after a round: enough to resume from it."""
        model_path = self.checkpoints / f"round-{server_round:04d}.pt"
        tmp = model_path.with_suffix(".pt.tmp")
        torch.save(dict(state_dict), tmp)
        os.replace(tmp, model_path)
        self.write_json(f"checkpoints/round-{server_round:04d}.json", {"round": server_round, **server_state})
        # keep the newest two model checkpoints: enough to resume, without filling the disk
        for old in sorted(self.checkpoints.glob("round-*.pt"))[:-2]:
            old.unlink(missing_ok=True)

    def latest_checkpoint(self) -> tuple[int, dict[str, torch.Tensor], dict[str, Any]] | None:
        models = sorted(self.checkpoints.glob("round-*.pt"))
        for model_path in reversed(models):
            state_path = model_path.with_suffix(".json")
            if state_path.exists():
                state = json.loads(state_path.read_text())
                return int(state["round"]), torch.load(model_path, weights_only=True), state
        return None

    def save_model(self, state_dict: Mapping[str, torch.Tensor]) -> Path:
        target = self.path / "model.pt"
        tmp = target.with_suffix(".pt.tmp")
        torch.save(dict(state_dict), tmp)
        os.replace(tmp, target)
        return target
