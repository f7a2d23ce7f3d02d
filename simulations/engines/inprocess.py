"""The in-process engine: a Flower ``Grid`` that hands each Message straight to the ClientApp.

No Ray, no gRPC. With one worker the ClientApp runs in this process; with more, a pool of
one-thread worker processes (started once, reused every round, each loading the data once)
takes messages as they come, which on 2 cores beats one two-thread loop for small models.
Each virtual client's ``Context`` lives here in the driver and travels with its message, so any
worker can serve any client and ``context.state`` survives across rounds.
"""

from __future__ import annotations

import concurrent.futures as cf
import importlib
import itertools
import logging
import multiprocessing as mp
import os
import traceback
from collections.abc import Iterable, Mapping
from typing import Any

import torch
from flwr.app import Context, Error, Message, RecordDict
from flwr.clientapp import ClientApp
from flwr.serverapp import Grid
from flwr.supercore.run import Run
from flwr.supercore.task_identity import TaskIdentity

from dpfl.privacy import wire
from dpfl.simulations.engines import worker_server

log = logging.getLogger("dpfl.engine")
SERVER_NODE_ID = 1


def _load_app(ref: str) -> Any:
    module, _, attr = ref.partition(":")
    return getattr(importlib.import_module(module), attr)


def set_task_identity(run_id: int, node_id: int, task_id: int = 1) -> None:
    """Flower's runtimes set these before any Message is built; an in-process runtime must too."""
    TaskIdentity.run_id = run_id
    TaskIdentity.node_id = node_id
    TaskIdentity.task_id = task_id


_WORKER_APP: ClientApp | None = None


def _worker_init(app_ref: str, threads: int, preload_ref: str | None, run_config: dict[str, Any]) -> None:
    global _WORKER_APP
    torch.set_num_threads(threads)
    _WORKER_APP = _load_app(app_ref)
    if preload_ref:
        _load_app(preload_ref)(run_config)


def _handle(message: Message, context: Context, app_ref: str | None = None) -> tuple[Message, Context]:
    """Run one message through the ClientApp; an exception becomes an error reply, never a crash."""
    app = _WORKER_APP if app_ref is None else _load_app(app_ref)
    set_task_identity(context.run_id, context.node_id)
    try:
        reply = app(message, context)
    except Exception as exc:  # noqa: BLE001 - a failing client must not take the federation down
        where = traceback.extract_tb(exc.__traceback__)[-1]
        reason = f"client-{context.node_config.get('partition-id', '?')}: {type(exc).__name__}: {exc} " \
                 f"({os.path.basename(where.filename)}:{where.lineno})"
        reply = Message(Error(code=wire.CLIENT_FAILED, reason=reason), reply_to=message)
    return reply, context


class InProcessGrid(Grid):
    """A Grid whose nodes are virtual clients served by this process or a worker pool."""

    def __init__(self, *, client_app_ref: str, run_config: Mapping[str, Any], num_nodes: int, workers: int,
                 run_id: int = 1, node_configs: list[dict[str, Any]] | None = None,
                 worker_preload_ref: str | None = None) -> None:
        self.client_app_ref = client_app_ref
        self.worker_preload_ref = worker_preload_ref  # "module:function(run_config)" each worker calls at start
        self._run = Run.create_empty(run_id=run_id)
        self._run.override_config = dict(run_config)
        base = 10_000
        self.node_ids = [base + k for k in range(num_nodes)]
        self.contexts: dict[int, Context] = {}
        for k, node_id in enumerate(self.node_ids):
            node_config = (node_configs[k] if node_configs else {"partition-id": k, "num-partitions": num_nodes})
            self.contexts[node_id] = Context(run_id=run_id, node_id=node_id, node_config=dict(node_config),
                                             state=RecordDict(), run_config=dict(run_config))
        self.workers = max(1, workers)
        self._pool: cf.ProcessPoolExecutor | None = None
        self._warming: list[cf.Future] = []
        self._ids = itertools.count(1)
        self._inbox: dict[str, Message] = {}
        set_task_identity(run_id, SERVER_NODE_ID)

    # -- lifecycle ----------------------------------------------------------------------------
    def __enter__(self) -> InProcessGrid:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def _ensure_pool(self) -> cf.ProcessPoolExecutor | None:
        if self.workers == 1:
            return None
        if self._pool is None:
            self._pool = cf.ProcessPoolExecutor(
                max_workers=self.workers, mp_context=self._worker_context(), initializer=_worker_init,
                initargs=(self.client_app_ref, 1, self.worker_preload_ref, dict(self._run.override_config)))
        return self._pool

    def _worker_context(self) -> mp.context.BaseContext:
        """Workers forked from a fork server that has imported the apps once (simulations.engines.worker_server)."""
        refs = (self.client_app_ref, self.worker_preload_ref)
        return worker_server.context(tuple(dict.fromkeys(r.partition(":")[0] for r in refs if r)))

    def warm_up(self, *, wait: bool = True) -> None:
        """Start the workers and let each load the app (and, through it, the data) before round 1.
        With ``wait=False`` they start in the background while the caller sets up the server; the first
        round waits for them, and an error in a worker's start-up is raised there."""
        pool = self._ensure_pool()
        if pool is not None:
            self._warming = [pool.submit(_noop, i) for i in range(self.workers)]
            if wait:
                self._finish_warm_up()

    def _finish_warm_up(self) -> None:
        warming, self._warming = self._warming, []
        for fut in warming:
            fut.result()

    def release_workers(self) -> None:
        """Let the workers exit in the background once the last round is done (the caller can write its
        report meanwhile); ``close`` still waits for them."""
        if self._pool is not None:
            self._pool.shutdown(wait=False, cancel_futures=True)

    def close(self) -> None:
        if self._pool is not None:
            self._pool.shutdown(wait=True, cancel_futures=True)
            self._pool = None

    # -- Grid API -----------------------------------------------------------------------------
    def set_run(self, run: Run | int) -> None:
        if isinstance(run, Run):
            self._run = run

    @property
    def run(self) -> Run:
        return self._run

    def create_message(self, content: RecordDict, message_type: str, dst_node_id: int, group_id: str,
                       ttl: float | None = None) -> Message:
        return Message(content=content, message_type=message_type, dst_node_id=dst_node_id, group_id=group_id,
                       ttl=ttl)

    def get_node_ids(self) -> Iterable[int]:
        return list(self.node_ids)

    def push_messages(self, messages: Iterable[Message]) -> Iterable[str]:
        ids = []
        for reply in self.send_and_receive(messages):
            mid = f"m{next(self._ids)}"
            self._inbox[mid] = reply
            ids.append(mid)
        return ids

    def pull_messages(self, message_ids: Iterable[str]) -> Iterable[Message]:
        return [self._inbox.pop(mid) for mid in message_ids if mid in self._inbox]

    def send_and_receive(self, messages: Iterable[Message], *, timeout: float | None = None) -> Iterable[Message]:
        messages = list(messages)
        for m in messages:
            m.metadata.__dict__["_message_id"] = f"m{next(self._ids)}"
        pool = self._ensure_pool()
        self._finish_warm_up()
        if pool is None:
            replies = []
            for m in messages:
                reply, ctx = _handle(m, self.contexts[m.metadata.dst_node_id], self.client_app_ref)
                self.contexts[ctx.node_id] = ctx
                replies.append(reply)
            set_task_identity(self._run.run_id, SERVER_NODE_ID)
            return replies
        futures = [pool.submit(_handle, m, self.contexts[m.metadata.dst_node_id]) for m in messages]
        replies = []
        try:
            for fut in cf.as_completed(futures, timeout=timeout):
                try:
                    reply, ctx = fut.result()
                except cf.process.BrokenProcessPool:
                    log.warning("a worker process died; its clients count as dropped, restarting the pool")
                    self._pool = None
                    continue
                self.contexts[ctx.node_id] = ctx
                replies.append(reply)
        except cf.TimeoutError:
            log.warning("round timeout: %d of %d clients did not reply in %.0f s",
                        len(messages) - len(replies), len(messages), timeout or 0)
        return replies


def _noop(_: int) -> None:
    return None
