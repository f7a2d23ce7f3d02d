"""An audit's canaries and their secret coins, written before the run and read by the clients and the auditor.

``audit/canaries.json`` (in the run directory) is public to the auditor (the server): the kind, and for each
canary its owner (the client that would hold it) and what it is: a coordinate of the model (gradient canaries)
or a record of the public test split with a label drawn at random among the wrong ones (input canaries).
``audit/coins.json`` holds each canary's fair coin, drawn from the OS's CSPRNG: only the clients' loaders read
it (each takes its own included canaries) until the run has ended and the auditor scores. Canaries are dealt
to the clients in turn, so each client holds about m / clients of them.
"""

from __future__ import annotations

import json
import secrets
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

AUDIT_DIR = "audit"  # inside the run directory; the run config's audit-plan names it
CANARIES_FILE = "canaries.json"
COINS_FILE = "coins.json"
KINDS = ("gradient", "input")


class AuditPlanError(ValueError):
    """The audit's plan files are missing or malformed; the message names the file and the problem."""


@dataclass(frozen=True)
class Canary:
    owner: str
    param: str = ""  # gradient: parameter name
    index: int = -1  # gradient: flat index in it; input: index in the test split
    label: int = -1  # input: the canary's (wrong) label

    def as_dict(self) -> dict[str, Any]:
        return {"owner": self.owner, "param": self.param, "index": self.index, "label": self.label}


@dataclass(frozen=True)
class AuditPlan:
    kind: str
    canaries: tuple[Canary, ...]
    included: tuple[bool, ...] | None  # None: the coins were not read (the server's view)

    def coordinates(self) -> list[tuple[str, int]]:
        return [(c.param, c.index) for c in self.canaries]

    def included_for(self, client_id: str) -> list[Canary]:
        if self.included is None:
            raise AuditPlanError("the coins were not read")
        return [c for c, inside in zip(self.canaries, self.included, strict=True) if inside and c.owner == client_id]


def _rng() -> np.random.Generator:
    return np.random.default_rng(secrets.randbits(128))


def gradient_canaries(owners: list[str], m: int, parameters: list[tuple[str, int]]) -> list[Canary]:
    """m distinct coordinates drawn uniformly from the model's trainable parameters ((name, size) pairs)."""
    total = sum(size for _, size in parameters)
    if m > total:
        raise AuditPlanError(f"--canaries {m} needs {m} distinct coordinates but the model has {total} parameters")
    flat = np.sort(_rng().choice(total, size=m, replace=False))
    starts = np.cumsum([0] + [size for _, size in parameters])
    out = []
    for k, f in enumerate(flat.tolist()):
        i = int(np.searchsorted(starts, f, side="right") - 1)
        out.append(Canary(owner=owners[k % len(owners)], param=parameters[i][0], index=int(f - starts[i])))
    return out


def input_canaries(owners: list[str], m: int, test_size: int, num_classes: int, test_labels: np.ndarray
                   ) -> list[Canary]:
    """m distinct test records, each with a label drawn uniformly among the classes it does not have."""
    if m > test_size:
        raise AuditPlanError(f"--canaries {m} input canaries need {m} test records but the test split has "
                             f"{test_size}")
    rng = _rng()
    picks = rng.choice(test_size, size=m, replace=False)
    out = []
    for k, idx in enumerate(picks.tolist()):
        wrong = (int(test_labels[idx]) + 1 + int(rng.integers(num_classes - 1))) % num_classes
        out.append(Canary(owner=owners[k % len(owners)], index=int(idx), label=wrong))
    return out


def write_plan(audit_dir: Path, kind: str, canaries: list[Canary]) -> AuditPlan:
    """Draw the coins and write both files into ``audit_dir``; returns the plan with its coins."""
    included = tuple(bool(b) for b in (_rng().random(len(canaries)) < 0.5))
    audit_dir.mkdir(parents=True, exist_ok=True)
    (audit_dir / CANARIES_FILE).write_text(json.dumps({"kind": kind, "canaries": [c.as_dict() for c in canaries]}),
                                          encoding="utf-8")
    (audit_dir / COINS_FILE).write_text(json.dumps({"included": list(included)}), encoding="utf-8")
    return AuditPlan(kind, tuple(canaries), included)


def _load(path: Path) -> Any:
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise AuditPlanError(f"{path} is missing: run the audit with `dpfl audit`") from None
    except (OSError, ValueError) as exc:
        raise AuditPlanError(f"{path} cannot be read: {exc}") from None


def read_plan(audit_dir: Path, *, coins: bool) -> AuditPlan:
    """The plan in ``audit_dir``, checked; with ``coins`` also the secret coins."""
    raw = _load(audit_dir / CANARIES_FILE)
    if not isinstance(raw, dict) or raw.get("kind") not in KINDS or not isinstance(raw.get("canaries"), list):
        raise AuditPlanError(f"{audit_dir / CANARIES_FILE}: expected {{'kind': one of {KINDS}, 'canaries': [...]}}")
    try:
        canaries = tuple(Canary(owner=str(c["owner"]), param=str(c["param"]), index=int(c["index"]),
                                label=int(c["label"])) for c in raw["canaries"])
    except (KeyError, TypeError, ValueError) as exc:
        raise AuditPlanError(f"{audit_dir / CANARIES_FILE}: a canary is malformed ({exc})") from None
    included = None
    if coins:
        got = _load(audit_dir / COINS_FILE)
        flags = got.get("included") if isinstance(got, dict) else None
        if not isinstance(flags, list) or len(flags) != len(canaries) or not all(isinstance(b, bool) for b in flags):
            raise AuditPlanError(f"{audit_dir / COINS_FILE}: expected one true/false coin per canary "
                                 f"({len(canaries)})")
        included = tuple(flags)
    return AuditPlan(str(raw["kind"]), canaries, included)
