"""Build one train instruction and a client Context by hand, to call the ClientApp directly in tests."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from flwr.app import ArrayRecord, ConfigRecord, Context, Message, RecordDict

from dpfl.models import build_model
from dpfl.privacy import wire
from dpfl.simulations.engines.inprocess import set_task_identity


def train_call(cfg: dict[str, Any], run_path: Path, *, partition_id: int = 0) -> tuple[Message, Context]:
    """A round-1 train message with a fresh model, and the Context of virtual client ``partition_id``."""
    set_task_identity(1, 1)
    model = build_model(str(cfg["model"]), (1, 8, 8), 10)
    config = ConfigRecord(wire.train_config(1, 1e-5, str(run_path)))
    msg = Message(content=RecordDict({wire.ARRAYS: ArrayRecord(model.state_dict()), wire.CONFIG: config}),
                  message_type="train", dst_node_id=5)
    ctx = Context(run_id=1, node_id=5, state=RecordDict(), run_config=cfg,
                  node_config={"partition-id": partition_id, "num-partitions": int(cfg["num-clients"])})
    return msg, ctx
