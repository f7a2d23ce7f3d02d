"""A client's last update, kept beside its ledger so that a round it already paid for is re-sent, not re-trained.

When a server run is killed after a client paid for round r (its ledger entry is written before the update
leaves) but before the server completed that round, the resumed server asks for round r again. Training
again would be a second release of the same records, so the client re-sends the update it paid for. The
update is written *before* the ledger entry: a kill between the two leaves an update that never left
(harmless, overwritten next round); a kill after both leaves exactly what is needed. The update is DP output
already (clipped and noised); keeping it on the owner's own disk discloses nothing new.

It is re-sent only for the same run, the same round and the same global model it was trained from; in any
other case the client refuses that round rather than pay twice or send an update for another model.
"""

from __future__ import annotations

import hashlib
import os
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

UPDATE_SUFFIX = ".last-update.pt"


@dataclass(frozen=True)
class StoredUpdate:
    """The reply a client sent (or was about to send) for one round of one run."""

    run: str
    server_round: int
    model_digest: str  # SHA-256 of the global model the update was trained from
    arrays: dict[str, torch.Tensor]
    metrics: dict[str, float | int]
    release: dict[str, Any]


def update_path(ledger_file: Path) -> Path:
    """Where the last update of the client owning ``ledger_file`` lives: next to that ledger."""
    return ledger_file.with_name(ledger_file.name.removesuffix(".jsonl") + UPDATE_SUFFIX)


def model_digest(state_dict: Mapping[str, torch.Tensor]) -> str:
    """A digest of a model's keys, dtypes, shapes and values: the same model gives the same digest."""
    h = hashlib.sha256()
    for key in sorted(state_dict):
        t = state_dict[key].detach().to("cpu").contiguous()
        h.update(f"{key}|{t.dtype}|{tuple(t.shape)}|".encode())
        h.update(t.numpy().tobytes() if t.dtype != torch.bfloat16 else t.float().numpy().tobytes())
    return h.hexdigest()


def store_update(path: Path, update: StoredUpdate) -> None:
    """Write ``update`` durably (temp file, fsync, rename): the previous round's update is replaced."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    payload = {"run": update.run, "round": update.server_round, "model": update.model_digest,
               "arrays": {k: v.detach().to("cpu") for k, v in update.arrays.items()},
               "metrics": dict(update.metrics), "release": dict(update.release)}
    with open(tmp, "wb") as fh:
        torch.save(payload, fh)
        fh.flush()
        os.fsync(fh.fileno())
    os.replace(tmp, path)


def load_update(path: Path, run: str, server_round: int, digest: str) -> StoredUpdate | None:
    """The stored update for exactly this run, round and global model; None when there is none (or it is
    unreadable, or for something else: the caller then refuses the round, it never trains twice)."""
    try:
        payload = torch.load(path, weights_only=True)
    except (OSError, RuntimeError, EOFError, ValueError):
        return None
    if not isinstance(payload, dict) or payload.get("run") != run or payload.get("round") != server_round \
            or payload.get("model") != digest:
        return None
    arrays, metrics, release = payload.get("arrays"), payload.get("metrics"), payload.get("release")
    if not (isinstance(arrays, dict) and isinstance(metrics, dict) and isinstance(release, dict)
            and all(isinstance(v, torch.Tensor) for v in arrays.values())):
        return None
    return StoredUpdate(run, server_round, digest, arrays, metrics, release)
