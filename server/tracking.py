"""Each round's metrics row, once it is in metrics.jsonl, to TensorBoard, metrics.csv and the user's own tracker.

``RunDirectory.append_metrics`` writes metrics.jsonl first (fsynced) and then hands the row to
``RunTracking.round``. Nothing here may lose or delay a ledger line or a metrics line: every sink that fails
logs one warning and is switched off for the rest of the run, and no exception leaves this module.

- ``<run-dir>/tensorboard/``: event files written through ``torch.utils.tensorboard.SummaryWriter``:
  ``accuracy``, ``loss``, ``epsilon/<client>``, ``epsilon/max``, ``sigma/<client>`` and ``sigma/min``
  (the noise multipliers charged this round, from the row or the server's ledgers), ``participants``,
  ``seconds``, and a ``privacy`` text when the run is NOT PRIVATE.
- ``<run-dir>/metrics.csv``: one row per round, the columns of ``CSV_HEAD``, ``privacy`` when the rows
  carry the stamp, then ``epsilon/<client>`` for every client (rewritten whole when a client appears).
- ``tracker = "package.module:factory"`` (docs/tracking.md): ``factory(run_dir, params)`` returns a
  ``Tracker``; it receives only what the guarantee covers (``TRACKED_KEYS``, never the events' text).
"""

from __future__ import annotations

import csv
import importlib
import io
import json
import logging
import math
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any, Protocol, runtime_checkable

from dpfl.privacy.rundata import LEDGER_DIR, SERVER_LEDGER, natural_key, read_metrics, run_config_values

log = logging.getLogger("dpfl.server")

CSV_FILE, TENSORBOARD_DIR = "metrics.csv", "tensorboard"
CSV_HEAD = ("round", "accuracy", "loss", "epsilon_max", "delta", "participants", "seconds")
# What a user's tracker may see: outputs the (epsilon, delta) statement covers, or public accounting.
TRACKED_KEYS = ("round", "accuracy", "loss", "epsilon_max", "epsilon", "delta", "sigma", "participants",
                "user_epsilon", "user_delta", "expected_cohort")  # user_*: privacy-unit = client (no cohort size)
SIGMA_MECHANISMS = ("dp-sgd", "gaussian", "gaussian-fixed-cohort")  # a client's DP-SGD, the server's user level
_LEDGER_TAIL_BYTES = 1 << 16  # a ledger line is ~400 bytes: the last 64 KiB hold this round's entry


@runtime_checkable
class Tracker(Protocol):
    """A user's tracker: ``round`` once per completed round, ``close`` once at the end of the run."""

    def round(self, row: Mapping[str, Any]) -> None: ...

    def close(self) -> None: ...


class TrackerError(ValueError):
    """The ``tracker`` spec cannot be loaded; the message names the spec, the problem and the fix."""


def load_tracker(spec: str, run_dir: Path, params: Mapping[str, Any]) -> Tracker:
    """``package.module:factory`` (the module on ``sys.path``) called as ``factory(run_dir, params)``."""
    module_name, sep, attr = spec.partition(":")
    if not (sep and module_name.strip() and attr.strip()):
        raise TrackerError(f"tracker {spec!r} is not valid: expected 'package.module:factory'")
    try:
        obj: Any = importlib.import_module(module_name.strip())
    except Exception as exc:  # noqa: BLE001 - a user's module may raise anything at import time
        raise TrackerError(f"tracker {spec!r}: module {module_name.strip()!r} does not import "
                           f"({type(exc).__name__}: {exc}); put its folder on PYTHONPATH") from None
    for part in attr.strip().split("."):
        if not hasattr(obj, part):
            raise TrackerError(f"tracker {spec!r}: {module_name.strip()!r} has no attribute {attr.strip()!r}")
        obj = getattr(obj, part)
    if not callable(obj):
        raise TrackerError(f"tracker {spec!r}: {attr.strip()!r} is not callable")
    tracker = obj(run_dir, dict(params))
    if not isinstance(tracker, Tracker):
        raise TrackerError(f"tracker {spec!r}: the factory returned {type(tracker).__name__}, which lacks "
                           "round(row) and close()")
    return tracker


def tracked_row(row: Mapping[str, Any], sigma: Mapping[str, float]) -> dict[str, Any]:
    """The part of a metrics row a user's tracker gets: ``TRACKED_KEYS`` and the NOT PRIVATE stamp."""
    out: dict[str, Any] = {k: row.get(k) for k in TRACKED_KEYS if k not in ("epsilon", "sigma")}
    out["epsilon"] = {str(c): float(e) for c, e in dict(row.get("epsilon") or {}).items()}
    out["sigma"] = dict(sigma)
    if row.get("privacy"):
        out["privacy"] = str(row["privacy"])
    return out


def _number(value: Any) -> float | None:
    try:
        number = float(value)
    except (TypeError, ValueError):
        return None
    return number if math.isfinite(number) else None


def round_sigmas(row: Mapping[str, Any], ledger_dir: Path) -> dict[str, float]:
    """{client: σ} of the DP-SGD releases charged in this row's round (and ``server``: the user-level release):
    ``row["sigma"]`` when the row has it, else the last entries of the server's ledgers (``ledgers/*.jsonl``);
    {} when none is known."""
    given = row.get("sigma")
    if isinstance(given, Mapping):
        return {str(c): s for c, s in ((c, _number(v)) for c, v in given.items()) if s is not None}
    server_round, out = int(row.get("round", 0)), {}
    files = sorted(ledger_dir.glob("*.jsonl"), key=lambda p: natural_key(p.stem)) if ledger_dir.is_dir() else []
    for file in files:
        sigma = _ledger_sigma(file, server_round)
        if sigma is not None:
            out[file.stem] = sigma
    return out


def _ledger_sigma(file: Path, server_round: int) -> float | None:
    try:
        with open(file, "rb") as fh:
            fh.seek(0, 2)
            size = fh.tell()
            fh.seek(max(0, size - _LEDGER_TAIL_BYTES))
            lines = fh.read().decode("utf-8", errors="replace").splitlines()
    except OSError:
        return None
    if size > _LEDGER_TAIL_BYTES and lines:
        lines = lines[1:]  # the first line may be cut
    sigmas: list[float] = []
    for line in reversed(lines):
        try:
            entry = json.loads(line)
        except ValueError:
            continue
        if not isinstance(entry, dict) or entry.get("round") is None:
            continue
        if int(entry["round"]) < server_round:
            break
        if int(entry["round"]) == server_round and entry.get("mechanism", "dp-sgd") in SIGMA_MECHANISMS:
            sigma = _number(entry.get("noise_multiplier"))
            if sigma is not None:
                sigmas.append(sigma)
    return min(sigmas) if sigmas else None


def _cell(value: Any) -> str:
    return "" if value is None else str(value)


class CsvWriter:
    """metrics.csv beside metrics.jsonl: rebuilt from metrics.jsonl (this row is already there) on the first
    round of this process, so a resumed run keeps its earlier rounds, and whenever a new client or the stamp
    adds a column; appended to otherwise. No row is kept in memory."""

    def __init__(self, run_path: Path, atomic_write: Callable[[Path, str], None]) -> None:
        self.run_path, self.path, self.atomic_write = run_path, run_path / CSV_FILE, atomic_write
        self.columns: list[str] = []

    @staticmethod
    def columns_of(rows: list[Mapping[str, Any]]) -> list[str]:
        clients = sorted({str(c) for r in rows for c in dict(r.get("epsilon") or {})}, key=natural_key)
        stamp = ["privacy"] if any(r.get("privacy") for r in rows) else []
        return [*CSV_HEAD, *stamp, *(f"epsilon/{c}" for c in clients)]

    @staticmethod
    def cells(row: Mapping[str, Any], columns: list[str]) -> list[str]:
        eps = dict(row.get("epsilon") or {})
        return [_cell(eps.get(col[len("epsilon/"):]) if col.startswith("epsilon/") else row.get(col))
                for col in columns]

    def _text(self, rows: list[Mapping[str, Any]], header: bool) -> str:
        buf = io.StringIO()
        writer = csv.writer(buf, lineterminator="\n")
        if header:
            writer.writerow(self.columns)
        writer.writerows(self.cells(r, self.columns) for r in rows)
        return buf.getvalue()

    def write(self, row: Mapping[str, Any]) -> None:
        if self.columns and set(self.columns_of([row])) <= set(self.columns):
            with open(self.path, "a", newline="") as fh:
                fh.write(self._text([row], header=False))
            return
        rows = read_metrics(self.run_path)
        self.columns = self.columns_of([*rows, row])
        self.atomic_write(self.path, self._text(rows, header=True))


class TensorBoardWriter:
    """The scalars of each round under ``<run-dir>/tensorboard/``; torch's SummaryWriter is made (and
    tensorboard imported, ~2 s) at the first round."""

    def __init__(self, run_path: Path) -> None:
        self.log_dir = run_path / TENSORBOARD_DIR
        self.writer: Any = None
        self.stamped = False

    def write(self, row: Mapping[str, Any], sigma: Mapping[str, float]) -> None:
        if self.writer is None:
            from torch.utils.tensorboard import SummaryWriter  # needs the tensorboard package

            self.writer = SummaryWriter(log_dir=str(self.log_dir))
        step = int(row["round"])
        scalars: dict[str, float | None] = {
            "accuracy": _number(row.get("accuracy")), "loss": _number(row.get("loss")),
            "epsilon/max": _number(row.get("epsilon_max")), "participants": _number(row.get("participants")),
            "seconds": _number(row.get("seconds")),
            "epsilon/user-level": _number(row.get("user_epsilon")), "clip-norm": _number(row.get("clip_norm")),
            "sigma/user-level": sigma.get(SERVER_LEDGER),  # ledgers/server.jsonl: the server's own release
        }
        clients = {c: v for c, v in sigma.items() if c != SERVER_LEDGER}
        scalars["sigma/min"] = min(clients.values()) if clients else None
        scalars.update({f"epsilon/{c}": _number(e) for c, e in dict(row.get("epsilon") or {}).items()})
        scalars.update({f"sigma/{c}": v for c, v in clients.items()})
        for tag, value in scalars.items():
            if value is not None:
                self.writer.add_scalar(tag, value, step)
        if row.get("privacy") and not self.stamped:
            self.writer.add_text("privacy", str(row["privacy"]), step)
            self.stamped = True
        self.writer.flush()

    def close(self) -> None:
        if self.writer is not None:
            self.writer.close()


class RunTracking:
    """TensorBoard, metrics.csv and the configured tracker of one run directory; never raises."""

    def __init__(self, run_path: Path, config: Mapping[str, Any] | None,
                 atomic_write: Callable[[Path, str], None]) -> None:
        self.run_path = run_path
        self.sinks: dict[str, Any] = {"metrics.csv": CsvWriter(run_path, atomic_write),
                                      "TensorBoard": TensorBoardWriter(run_path)}
        spec = str((config or {}).get("tracker") or "")
        if spec:
            try:
                self.sinks[f"tracker {spec!r}"] = load_tracker(spec, run_path, run_config_values(dict(config or {})))
            except Exception as exc:  # noqa: BLE001 - a user's tracker must never stop the run
                log.error("%s; the run goes on without it (metrics.jsonl, metrics.csv and TensorBoard are "
                          "still written)", exc if isinstance(exc, TrackerError) else
                          f"tracker {spec!r}: the factory raised {type(exc).__name__}: {exc}")

    def _off(self, name: str, exc: BaseException) -> None:
        self.sinks.pop(name, None)
        log.warning("%s failed (%s: %s) and is off for the rest of this run; metrics.jsonl and the ledgers "
                    "are unaffected", name, type(exc).__name__, exc)

    def round(self, row: Mapping[str, Any]) -> None:
        try:
            sigma = round_sigmas(row, self.run_path / LEDGER_DIR)
        except Exception:  # noqa: BLE001 - σ is shown when known; never a reason to fail
            sigma = {}
        for name, sink in list(self.sinks.items()):
            try:
                if isinstance(sink, CsvWriter):
                    sink.write(row)
                elif isinstance(sink, TensorBoardWriter):
                    sink.write(row, sigma)
                else:
                    sink.round(tracked_row(row, sigma))
            except Exception as exc:  # noqa: BLE001 - tracking never costs a round
                self._off(name, exc)

    def close(self) -> None:
        for name, sink in list(self.sinks.items()):
            try:
                if not isinstance(sink, CsvWriter):
                    sink.close()
            except Exception as exc:  # noqa: BLE001
                self._off(name, exc)
        self.sinks = {}
