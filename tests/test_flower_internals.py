"""The in-process engine relies on one Flower internal; fail loudly if it moves."""

from __future__ import annotations

import flwr


def test_flower_version_is_pinned_minor() -> None:
    assert flwr.__version__.startswith("1.42."), "simulations/engines/inprocess.py was verified against flwr 1.42 only"


def test_task_identity_is_where_the_engine_expects_it() -> None:
    from flwr.app import Message, RecordDict
    from flwr.supercore.task_identity import TaskIdentity

    TaskIdentity.run_id, TaskIdentity.node_id, TaskIdentity.task_id = 7, 1, 1
    msg = Message(content=RecordDict(), message_type="train", dst_node_id=5)
    assert msg.metadata.run_id == 7 and msg.metadata.src_node_id == 1
