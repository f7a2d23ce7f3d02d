"""Early stopping that stays honest: on a server-held validation split, never on the clients' private data.

The validation split is a fixed part of the server's own held-out data (``server-validation-fraction`` of it, by a
permutation with a fixed seed), disjoint from the records the reported test accuracy is measured on. Judging the
released global models on it is post-processing of what the clients already released, so it costs no epsilon;
stopping only ends the run: every round already run keeps its ledger entries exactly as promised (sigma was
calibrated for ``num-server-rounds``, so the run ends below its target), and rounds never started are never
charged. The released model is the one with the best validation accuracy, kept in ``checkpoints/best.pt`` so a
resumed run keeps it too.
"""

from __future__ import annotations

import math
import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import torch
from flwr.app import ArrayRecord

VALIDATION_SPLIT_SEED = 20261207
BEST_MODEL = "checkpoints/best.pt"


def validation_split(n: int, fraction: float) -> tuple[torch.Tensor, torch.Tensor]:
    """(validation indices, test indices) of the server's n held-out records: a fixed, public permutation."""
    k = int(round(n * fraction))
    order = torch.randperm(n, generator=torch.Generator().manual_seed(VALIDATION_SPLIT_SEED))
    return order[:k].sort().values, order[k:].sort().values


class EarlyStopping:
    """Tracks the best validation accuracy; says when ``patience`` rounds have not improved on it."""

    def __init__(self, patience: int, run_path: Path) -> None:
        self.patience = patience
        self.path = run_path / BEST_MODEL
        self.best_accuracy = -math.inf
        self.best_round = 0
        self.best_arrays: ArrayRecord | None = None

    def restore(self, history: Sequence[Mapping[str, Any]]) -> None:
        """A resumed run: the best round from metrics.jsonl, its model from checkpoints/best.pt."""
        for row in history:
            acc = row.get("validation_accuracy")
            if isinstance(acc, int | float) and acc > self.best_accuracy:
                self.best_accuracy, self.best_round = float(acc), int(row["round"])
        if self.best_round and self.path.exists():
            saved = torch.load(self.path, weights_only=True)
            if isinstance(saved, dict) and saved.get("round") == self.best_round:  # else it lags: not used
                self.best_arrays = ArrayRecord(saved["model"])

    def observe(self, server_round: int, accuracy: float, released: ArrayRecord) -> str:
        """Record this round's validation accuracy; the stop reason once patience has run out, else ""."""
        if accuracy > self.best_accuracy:
            self.best_accuracy, self.best_round, self.best_arrays = accuracy, server_round, released
            tmp = self.path.with_suffix(".pt.tmp")
            self.path.parent.mkdir(parents=True, exist_ok=True)
            torch.save({"round": server_round, "model": dict(released.to_torch_state_dict())}, tmp)
            os.replace(tmp, self.path)
            return ""
        if server_round - self.best_round >= self.patience:
            return (f"early stopping after round {server_round}: validation accuracy has not improved on "
                    f"{self.best_accuracy:.4f} (round {self.best_round}) for {self.patience} round(s); the released "
                    f"model is round {self.best_round}'s, and no later round was run or charged")
        return ""
