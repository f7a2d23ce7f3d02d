"""Process supervisor: starts children in their own sessions, tracks their whole trees, and stops all of them.

Why the care about stopping: Flower starts helper processes in *new sessions* (the SuperExec next to
every SuperLink and SuperNode, which in turn starts ``flwr-serverapp`` / ``flwr-clientapp``), so
killing a process group is not enough. Every child gets a marker in its environment
(``DPFL_SUPERVISOR=<uuid>``), inherited by all its descendants; at the end we terminate every live
process carrying the marker, plus every descendant we ever saw, and check no port is left listening.
SIGTERM and Ctrl-C become exceptions (``Terminated``, ``KeyboardInterrupt``) so that ``finally`` blocks
always run that cleanup.
"""

from __future__ import annotations

import contextlib
import os
import re
import signal
import subprocess
import threading
import time
import uuid
from collections.abc import Callable, Iterator, Mapping, Sequence
from pathlib import Path
from typing import IO

from dpfl.simulations.deploy.processes import (
    MARKER_ENV,
    children_map,
    descendants,
    is_alive,
    listening_ports,
    pids_with_marker,
    start_time,
)

ANSI_RE = re.compile(r"\x1b\[[0-9;?]*[ -/]*[@-~]")
GRACE_SECONDS = 5.0
EXIT_INTERRUPTED = 128 + signal.SIGINT  # 130: the shell's code for a Ctrl-C'd command
EXIT_TERMINATED = 128 + signal.SIGTERM  # 143


class LaunchError(RuntimeError):
    """The federation could not be started or supervised; the message says what failed and where to look."""


class Terminated(KeyboardInterrupt):
    """SIGTERM, turned into an exception so that ``finally`` blocks stop every child process."""


LineHandler = Callable[["ManagedProcess", str], None]


class ManagedProcess:
    """One child process: its own session, output copied line by line to a log file and a handler."""

    def __init__(self, name: str, argv: Sequence[str], *, env: Mapping[str, str], log_path: Path,
                 handler: LineHandler, cwd: str | None = None) -> None:
        self.name = name
        self.argv = list(argv)
        self.log_path = log_path
        self.lines: list[str] = []  # kept for the pattern checks of the caller (registration, run id)
        self.known: dict[int, int] = {}  # descendant pid -> start time, every one ever seen
        self._handler = handler
        log_path.parent.mkdir(parents=True, exist_ok=True)
        self._log: IO[str] = open(log_path, "a", buffering=1)  # noqa: SIM115 - closed by the reader thread
        self._log.write(f"# {time.strftime('%Y-%m-%d %H:%M:%S')} $ {' '.join(self.argv)}\n")
        try:
            self.popen = subprocess.Popen(self.argv, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                                          stderr=subprocess.STDOUT, env=dict(env), cwd=cwd,
                                          start_new_session=True)  # Ctrl-C reaches us only; we stop it
        except OSError as exc:
            self._log.close()
            raise LaunchError(f"cannot start {name} ({self.argv[0]}): {exc}") from None
        self.pid = self.popen.pid
        self.started = start_time(self.pid)
        self._reader = threading.Thread(target=self._read, name=f"log-{name}", daemon=True)
        self._reader.start()

    def _read(self) -> None:
        assert self.popen.stdout is not None
        try:
            for raw in iter(self.popen.stdout.readline, b""):
                line = ANSI_RE.sub("", raw.decode(errors="replace")).rstrip()
                now = time.time()
                self._log.write(f"{time.strftime('%H:%M:%S', time.localtime(now))}.{int(now % 1 * 1000):03d} "
                                f"{line}\n")
                self.lines.append(line)
                with contextlib.suppress(Exception):  # a display problem must not stop log capture
                    self._handler(self, line)
        finally:
            self._log.close()

    def poll(self) -> int | None:
        return self.popen.poll()

    def refresh(self, tree: Mapping[int, list[int]]) -> None:
        """Remember every descendant now, with its start time, so it can be stopped after its parent died."""
        for pid in descendants(self.pid, tree):
            if pid not in self.known:
                st = start_time(pid)
                if st is not None:
                    self.known[pid] = st

    def live_pids(self) -> list[int]:
        """This process and every remembered descendant that is still the same live process."""
        pids = [self.pid] if self.popen.poll() is None else []
        pids += [p for p, st in self.known.items() if is_alive(p, st)]
        return pids

    def wait_output(self, timeout: float = 5.0) -> None:
        """Let the reader thread drain the pipe after the process ended."""
        self._reader.join(timeout)


class Supervisor:
    """Starts processes, watches their trees, and stops all of them (and theirs) when closed."""

    def __init__(self, log_dir: Path, handler: LineHandler, *, grace: float = GRACE_SECONDS) -> None:
        self.marker = uuid.uuid4().hex
        self.log_dir = log_dir
        self.handler = handler
        self.grace = grace
        self.procs: list[ManagedProcess] = []
        self.ports_seen: set[int] = set()
        self._stop_watch = threading.Event()
        self._watch = threading.Thread(target=self._watch_loop, name="supervisor", daemon=True)
        self._watch.start()

    def env(self, extra: Mapping[str, str] | None = None) -> dict[str, str]:
        """A child's environment: ours plus the marker, unbuffered output and no runtime pip/uv installs."""
        env = dict(os.environ)
        env.update({MARKER_ENV: self.marker, "PYTHONUNBUFFERED": "1",
                    "FLWR_DISABLE_RUNTIME_DEPENDENCY_INSTALLATION": "1", "FLWR_DISABLE_UPDATE_CHECK": "1"})
        env.update(extra or {})
        return env

    def start(self, name: str, argv: Sequence[str], *, env: Mapping[str, str] | None = None,
              cwd: str | None = None) -> ManagedProcess:
        """Start ``argv`` as ``name`` (log file ``<log_dir>/<name>.log``), supervised until ``stop_all``."""
        proc = ManagedProcess(name, argv, env=self.env(env), log_path=self.log_dir / f"{name}.log",
                              handler=self.handler, cwd=cwd)
        self.procs.append(proc)
        return proc

    def _watch_loop(self) -> None:
        while not self._stop_watch.wait(0.5):
            self.refresh()

    def refresh(self) -> None:
        """Remember every descendant and listening port now: parents may die before we stop the children."""
        with contextlib.suppress(Exception):
            tree = children_map()
            for proc in list(self.procs):
                proc.refresh(tree)
            self.ports_seen |= listening_ports(self.all_live_pids())

    def all_live_pids(self) -> list[int]:
        """Every live process of ours: marked ones and remembered descendants (never this process)."""
        pids: set[int] = set(pids_with_marker(self.marker))
        for proc in self.procs:
            pids.update(proc.live_pids())
        pids.discard(os.getpid())
        return sorted(pids)

    def stop(self, proc: ManagedProcess, *, sig: int = signal.SIGTERM) -> None:
        """Stop one process and its whole tree (SIGTERM, then SIGKILL after the grace period)."""
        self.refresh()
        self._terminate(proc.live_pids(), sig)
        proc.wait_output(1.0)

    def stop_all(self) -> list[int]:
        """Stop everything; returns pids that survived even SIGKILL (should be empty)."""
        self.refresh()
        self._stop_watch.set()
        for _ in range(3):  # a dying parent may still spawn a child: sweep until nothing carries the marker
            pids = self.all_live_pids()
            if not pids:
                break
            self._terminate(pids, signal.SIGTERM)
        leftovers = self.all_live_pids()
        for proc in self.procs:
            proc.wait_output(1.0)
        return leftovers

    def _terminate(self, pids: Sequence[int], sig: int) -> None:
        started = {p: start_time(p) for p in pids}
        for pid in pids:
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.kill(pid, sig)
        deadline = time.monotonic() + (self.grace if sig == signal.SIGTERM else 0.0)
        while time.monotonic() < deadline:
            self._reap()
            if not any(is_alive(p, s) for p, s in started.items()):
                return
            time.sleep(0.1)
        for pid, st in started.items():
            if is_alive(pid, st):
                with contextlib.suppress(ProcessLookupError, PermissionError):
                    os.kill(pid, signal.SIGKILL)
        deadline = time.monotonic() + 3.0
        while time.monotonic() < deadline and any(is_alive(p, s) for p, s in started.items()):
            self._reap()
            time.sleep(0.05)
        self._reap()

    def _reap(self) -> None:
        for proc in self.procs:
            proc.poll()

    def __enter__(self) -> Supervisor:
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop_all()


@contextlib.contextmanager
def sigterm_as_exception() -> Iterator[None]:
    """Turn SIGTERM into ``Terminated`` in the main thread, so cleanup runs as for Ctrl-C."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return

    def _raise(signum: int, frame: object) -> None:
        raise Terminated()

    previous = signal.signal(signal.SIGTERM, _raise)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)


@contextlib.contextmanager
def interrupts_deferred() -> Iterator[None]:
    """Ignore Ctrl-C and SIGTERM during cleanup: a second Ctrl-C must not leave half the processes running."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    previous = {sig: signal.signal(sig, signal.SIG_IGN) for sig in (signal.SIGINT, signal.SIGTERM)}
    try:
        yield
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)


def exit_words(code: int) -> str:
    """A child's exit status in words: "exit code 1", or "killed by SIGKILL" for a negative status."""
    if code < 0:
        with contextlib.suppress(ValueError):
            return f"killed by {signal.Signals(-code).name}"
    return f"exit code {code}"
