"""Process supervision for the deployment engine: a whole Flower federation as real OS processes.

``dpfl launch`` starts one ``flower-superlink`` and one ``flower-supernode`` per client on 127.0.0.1,
submits the run with ``flwr run``, merges every process's output into one prefixed stream, and on
any exit (success, failure, Ctrl-C, SIGTERM) stops everything it started.

Why the care about stopping: Flower starts helper processes in *new sessions* (the SuperExec next to
every SuperLink and SuperNode, which in turn starts ``flwr-serverapp`` / ``flwr-clientapp``), so
killing a process group is not enough. Every child gets a marker in its environment
(``DPFL_SUPERVISOR=<uuid>``), inherited by all its descendants; at the end we terminate every live
process carrying the marker, plus every descendant we ever saw, and check no port is left listening.
Linux only (``/proc``), like Flower's deployment runtime itself.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any

from rich.console import Console
from rich.text import Text

from dpfl.simulations.config.options import ConfigError, RunConfig
from dpfl.simulations.deploy.certs import CertPaths

MARKER_ENV = "DPFL_SUPERVISOR"
FEDERATION_NAME = "dpfl-local"
ANSI_RE = re.compile(r"\x1b\[[0-9;?]*[ -/]*[@-~]")
SUPERNODE_ID_RE = re.compile(r"SuperNode ID:\s*(\d+)")
RUN_ID_RE = re.compile(r"Successfully started run (\d+)")
GRACE_SECONDS = 5.0


class LaunchError(RuntimeError):
    """The federation could not be started or supervised; the message says what failed and where to look."""


class Terminated(KeyboardInterrupt):
    """SIGTERM, turned into an exception so that ``finally`` blocks stop every child process."""


# --- /proc helpers ----------------------------------------------------------------------------------------
def _stat_fields(pid: int) -> list[str] | None:
    """Fields of /proc/<pid>/stat after the command name (which may hold spaces or parentheses)."""
    try:
        raw = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    return raw[raw.rfind(")") + 2:].split()


def process_state(pid: int) -> str | None:
    """One-letter state (R, S, Z, ...) or None when the process is gone."""
    fields = _stat_fields(pid)
    return fields[0] if fields else None


def start_time(pid: int) -> int | None:
    """Start time in clock ticks since boot: with the pid, identifies a process across pid reuse."""
    fields = _stat_fields(pid)
    return int(fields[19]) if fields else None


def is_alive(pid: int, started: int | None = None) -> bool:
    """Running and, when ``started`` is given, still the same process.

    A process whose main thread has exited shows as a zombie while its other threads still run (Flower's
    servers do this while shutting down), so a "Z" leader counts as alive when any of its threads is not.
    """
    fields = _stat_fields(pid)
    if not fields or (started is not None and int(fields[19]) != started):
        return False
    if fields[0] not in ("Z", "X"):
        return True
    try:
        tasks = os.listdir(f"/proc/{pid}/task")
    except OSError:
        return False
    for tid in tasks:
        try:
            raw = Path(f"/proc/{pid}/task/{tid}/stat").read_text()
        except OSError:
            continue
        if raw[raw.rfind(")") + 2:][:1] not in ("Z", "X"):
            return True
    return False


def _all_pids() -> list[int]:
    return [int(p) for p in os.listdir("/proc") if p.isdigit()]


def children_map() -> dict[int, list[int]]:
    out: dict[int, list[int]] = {}
    for pid in _all_pids():
        fields = _stat_fields(pid)
        if fields:
            out.setdefault(int(fields[1]), []).append(pid)
    return out


def descendants(pid: int, tree: Mapping[int, list[int]] | None = None) -> list[int]:
    tree = children_map() if tree is None else tree
    out: list[int] = []
    stack = list(tree.get(pid, []))
    while stack:
        child = stack.pop()
        out.append(child)
        stack.extend(tree.get(child, []))
    return out


def pids_with_marker(value: str) -> list[int]:
    """Live processes whose environment carries ``DPFL_SUPERVISOR=value`` (ours and their descendants)."""
    needle = f"{MARKER_ENV}={value}".encode()
    found = []
    for pid in _all_pids():
        try:
            env = Path(f"/proc/{pid}/environ").read_bytes()
        except OSError:
            continue
        if needle in env.split(b"\0") and is_alive(pid):
            found.append(pid)
    return found


def command_line(pid: int) -> str:
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace").strip()
    except OSError:
        return ""


def _listening_inodes() -> dict[int, int]:
    """socket inode -> port, for every TCP socket in LISTEN state (IPv4 and IPv6)."""
    out: dict[int, int] = {}
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        try:
            lines = Path(table).read_text().splitlines()[1:]
        except OSError:
            continue
        for line in lines:
            parts = line.split()
            if len(parts) > 9 and parts[3] == "0A":
                out[int(parts[9])] = int(parts[1].rsplit(":", 1)[1], 16)
    return out


def listening_ports(pids: Sequence[int] | None = None) -> set[int]:
    """Ports in LISTEN state, all of them or only those held by ``pids``."""
    table = _listening_inodes()
    if pids is None:
        return set(table.values())
    ports: set[int] = set()
    for pid in pids:
        try:
            fds = os.listdir(f"/proc/{pid}/fd")
        except OSError:
            continue
        for fd in fds:
            try:
                target = os.readlink(f"/proc/{pid}/fd/{fd}")
            except OSError:
                continue
            if target.startswith("socket:["):
                inode = int(target[8:-1])
                if inode in table:
                    ports.add(table[inode])
    return ports


def port_listening(port: int) -> bool:
    return port in listening_ports()


def free_ports(count: int, host: str = "127.0.0.1") -> list[int]:
    """Distinct ports the OS considers free right now (all sockets held open together, so no duplicates)."""
    sockets = []
    try:
        for _ in range(count):
            s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
            s.bind((host, 0))
            sockets.append(s)
        return [s.getsockname()[1] for s in sockets]
    finally:
        for s in sockets:
            s.close()


# --- supervised processes ---------------------------------------------------------------------------------
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
        for pid in descendants(self.pid, tree):
            if pid not in self.known:
                st = start_time(pid)
                if st is not None:
                    self.known[pid] = st

    def live_pids(self) -> list[int]:
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
        env = dict(os.environ)
        env.update({MARKER_ENV: self.marker, "PYTHONUNBUFFERED": "1",
                    "FLWR_DISABLE_RUNTIME_DEPENDENCY_INSTALLATION": "1", "FLWR_DISABLE_UPDATE_CHECK": "1"})
        env.update(extra or {})
        return env

    def start(self, name: str, argv: Sequence[str], *, env: Mapping[str, str] | None = None,
              cwd: str | None = None) -> ManagedProcess:
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


# --- log display ------------------------------------------------------------------------------------------
FLOWER_NOISE = re.compile(
    r"^\s*$|^\s*(INFO|DEBUG)\s*:|^\S+\s+(INFO|DEBUG)\s+\[|^INFO:\s|^[\d/]+ [\d:]+:(INFO|DEBUG):|"
    r"^(Using SuperLink|Successfully installed|Starting local SuperLink|Flower App configuration warnings|"
    r"- Recommended property|Flower configuration not found)"
)
IMPORTANT = re.compile(r"ERROR|CRITICAL|Traceback|Exception|Error:|error:|Killed|FAILED")
WARNING = re.compile(r"WARN", re.IGNORECASE)
KNOWN_NOISE = re.compile(r"--insecure|SuperNode authentication is disabled|FutureWarning: Tip|"
                         r"warnings\.warn\(|Since flwr 1\.32|RAY_DEDUP_LOGS|"
                         r"Manually terminating ClientAppActor")
STYLES = ("green", "yellow", "blue", "magenta", "cyan", "bright_green", "bright_yellow", "bright_blue")


class LogPrinter:
    """One readable stream from many processes: a prefix per process, Flower's INFO chatter hidden.

    The ServerApp's own lines (through logging "dpfl", one per round) always show; SuperLink and
    SuperNode output shows only warnings (each distinct one once) and errors, unless ``verbose``.
    """

    def __init__(self, console: Console, *, verbose: bool = False, merged_log: Path | None = None,
                 server_names: Sequence[str] = ("server",)) -> None:
        self.console = console
        self.verbose = verbose
        self.server_names = set(server_names)
        self._lock = threading.Lock()
        self._seen_warnings: set[str] = set()
        self._in_traceback: dict[str, bool] = {}
        self._merged: IO[str] | None = None
        if merged_log is not None:
            merged_log.parent.mkdir(parents=True, exist_ok=True)
            self._merged = open(merged_log, "a", buffering=1)  # noqa: SIM115 - closed in close()

    def style(self, name: str) -> str:
        if name in self.server_names:
            return "bold cyan"
        if name == "superlink":
            return "bold magenta"
        if name == "launch":
            return "bold"
        digits = "".join(ch for ch in name if ch.isdigit())
        return STYLES[int(digits) % len(STYLES)] if digits else "white"

    def visible(self, name: str, line: str) -> bool:
        if self.verbose:
            return bool(line.strip())
        if self._in_traceback.get(name):
            if line.startswith((" ", "\t")) or line.startswith("During handling"):
                return True
            self._in_traceback[name] = False
            return True  # the exception line that ends a traceback
        if "Traceback (most recent call last)" in line:
            self._in_traceback[name] = True
            return True
        if FLOWER_NOISE.search(line) or KNOWN_NOISE.search(line):
            return False
        if name in self.server_names and not line.startswith("("):  # "(ClientAppActor pid=..)": a client
            return True
        if IMPORTANT.search(line):
            return True
        if WARNING.search(line):
            key = re.sub(r"\d+", "#", line.split("WARNING", 1)[-1].strip(" :"))
            if key in self._seen_warnings:
                return False
            self._seen_warnings.add(key)
            return True
        return False

    def __call__(self, proc: ManagedProcess | None, line: str, name: str | None = None) -> None:
        name = name or (proc.name if proc is not None else "launch")
        with self._lock:
            if self._merged is not None and not self._merged.closed:
                self._merged.write(f"[{name}] {line}\n")
            if self.visible(name, line):
                text = Text(f"[{name}] ", style=self.style(name))
                text.append(line)
                self.console.print(text, soft_wrap=True)

    def info(self, message: str, *, style: str = "") -> None:
        """A line of our own, prefixed [launch]."""
        with self._lock:
            if self._merged is not None and not self._merged.closed:
                self._merged.write(f"[launch] {message}\n")
            text = Text("[launch] ", style="bold")
            text.append(message, style=style)
            self.console.print(text, soft_wrap=True)

    def close(self) -> None:
        with self._lock:
            if self._merged is not None:
                self._merged.close()


# --- Flower commands and files ----------------------------------------------------------------------------
def repo_root() -> Path:
    """The source checkout holding pyproject.toml: the folder of the ``dpfl`` package itself (an editable
    install maps ``dpfl`` onto the checkout root). ``flwr run`` builds the Flower app (FAB) from it."""
    import dpfl

    root = Path(dpfl.__file__).resolve().parent
    pyproject = root / "pyproject.toml"
    if not pyproject.is_file() or "[tool.flwr.app" not in pyproject.read_text():
        raise LaunchError(f"{root} is not a dpfl source checkout (no pyproject.toml with [tool.flwr.app]); "
                          "Flower's engines (`flwr run`, launch, ray) build the app from the source tree: "
                          "run them from a git checkout installed with `pip install -e .`")
    return root


def toml_value(value: Any) -> str:
    """One TOML value (Flower parses --node-config / --run-config values as TOML)."""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int | float):
        return repr(value)
    return json.dumps(str(value))  # a JSON string is a valid TOML basic string


def node_config_string(entries: Mapping[str, Any]) -> str:
    for key, value in entries.items():
        if isinstance(value, str) and any(ch.isspace() for ch in value):
            raise ConfigError(f"node config {key}={value!r} is not valid: Flower splits --node-config on "
                              "spaces, so the value must not contain any")
    return " ".join(f"{k}={toml_value(v)}" for k, v in entries.items())


def write_run_config(path: Path, cfg: RunConfig) -> Path:
    """Every resolved key, as the TOML file ``flwr run --run-config FILE`` accepts (no quoting pitfalls)."""
    import tomli_w

    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(tomli_w.dumps(cfg.as_dict()))
    return path


def write_flower_home(home: Path, name: str, address: str, *, ca_cert: Path | None,
                      extra: Mapping[str, Any] | None = None) -> Path:
    """A ``$FLWR_HOME/config.toml`` whose only SuperLink connection is ``name`` (TLS when a CA is given)."""
    import tomli_w

    entry: dict[str, Any] = {"address": address}
    if ca_cert is not None:
        entry["root-certificates"] = str(ca_cert.resolve())
    else:
        entry["insecure"] = True
    entry.update(extra or {})
    home.mkdir(parents=True, exist_ok=True)
    path = home / "config.toml"
    path.write_text(tomli_w.dumps({"superlink": {"default": name, name: entry}}))
    return path


def superlink_command(host: str, port: int, certs: CertPaths | None, *,
                      database: Path | None = None) -> list[str]:
    # Flower 1.42 serves the Fleet, Control and Runtime (ServerAppIo) APIs over one HTTP server at
    # --host/--port; --fleet-api-address/--control-api-address are deprecated no-ops without FLWR_INTERNAL_*.
    cmd = ["flower-superlink", "--host", host, "--port", str(port),
           "--disable-runtime-dependency-installation"]
    cmd += certs.superlink_args() if certs else ["--insecure"]
    if database is not None:
        cmd += ["--database", str(database)]
    return cmd


def supernode_command(superlink: str, port: int, node_config: Mapping[str, Any], ca_cert: Path | None,
                      *, host: str = "127.0.0.1") -> list[str]:
    cmd = ["flower-supernode", "--superlink", superlink, "--host", host, "--port", str(port),
           "--node-config", node_config_string(node_config)]
    cmd += ["--root-certificates", str(ca_cert)] if ca_cert else ["--insecure"]
    return cmd


def flwr_run_command(app: Path, federation: str, run_config: Path, *, stream: bool = True) -> list[str]:
    cmd = ["flwr", "run", str(app), federation, "--run-config", str(run_config)]
    return cmd + (["--stream"] if stream else [])


def absolute_paths(cfg: RunConfig, run_path: Path) -> RunConfig:
    """Fix the run directory and make path keys absolute: the ServerApp and ClientApps run with other
    working directories (and, on other machines, other file systems)."""
    changes: dict[str, Any] = {"run-dir": str(run_path.parent), "run-name": run_path.name}
    for key in ("data-dir", "state-dir"):
        if str(cfg[key]):
            changes[key] = str(Path(str(cfg[key])).expanduser().resolve())
    return cfg.replace(**changes)


# --- results ----------------------------------------------------------------------------------------------
def load_summary(run_path: Path) -> dict[str, Any] | None:
    try:
        return json.loads((run_path / "summary.json").read_text())
    except (OSError, ValueError):
        return None


def result_from_summary(summary: Mapping[str, Any]) -> Any:
    """A FederationResult rebuilt from summary.json, so engines in other processes share the CLI summary."""
    from flwr.app import ArrayRecord

    from dpfl.server.federation import FederationResult

    return FederationResult(
        rounds_completed=int(summary["rounds_completed"]), stop_reason=str(summary.get("stop_reason") or ""),
        final_accuracy=float(summary["final_accuracy"]),
        final_loss=float(summary["final_loss"]) if summary.get("final_loss") is not None else float("nan"),
        epsilon_max=summary.get("epsilon_max"), epsilons=dict(summary.get("epsilon_per_client") or {}),
        seconds=float(summary.get("wall_seconds") or 0.0), arrays=ArrayRecord())


def client_events(summary: Mapping[str, Any]) -> list[tuple[str, int, str, str]]:
    """(client, round, event, reason) for every drop or decline the server recorded."""
    out = []
    for cid, info in sorted((summary.get("clients") or {}).items()):
        for ev in info.get("events", []):
            out.append((cid, int(ev.get("round", 0)), str(ev.get("event", "")), str(ev.get("reason", ""))))
    return out


def run_exit_code(summary: Mapping[str, Any] | None) -> int:
    """0 when the run finished or stopped cleanly after at least one round (as ``dpfl simulate``)."""
    if summary is None:
        return 1
    return 0 if not summary.get("stop_reason") or int(summary.get("rounds_completed", 0)) > 0 else 1


# --- the local federation ---------------------------------------------------------------------------------
@dataclass
class LaunchResult:
    exit_code: int
    run_path: Path
    summary: dict[str, Any] | None
    message: str = ""
    client_exits: dict[str, int] = field(default_factory=dict)  # SuperNodes that died during the run
    leftover_pids: list[int] = field(default_factory=list)
    leftover_ports: list[int] = field(default_factory=list)
    seconds: float = 0.0


@dataclass
class LocalFederation:
    """What is running, written to <run dir>/logs/federation.json so people (and tests) can attach to it."""

    superlink_address: str
    superlink_pid: int
    clients: dict[str, dict[str, Any]]
    tls: bool
    ca_cert: str | None
    flower_home: str
    run_config: str
    marker: str

    def write(self, path: Path) -> None:
        path.write_text(json.dumps(self.__dict__, indent=2) + "\n")


def _wait(predicate: Callable[[], bool], timeout: float, what: str, *,
          failed: Callable[[], str | None]) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return
        problem = failed()
        if problem:
            raise LaunchError(problem)
        time.sleep(0.1)
    raise LaunchError(f"timed out after {timeout:.0f} s waiting for {what}")


def _exit_words(code: int) -> str:
    if code < 0:
        with contextlib.suppress(ValueError):
            return f"killed by {signal.Signals(-code).name}"
    return f"exit code {code}"


def launch_federation(cfg: RunConfig, run_path: Path, *, certs: CertPaths | None = None,
                      console: Console | None = None, verbose: bool = False, timeout: float = 0.0,
                      startup_timeout: float = 90.0, client_threads: int | None = None) -> LaunchResult:
    """Run ``cfg`` on a local deployed federation: a SuperLink and num-clients SuperNodes on 127.0.0.1.

    ``cfg`` must be validated (and preflighted) by the caller; ``run_path`` is the run directory the
    ServerApp writes, exactly as for ``dpfl simulate``; process logs go to ``<run_path>/logs/``.
    """
    console = console or Console(highlight=False)
    t0 = time.monotonic()
    root = repo_root()
    cfg = absolute_paths(cfg, run_path)
    n = int(cfg["num-clients"])
    log_dir = run_path / "logs"
    printer = LogPrinter(console, verbose=verbose, merged_log=log_dir / "launch.log")
    tmp = Path(tempfile.mkdtemp(prefix="dpfl-launch-"))
    sup = Supervisor(log_dir, printer)
    result = LaunchResult(exit_code=1, run_path=run_path, summary=None)
    threads = str(client_threads or os.environ.get("OMP_NUM_THREADS") or max(1, (os.cpu_count() or 1) // n))
    try:
        with sigterm_as_exception():
            link_port, *node_ports = free_ports(1 + n)
            link_addr = f"127.0.0.1:{link_port}"
            ca = certs.ca_cert if certs else None
            if certs is None:
                printer.info("WARNING: --insecure: traffic between processes is plaintext (fine on "
                             "127.0.0.1; use --certificates DIR for TLS)", style="yellow")
            superlink = sup.start("superlink", superlink_command("127.0.0.1", link_port, certs),
                                  env={"FLWR_HOME": str(tmp / "superlink")})

            def superlink_failed() -> str | None:
                code = superlink.poll()
                return None if code is None else f"flower-superlink exited at start ({_exit_words(code)}); " \
                                                 f"see {superlink.log_path}"

            # SuperNodes start at once (they retry until the SuperLink listens): their imports overlap its own
            nodes: dict[str, ManagedProcess] = {}
            for k in range(n):
                name = f"client-{k}"
                node_cfg = {"partition-id": k, "num-partitions": n}
                nodes[name] = sup.start(
                    name, supernode_command(link_addr, node_ports[k], node_cfg, ca),
                    env={"FLWR_HOME": str(tmp / name), "OMP_NUM_THREADS": threads})

            _wait(lambda: port_listening(link_port), startup_timeout, f"flower-superlink on {link_addr}",
                  failed=superlink_failed)

            def registered() -> bool:
                return all(any(SUPERNODE_ID_RE.search(x) for x in list(p.lines)) for p in nodes.values())

            def node_failed() -> str | None:
                dead = [f"{k} ({_exit_words(c)})" for k, p in nodes.items() if (c := p.poll()) is not None]
                if dead:
                    return f"SuperNode {', '.join(dead)} exited at start; see {log_dir}"
                return superlink_failed()

            _wait(registered, startup_timeout, f"{n} SuperNodes to register with the SuperLink",
                  failed=node_failed)
            printer.info(f"SuperLink {link_addr} ({'TLS' if certs else 'plaintext'}), {n} SuperNodes "
                         f"registered; logs in {log_dir}")
            home = tmp / "cli"
            write_flower_home(home, FEDERATION_NAME, link_addr, ca_cert=ca)
            run_config = write_run_config(log_dir / "run-config.toml", cfg)
            LocalFederation(
                superlink_address=link_addr, superlink_pid=superlink.pid, tls=certs is not None,
                ca_cert=str(ca) if ca else None, flower_home=str(home), run_config=str(run_config),
                marker=sup.marker,
                clients={k: {"pid": p.pid, "port": node_ports[i], "partition-id": i,
                             "command": p.argv} for i, (k, p) in enumerate(nodes.items())},
            ).write(log_dir / "federation.json")
            server = sup.start("server", flwr_run_command(root, FEDERATION_NAME, run_config),
                               env={"FLWR_HOME": str(home)})
            reported: set[str] = set()
            while server.poll() is None:
                code = superlink.poll()
                if code is not None:
                    raise LaunchError(f"flower-superlink died during the run ({_exit_words(code)}); "
                                      f"see {superlink.log_path}")
                for name, proc in nodes.items():
                    code = proc.poll()
                    if code is not None and name not in reported:
                        reported.add(name)
                        result.client_exits[name] = code
                        printer.info(f"{name} (SuperNode pid {proc.pid}) exited ({_exit_words(code)}); the "
                                     "run goes on without it, the server counts it as dropped",
                                     style="yellow")
                if timeout and time.monotonic() - t0 > timeout:
                    raise LaunchError(f"--timeout {timeout:.0f} s reached before the run finished")
                time.sleep(0.2)
            server.wait_output(5.0)
            result.summary = load_summary(run_path)
            result.exit_code = run_exit_code(result.summary)
            if result.summary is None:
                result.message = (f"the ServerApp did not finish the run (no summary.json; `flwr run` "
                                  f"{_exit_words(server.poll() or 0)}); see {log_dir}/server.log and "
                                  f"{log_dir}/superlink.log")
    except Terminated:
        result.exit_code, result.message = 143, "terminated (SIGTERM): stopped every process"
    except KeyboardInterrupt:
        result.exit_code, result.message = 130, "interrupted: stopped every process"
    except (LaunchError, ConfigError) as exc:
        result.exit_code, result.message = 1, str(exc)
    finally:
        watched_ports = set(sup.ports_seen)
        with interrupts_deferred():
            result.leftover_pids = sup.stop_all()
        watched_ports |= sup.ports_seen
        result.leftover_ports = sorted(p for p in watched_ports if port_listening(p))
        printer.close()
        _remove_tree(tmp)
        result.seconds = time.monotonic() - t0
    if result.summary is None:
        result.summary = load_summary(run_path)
    return result


def _remove_tree(path: Path) -> None:
    import shutil

    shutil.rmtree(path, ignore_errors=True)


def flower_processes_with_marker(marker: str) -> list[tuple[int, str]]:
    """(pid, command line) of live processes carrying ``marker``: for tests and the leftover check."""
    return [(pid, command_line(pid)) for pid in pids_with_marker(marker)]


if __name__ == "__main__":  # pragma: no cover - debugging helper: list processes carrying a marker
    for pid, cmd in flower_processes_with_marker(sys.argv[1]):
        print(pid, cmd)
