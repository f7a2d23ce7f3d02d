"""Tracking: TensorBoard and metrics.csv equal metrics.jsonl, config.json's environment, the tracker hook."""

from __future__ import annotations

import csv
import json
import logging
import sys
from pathlib import Path

import pytest
import torch
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

from dpfl.privacy.policy import NOT_PRIVATE_STAMP
from dpfl.privacy.rundata import read_metrics, run_config_values
from dpfl.server.rundir import RunDirectory
from dpfl.server.tracking import TRACKED_KEYS, tracked_row
from dpfl.simulations.config import ConfigError, resolve, run_config_of
from dpfl.simulations.engines.simulate import simulate

BASE = {"dataset": "digits", "model": "mlp", "num-clients": 3, "num-server-rounds": 2, "batch-size": 32,
        "local-epochs": 1, "learning-rate": 0.1, "noise-multiplier": 1.0, "workers": 1, "delta": 1e-5,
        "target-epsilon": 0.0}
HOOK = '''
import json
from pathlib import Path


class Hook:
    def __init__(self, run_dir, params):
        self.out, self.fail = Path(run_dir) / "hook.jsonl", params.get("fail-round", -1)
        with open(self.out, "a") as fh:
            fh.write(json.dumps({"params": dict(params)}) + "\\n")

    def round(self, row):
        if row["round"] == self.fail:
            raise RuntimeError("tracker down")
        with open(self.out, "a") as fh:
            fh.write(json.dumps({"row": dict(row)}) + "\\n")

    def close(self):
        with open(self.out, "a") as fh:
            fh.write(json.dumps({"closed": True}) + "\\n")


def make(run_dir, params):
    return Hook(run_dir, params)


def broken(run_dir, params):
    raise ValueError("no tracking server")
'''


@pytest.fixture(scope="module")
def hook_module(tmp_path_factory: pytest.TempPathFactory) -> str:
    where = tmp_path_factory.mktemp("hook")
    (where / "dpfl_test_hook.py").write_text(HOOK)
    sys.path.insert(0, str(where))
    yield "dpfl_test_hook"
    sys.path.remove(str(where))
    sys.modules.pop("dpfl_test_hook", None)


@pytest.fixture(scope="module")
def run(tmp_path_factory: pytest.TempPathFactory, hook_module: str) -> tuple[Path, dict]:
    root = tmp_path_factory.mktemp("tracking")
    cfg = resolve({**BASE, "run-dir": str(root), "run-name": "r", "tracker": f"{hook_module}:make"})
    out = simulate(cfg, run_path=root / "r")
    return out.run_path, cfg.as_dict()


def hook_lines(path: Path) -> list[dict]:
    return [json.loads(line) for line in (path / "hook.jsonl").read_text().splitlines()]


def scalars(path: Path) -> dict[str, dict[int, float]]:
    acc = EventAccumulator(str(path / "tensorboard"))
    acc.Reload()
    return {tag: {e.step: e.value for e in acc.Scalars(tag)} for tag in acc.Tags()["scalars"]}


def csv_rows(path: Path) -> list[dict[str, str]]:
    with open(path / "metrics.csv", newline="") as fh:
        return list(csv.DictReader(fh))


def cell(value: object) -> str:
    return "" if value is None else str(value)


def test_tensorboard_scalars_equal_metrics_jsonl(run: tuple[Path, dict]) -> None:
    path, _ = run
    rows, tb = read_metrics(path), scalars(path)
    assert len(list((path / "tensorboard").glob("events.out.tfevents.*"))) == 1
    assert [r["round"] for r in rows] == [1, 2] and sorted(tb["accuracy"]) == [1, 2]
    for row in rows:
        step = row["round"]
        assert tb["accuracy"][step] == pytest.approx(row["accuracy"], rel=1e-6)  # float32 in the event file
        assert tb["loss"][step] == pytest.approx(row["loss"], rel=1e-6)
        assert tb["epsilon/max"][step] == pytest.approx(row["epsilon_max"], rel=1e-6)
        assert len(row["epsilon"]) == 3
        for client, eps in row["epsilon"].items():
            assert tb[f"epsilon/{client}"][step] == pytest.approx(eps, rel=1e-6)
            assert tb[f"sigma/{client}"][step] == pytest.approx(1.0)  # noise-multiplier, not calibrated
        assert tb["participants"][step] == row["participants"] == 3
        assert tb["seconds"][step] == pytest.approx(row["seconds"], rel=1e-6)
    assert tb["sigma/min"] == {1: pytest.approx(1.0), 2: pytest.approx(1.0)}


def test_metrics_csv_rows_equal_metrics_jsonl(run: tuple[Path, dict]) -> None:
    path, _ = run
    rows, table = read_metrics(path), csv_rows(path)
    clients = sorted(rows[-1]["epsilon"])
    assert list(table[0]) == ["round", "accuracy", "loss", "epsilon_max", "delta", "participants", "seconds",
                              *(f"epsilon/{c}" for c in clients)]  # no privacy column: the run is private
    assert len(table) == len(rows)
    for line, row in zip(table, rows, strict=True):
        for key in ("round", "accuracy", "loss", "epsilon_max", "delta", "participants", "seconds"):
            assert line[key] == cell(row[key])
            assert float(line[key]) == row[key]  # exact: floats are written in their shortest round-trip form
        assert {c: float(line[f"epsilon/{c}"]) for c in clients} == row["epsilon"]


def test_config_json_records_the_environment(run: tuple[Path, dict]) -> None:
    path, _ = run
    env = json.loads((path / "config.json").read_text())["environment"]
    assert env["torch"] == torch.__version__
    assert env["python"] == ".".join(map(str, sys.version_info[:3]))
    for key in ("dpfl", "opacus", "flwr", "dp-accounting"):
        assert isinstance(env[key], str) and env[key]
    assert env["git-revision"] is None or len(env["git-revision"]) == 40
    assert env["device"] == "cpu" or not env["device"].startswith("cpu")
    assert env["cpu-count"] >= 1 and env["machine"] and env["platform"]


def test_config_json_with_environment_reads_back_as_the_run_config(run: tuple[Path, dict]) -> None:
    path, values = run
    raw = json.loads((path / "config.json").read_text())
    assert {"environment", "resolved", "privacy-statement"} <= set(raw)
    with pytest.raises(ConfigError, match="unknown config key 'resolved'"):
        resolve(raw)  # why readers strip the keys the server adds
    assert set(run_config_values(raw)) == set(values)
    assert run_config_of(path).as_dict() == values


def test_the_tracker_hook_gets_the_guaranteed_values_and_never_the_events(run: tuple[Path, dict]) -> None:
    path, values = run
    lines = hook_lines(path)
    assert lines[0]["params"]["tracker"] == values["tracker"] and "environment" not in lines[0]["params"]
    assert lines[-1] == {"closed": True}
    got, rows = [line["row"] for line in lines[1:-1]], read_metrics(path)
    assert len(got) == len(rows) == 2
    for seen, row in zip(got, rows, strict=True):
        assert set(seen) == set(TRACKED_KEYS)  # no events, no seconds, no stamp (a private run)
        for key in ("round", "accuracy", "loss", "epsilon_max", "epsilon", "delta", "participants"):
            assert seen[key] == row[key]
        assert seen["sigma"] == {c: pytest.approx(1.0) for c in row["epsilon"]}


class Captured(logging.Handler):
    """The dpfl.server log lines (the ServerApp turns propagation off, so caplog would see nothing)."""

    def __init__(self) -> None:
        super().__init__(logging.WARNING)
        self.lines: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.lines.append(record.getMessage())

    @property
    def text(self) -> str:
        return "\n".join(self.lines)

    def __enter__(self) -> Captured:
        logging.getLogger("dpfl.server").addHandler(self)
        return self

    def __exit__(self, *exc: object) -> None:
        logging.getLogger("dpfl.server").removeHandler(self)


def _row(n: int, epsilon: dict[str, float], **extra: object) -> dict:
    return {"round": n, "accuracy": 0.5 + n / 100, "loss": 1.0 / n, "epsilon_max": max(epsilon.values()),
            "epsilon": epsilon, "delta": 1e-5, "participants": len(epsilon), "seconds": 0.25, **extra}


def test_stamp_events_new_clients_a_failing_tracker_and_a_resume(tmp_path: Path, hook_module: str) -> None:
    events = [{"client": "c-2", "event": "declined (policy)", "reason": "secret reason text"}]
    rows = [_row(1, {"c-1": 0.5}, events=events, privacy=NOT_PRIVATE_STAMP),
            _row(2, {"c-1": 0.7, "c-2": 0.4}, events=[], privacy=NOT_PRIVATE_STAMP),
            _row(3, {"c-1": 0.9, "c-2": 0.6}, events=[], privacy=NOT_PRIVATE_STAMP)]
    rundir = RunDirectory(tmp_path / "run").create()
    rundir.write_json("config.json", {"tracker": f"{hook_module}:make", "fail-round": 3})
    with Captured() as log:
        for row in rows[:2]:
            rundir.append_metrics(row)
        resumed = RunDirectory(rundir.path)  # a new process: config.json is read back from disk
        resumed.append_metrics(rows[2])
        resumed.write_json("summary.json", {})
    assert "tracker 'dpfl_test_hook:make' failed (RuntimeError: tracker down)" in log.text
    assert [r["round"] for r in read_metrics(rundir.path)] == [1, 2, 3]  # the jsonl lost nothing
    lines = hook_lines(rundir.path)
    seen = [line["row"] for line in lines if "row" in line]
    assert [r["round"] for r in seen] == [1, 2]  # round 3 raised: off, and not closed
    assert len([line for line in lines if "params" in line]) == 2 and {"closed": True} not in lines
    assert "secret reason text" not in (rundir.path / "hook.jsonl").read_text()
    assert all(r["privacy"] == NOT_PRIVATE_STAMP and "events" not in r and "seconds" not in r for r in seen)
    assert seen[0] == tracked_row(rows[0], {})
    table = csv_rows(rundir.path)  # rewritten when c-2 appeared, rebuilt in the second process
    assert list(table[0])[7:] == ["privacy", "epsilon/c-1", "epsilon/c-2"]
    assert [r["epsilon/c-2"] for r in table] == ["", "0.4", "0.6"]
    assert {r["privacy"] for r in table} == {NOT_PRIVATE_STAMP}
    acc = EventAccumulator(str(rundir.path / "tensorboard"))
    acc.Reload()
    assert NOT_PRIVATE_STAMP in acc.Tensors("privacy/text_summary")[0].tensor_proto.string_val[0].decode()
    assert sorted(e.step for e in acc.Scalars("accuracy")) == [1, 2, 3]


def test_a_tracker_that_cannot_start_is_one_logged_line_and_the_run_goes_on(tmp_path: Path, hook_module: str) -> None:
    for spec, message in ((f"{hook_module}:broken", "the factory raised ValueError: no tracking server"),
                          ("no_such_module_here:make", "module 'no_such_module_here' does not import"),
                          (f"{hook_module}:missing", "has no attribute 'missing'")):
        rundir = RunDirectory(tmp_path / spec.replace(":", "-")).create()
        with Captured() as log:
            rundir.write_json("config.json", {"tracker": spec})
            rundir.append_metrics(_row(1, {"c-1": 0.5}))
        assert len(log.lines) == 1 and message in log.text and "the run goes on without it" in log.text
        assert len(read_metrics(rundir.path)) == 1 and len(csv_rows(rundir.path)) == 1


def test_the_tracker_key_is_checked_and_does_not_change_a_sweep_point(hook_module: str) -> None:
    from dpfl.simulations.sweeps.spec import point_id

    with pytest.raises(ConfigError, match="tracker='mlflow' is not valid"):
        resolve({"tracker": "mlflow"})
    assert point_id(resolve({"tracker": f"{hook_module}:make"}).as_dict()) == point_id(resolve({}).as_dict())
