"""An MLflow tracker for dpfl's tracker hook (docs/tracking.md), offline: an MLflow file store in the run directory.

Use it for a run (its folder on PYTHONPATH: some installed packages ship a top-level ``examples``)::

    pip install 'dpfl[tracking]'            # or: pip install mlflow
    PYTHONPATH=examples dpfl simulate --dataset digits --model mlp --tracker mlflow_tracker:make_tracker
    mlflow ui --backend-store-uri runs/<run-id>/mlruns

or replay a finished run directory's metrics.jsonl into MLflow::

    python examples/mlflow_tracker.py runs/<run-id>

Each round logs accuracy, loss, ``epsilon/max``, ``epsilon/<client>``, ``sigma/<client>``, delta and
participants at step = round; the run config becomes MLflow params and a NOT PRIVATE run is tagged
``privacy = NOT PRIVATE ...``. The tracker gets only what the (epsilon, delta) guarantee covers: no
client events, no timings. ``DPFL_MLFLOW_TRACKING_URI`` overrides where it logs (e.g. ``sqlite:///mlflow.db``
or an MLflow server); the default is the file store ``<run-dir>/mlruns`` (MLflow 3 keeps file stores only
with ``MLFLOW_ALLOW_FILE_STORE=true``, which this example sets for that default).
"""

from __future__ import annotations

import json
import os
import sys
import time
from collections.abc import Mapping
from pathlib import Path
from typing import Any

MISSING = ("examples/mlflow_tracker.py needs mlflow, which is not installed: pip install 'dpfl[tracking]' "
           "(or pip install mlflow)")
EXPERIMENT = "dpfl"


def _mlflow() -> Any:
    try:
        import mlflow.tracking  # noqa: F401 - the optional extra [tracking]
    except ImportError:
        raise RuntimeError(MISSING) from None
    import mlflow

    return mlflow


class MlflowTracker:
    """dpfl's ``Tracker`` protocol (``round(row)``, ``close()``) over one MLflow run."""

    def __init__(self, run_dir: Path, params: Mapping[str, Any], tracking_uri: str | None = None) -> None:
        mlflow = _mlflow()
        from mlflow.entities import Param

        uri = tracking_uri or os.environ.get("DPFL_MLFLOW_TRACKING_URI") or ""
        if not uri:
            os.environ.setdefault("MLFLOW_ALLOW_FILE_STORE", "true")
            uri = (Path(run_dir).resolve() / "mlruns").as_uri()
        self.entities = mlflow.entities
        self.client = mlflow.tracking.MlflowClient(tracking_uri=uri)
        self.tracking_uri = uri
        experiment = self.client.get_experiment_by_name(EXPERIMENT)
        experiment_id = experiment.experiment_id if experiment else self.client.create_experiment(EXPERIMENT)
        self.run_id = self.client.create_run(experiment_id, run_name=Path(run_dir).name).info.run_id
        values = [Param(str(k), str(v)[:6000]) for k, v in sorted(params.items())]
        for start in range(0, len(values), 100):  # MLflow takes at most 100 params per batch
            self.client.log_batch(self.run_id, params=values[start:start + 100])
        self.stamped = False

    def round(self, row: Mapping[str, Any]) -> None:
        Metric, RunTag = self.entities.Metric, self.entities.RunTag
        step, now = int(row["round"]), int(time.time() * 1000)
        values: dict[str, Any] = {"accuracy": row.get("accuracy"), "loss": row.get("loss"),
                                  "epsilon/max": row.get("epsilon_max"), "delta": row.get("delta"),
                                  "participants": row.get("participants")}
        values.update({f"epsilon/{c}": e for c, e in dict(row.get("epsilon") or {}).items()})
        values.update({f"sigma/{c}": s for c, s in dict(row.get("sigma") or {}).items()})
        metrics = [Metric(k, float(v), now, step) for k, v in values.items() if v is not None]
        tags = []
        if row.get("privacy") and not self.stamped:
            tags, self.stamped = [RunTag("privacy", str(row["privacy"]))], True
        self.client.log_batch(self.run_id, metrics=metrics, tags=tags)

    def close(self) -> None:
        self.client.set_terminated(self.run_id)


def make_tracker(run_dir: Path, params: Mapping[str, Any]) -> MlflowTracker:
    """The factory named in ``tracker = "mlflow_tracker:make_tracker"``."""
    return MlflowTracker(run_dir, params)


def _sigmas_by_round(run_dir: Path) -> dict[int, dict[str, float]]:
    """{round: {client: σ}} from the server's ledgers (``ledgers/<client>.jsonl``), read in full."""
    out: dict[int, dict[str, float]] = {}
    for file in sorted((run_dir / "ledgers").glob("*.jsonl")):
        for line in file.read_text().splitlines():
            try:
                entry = json.loads(line)
                if entry.get("mechanism", "dp-sgd") == "dp-sgd":
                    out.setdefault(int(entry["round"]), {})[file.stem] = float(entry["noise_multiplier"])
            except (ValueError, KeyError, TypeError, AttributeError):
                continue
    return out


def replay(run_dir: Path) -> MlflowTracker:
    """Log a run directory's config.json and metrics.jsonl into MLflow, as the hook would have."""
    from dpfl.privacy.rundata import read_config, read_metrics, run_config_values
    from dpfl.server.tracking import tracked_row

    tracker = MlflowTracker(run_dir, run_config_values(read_config(run_dir) or {}))
    sigmas = _sigmas_by_round(run_dir)
    for row in read_metrics(run_dir):
        tracker.round(tracked_row(row, sigmas.get(int(row["round"]), {})))
    tracker.close()
    return tracker


def main(argv: list[str]) -> int:
    if len(argv) != 1 or not (Path(argv[0]) / "metrics.jsonl").is_file():
        print("usage: python examples/mlflow_tracker.py RUN_DIR  (a dpfl run directory with metrics.jsonl)",
              file=sys.stderr)
        return 2
    try:
        tracker = replay(Path(argv[0]))
    except RuntimeError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    print(json.dumps({"tracking_uri": tracker.tracking_uri, "run_id": tracker.run_id}))
    return 0


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
