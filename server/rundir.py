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
from dataclasses import dataclass
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


CHECKPOINT_FORMAT = 2  # model + post-processing tensors in .pt; roster, RNG and ledger heads in .json


@dataclass(frozen=True)
class Checkpoint:
    """One complete checkpoint: after ``round``, the training iterate ``model``, the post-processing
    ``tensors`` and the JSON ``state``; ``path`` is its .pt file."""

    round: int
    model: dict[str, torch.Tensor]
    tensors: dict[str, Any]
    state: dict[str, Any]
    path: Path


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
                        tensors: Mapping[str, list[torch.Tensor] | None], server_state: Mapping[str, Any]) -> None:
        """Everything needed to resume after ``server_round``: the training iterate, the post-processing
        tensors (server momentum, EMA), and the JSON state (roster, RNG, ledger heads). The .pt file first,
        then the .json: a checkpoint counts only once both are complete."""
        model_path = self.checkpoints / f"round-{server_round:04d}.pt"
        tmp = model_path.with_suffix(".pt.tmp")
        torch.save({"model": dict(state_dict), **{k: v for k, v in tensors.items()}}, tmp)
        os.replace(tmp, model_path)
        self.write_json(f"checkpoints/round-{server_round:04d}.json",
                        {"round": server_round, "format": CHECKPOINT_FORMAT, **server_state})
        # keep the newest two model checkpoints: enough to resume, without filling the disk
        for old in sorted(self.checkpoints.glob("round-*.pt"))[:-2]:
            old.unlink(missing_ok=True)

    def latest_checkpoint(self) -> Checkpoint | None:
        """The newest checkpoint whose two files are complete and readable, or None."""
        for model_path in sorted(self.checkpoints.glob("round-*.pt"), reverse=True):
            state_path = model_path.with_suffix(".json")
            try:
                state = json.loads(state_path.read_text())
                payload = torch.load(model_path, weights_only=True)
            except (OSError, ValueError, RuntimeError, EOFError):
                continue  # torn by the kill: the one before it is complete
            if not isinstance(state, dict) or state.get("format") != CHECKPOINT_FORMAT \
                    or not isinstance(payload, dict) or not isinstance(payload.get("model"), dict):
                continue
            tensors = {k: v for k, v in payload.items() if k != "model"}
            return Checkpoint(int(state["round"]), payload["model"], tensors, state, model_path)
        return None

    def truncate_metrics(self, last_round: int) -> int:
        """Keep the metrics rows of rounds 1..``last_round`` (atomically); how many rows were dropped."""
        path = self.path / METRICS_FILE
        if not path.exists():
            return 0
        lines = [x for x in path.read_text().splitlines() if x.strip()]
        kept = []
        for line in lines:
            try:
                row = json.loads(line)
            except json.JSONDecodeError:
                continue  # a torn last line
            if isinstance(row, dict) and isinstance(row.get("round"), int) and row["round"] <= last_round:
                kept.append(line)
        atomic_write_text(path, "".join(x + "\n" for x in kept))
        return len(lines) - len(kept)

    def save_model(self, state_dict: Mapping[str, torch.Tensor]) -> Path:
        target = self.path / "model.pt"
        tmp = target.with_suffix(".pt.tmp")
        torch.save(dict(state_dict), tmp)
        os.replace(tmp, target)
        return target
