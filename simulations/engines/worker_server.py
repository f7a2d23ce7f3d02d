"""The fork server the in-process engine's workers are forked from.

Every worker needs torch, Flower and Opacus (~5 s of imports per process on this machine). A fork server
imports them once and forks workers that start with everything loaded; started early (``dpfl simulate``
starts it before its own imports), it does that work while the main process imports the same modules on
the other core. The server only imports: it never runs a torch op, so no OpenMP thread pool exists that a
fork could break. This module itself imports nothing heavy, so it can run first.
"""

from __future__ import annotations

import multiprocessing as mp
from multiprocessing import forkserver

# What the in-process engine's workers run: the ClientApp and the data preload (simulations.apps).
WORKER_MODULES = ("dpfl.simulations.apps",)


def available() -> bool:
    return "forkserver" in mp.get_all_start_methods()


def context(modules: tuple[str, ...] = WORKER_MODULES) -> mp.context.BaseContext:
    """The start method for worker pools: the fork server preloaded with ``modules``, else spawn."""
    if not available():
        return mp.get_context("spawn")
    ctx = mp.get_context("forkserver")
    ctx.set_forkserver_preload(list(modules))
    return ctx


def start(modules: tuple[str, ...] = WORKER_MODULES) -> None:
    """Start the fork server now (idempotent); the first pool would otherwise start it lazily."""
    if available():
        context(modules)
        forkserver.ensure_running()
