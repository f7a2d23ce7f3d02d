"""The one reader of a run directory (the contract in docs/architecture.md), trusting none of its files.

Report, CLI, engines, sweeps and benchmarks all read ``config.json``, ``summary.json``, ``metrics.jsonl``
and the ledgers through here: the server's (``ledgers/``) and the clients' own (listed in
``client-ledgers.json``, else ``client-state/``; these may hold earlier runs on the same records). A report
is most needed when a run went wrong, so a missing summary, a torn last metrics line or an unreadable
ledger becomes a warning instead of an exception.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from dpfl.privacy.ledger import Ledger, LedgerError
from dpfl.privacy.wire import RESERVED_CLIENT_ID

CONFIG_FILE, SUMMARY_FILE, METRICS_FILE, LEDGER_DIR = "config.json", "summary.json", "metrics.jsonl", "ledgers"
SERVER_LEDGER = RESERVED_CLIENT_ID  # ledgers/server.jsonl: user-level releases; no client may be named so
CLIENT_LEDGER_INDEX, CLIENT_STATE_DIR = "client-ledgers.json", "client-state"
_LEDGER_ERRORS = (LedgerError, ValueError, KeyError, OSError, UnicodeDecodeError)


@dataclass
class RunData:
    """Everything the report is built from, as read from disk."""

    path: Path
    config: dict[str, Any]
    metrics: list[dict[str, Any]]
    summary: dict[str, Any] | None
    ledgers: dict[str, Ledger]
    warnings: list[str] = field(default_factory=list)
    client_ledgers: dict[str, Ledger] = field(default_factory=dict)  # the clients' own, all their runs
    client_ledger_paths: dict[str, Path] = field(default_factory=dict)  # where each was looked for
    user_ledger: Ledger | None = None  # ledgers/server.jsonl: the user-level releases (privacy-unit = client)

    @property
    def resolved(self) -> dict[str, Any]:
        return dict(self.config.get("resolved") or {})


def natural_key(text: str) -> list[Any]:
    """Sort client-2 before client-10."""
    return [int(part) if part.isdigit() else part for part in re.split(r"(\d+)", str(text))]


def _read_json(path: Path, warnings: list[str], quiet_if_missing: bool = False) -> dict[str, Any] | None:
    if not path.exists():
        if not quiet_if_missing:
            warnings.append(f"{path.name} is missing")
        return None
    try:
        data = json.loads(path.read_text())
    except json.JSONDecodeError as exc:
        warnings.append(f"{path.name} is not valid JSON ({exc.msg}); ignored")
        return None
    except (OSError, UnicodeDecodeError) as exc:
        warnings.append(f"{path.name} could not be read ({exc}); ignored")
        return None
    return data if isinstance(data, dict) else None


def _read_metrics(path: Path, warnings: list[str]) -> list[dict[str, Any]]:
    if not path.exists():
        warnings.append("metrics.jsonl is missing: no round was completed")
        return []
    rows: list[dict[str, Any]] = []
    for n, line in enumerate(path.read_text(errors="replace").splitlines(), start=1):
        if not line.strip():
            continue
        try:
            row = json.loads(line)
            if not isinstance(row, dict):
                raise ValueError("not an object")
            int(row.get("round", 0))
        except (ValueError, TypeError):  # JSONDecodeError is a ValueError
            warnings.append(f"metrics.jsonl line {n} is unreadable (torn write?); skipped")
            continue
        rows.append(row)
    return sorted(rows, key=lambda r: int(r.get("round", 0)))


def read_json_object(path: str | Path) -> dict[str, Any] | None:
    """A JSON object file beside or inside a run directory, or None when missing, unreadable or not an object."""
    return _read_json(Path(path), [], quiet_if_missing=True)


def read_summary(run_dir: str | Path) -> dict[str, Any] | None:
    """summary.json (written once, when the ServerApp finished), or None when missing or unreadable."""
    return read_json_object(Path(run_dir) / SUMMARY_FILE)


def read_config(run_dir: str | Path) -> dict[str, Any] | None:
    """config.json (the resolved run config plus ``RUN_DIRECTORY_KEYS``), or None."""
    return read_json_object(Path(run_dir) / CONFIG_FILE)


# What the server adds to config.json beside the run config: never a run-config key.
RUN_DIRECTORY_KEYS = ("resolved", "privacy-statement", "environment", "inputs")


def run_config_values(config: dict[str, Any]) -> dict[str, Any]:
    """config.json's run-config keys only (``RUN_DIRECTORY_KEYS`` dropped), ready for ``resolve``."""
    return {k: v for k, v in config.items() if k not in RUN_DIRECTORY_KEYS}


def read_metrics(run_dir: str | Path, warnings: list[str] | None = None) -> list[dict[str, Any]]:
    """metrics.jsonl rows by round; unreadable lines are skipped (and named in ``warnings``)."""
    return _read_metrics(Path(run_dir) / METRICS_FILE, [] if warnings is None else warnings)


def has_metrics(run_dir: str | Path) -> bool:
    """Whether a run directory holds rounds already (a new run must not write into it)."""
    return (Path(run_dir) / METRICS_FILE).exists()


def _client_ledger_paths(path: Path, warnings: list[str]) -> dict[str, Path]:
    """{client: its own ledger file}: client-ledgers.json when present (paths relative to the run
    directory allowed), else every client-state/<client>.jsonl."""
    index_file = path / CLIENT_LEDGER_INDEX
    if index_file.exists():
        index = _read_json(index_file, warnings)
        if index is not None:
            out: dict[str, Path] = {}
            for cid, where in index.items():
                if isinstance(where, str) and where:
                    out[str(cid)] = path / where if not Path(where).is_absolute() else Path(where)
                else:
                    warnings.append(f"{CLIENT_LEDGER_INDEX}: {cid!r} has no ledger path ({where!r}); "
                                    "its own ledger is NOT reconciled")
            return out
        warnings.append(f"{CLIENT_LEDGER_INDEX} is unusable: looking for the clients' ledgers in "
                        f"{CLIENT_STATE_DIR}/ instead")
    state = path / CLIENT_STATE_DIR
    files = sorted(state.glob("*.jsonl"), key=lambda p: natural_key(p.stem)) if state.is_dir() else []
    return {f.stem: f for f in files if not f.name.startswith(".")}


def _read_client_ledgers(paths: dict[str, Path], warnings: list[str]) -> dict[str, Ledger]:
    ledgers: dict[str, Ledger] = {}
    for cid in sorted(paths, key=natural_key):
        file = paths[cid]
        try:
            if not file.is_file():
                continue  # never written: the client released nothing on these records (yet)
            ledgers[cid] = Ledger.load(file)
        except _LEDGER_ERRORS as exc:
            warnings.append(f"client {cid}'s own ledger {file} could not be read ({exc}); it is NOT reconciled "
                            "with the server's")
    return ledgers


def load_run(run_dir: str | Path) -> RunData:
    """Read config, metrics, summary and every ledger of a run directory."""
    path = Path(run_dir)
    if not path.is_dir():
        raise FileNotFoundError(f"{path} is not a directory; pass runs/<run-id>")
    warnings: list[str] = []
    config = _read_json(path / CONFIG_FILE, warnings) or {}
    summary = _read_json(path / SUMMARY_FILE, warnings, quiet_if_missing=True)
    if summary is None:
        warnings.append("summary.json is missing or unreadable: the run did not finish (or is still "
                        "running); this report uses metrics.jsonl and the ledgers only")
    metrics = _read_metrics(path / METRICS_FILE, warnings)
    ledgers: dict[str, Ledger] = {}
    user_ledger: Ledger | None = None
    for file in sorted((path / LEDGER_DIR).glob("*.jsonl"), key=lambda p: natural_key(p.stem)):
        try:
            loaded = Ledger.load(file)
        except _LEDGER_ERRORS as exc:
            warnings.append(f"ledger {file.name} could not be read ({exc}); its "
                            f"{'user-level releases are' if file.stem == SERVER_LEDGER else 'client is'} NOT "
                            "re-checked")
            continue
        if file.stem == SERVER_LEDGER:
            user_ledger = loaded
        else:
            ledgers[file.stem] = loaded
    client_paths = _client_ledger_paths(path, warnings)
    client_ledgers = _read_client_ledgers(client_paths, warnings)
    return RunData(path=path, config=config, metrics=metrics, summary=summary, ledgers=ledgers,
                   warnings=warnings, client_ledgers=client_ledgers, client_ledger_paths=client_paths,
                   user_ledger=user_ledger)
