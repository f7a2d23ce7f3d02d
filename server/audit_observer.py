"""What a white-box auditor sees: every released update at the audit's canary coordinates, round by round.

Under record-level DP a client's release is its model update (the reply, after the server's checks); under
user-level DP it is the server's noised mean update. The auditor of a privacy audit (simulations/audit) is the
server: it keeps, for each release, the update's values at every canary coordinate (not only the coordinates of
the releasing client's own canaries: the other clients' values there are the auditor's control for the gradient
the real records put on that coordinate). It never sees which canaries were included.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np


class ReleaseObserver:
    """Collects (round, source, values at the canary coordinates) for every release the server sees."""

    def __init__(self, coordinates: Sequence[tuple[str, int]]) -> None:
        self.coordinates = list(coordinates)
        self.rounds: list[int] = []
        self.sources: list[str] = []
        self.values: list[np.ndarray] = []

    def observe(self, server_round: int, source: str, keys: Sequence[str], sent: Sequence[np.ndarray],
                released: Sequence[np.ndarray]) -> None:
        """Record ``released - sent`` at every canary coordinate (arrays in ``keys`` order)."""
        index = {key: i for i, key in enumerate(keys)}
        row = np.empty(len(self.coordinates), dtype=np.float64)
        for k, (name, flat) in enumerate(self.coordinates):
            i = index[name]
            row[k] = float(np.asarray(released[i]).reshape(-1)[flat]) - float(np.asarray(sent[i]).reshape(-1)[flat])
        self.rounds.append(int(server_round))
        self.sources.append(str(source))
        self.values.append(row)

    def write(self, path: Path) -> Path:
        """``observations.npz``: values (releases x canaries), rounds, sources."""
        path.parent.mkdir(parents=True, exist_ok=True)
        values = np.stack(self.values) if self.values else np.zeros((0, len(self.coordinates)))
        tmp = path.with_name(f".{path.name}.tmp.npz")
        np.savez(tmp, values=values, rounds=np.asarray(self.rounds, dtype=np.int64),
                 sources=np.asarray(self.sources, dtype=str))
        tmp.replace(path)
        return path
