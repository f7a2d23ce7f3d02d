"""/proc inspection: process state, start time, children and descendants, marker search, listening ports, free ports.

The supervisor stops whole process trees that Flower scatters over new sessions, so it needs to see every
process and socket of the machine, not only its own children: these helpers read ``/proc`` directly (Linux
only, like Flower's deployment runtime itself) and never raise for a process that vanished mid-read.
"""

from __future__ import annotations

import os
import socket
import sys
from collections.abc import Mapping, Sequence
from pathlib import Path

MARKER_ENV = "DPFL_SUPERVISOR"  # set in every supervised child's environment, inherited by its descendants


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
    """parent pid -> child pids, for the whole machine at once (one /proc scan serves a whole tree walk)."""
    out: dict[int, list[int]] = {}
    for pid in _all_pids():
        fields = _stat_fields(pid)
        if fields:
            out.setdefault(int(fields[1]), []).append(pid)
    return out


def descendants(pid: int, tree: Mapping[int, list[int]] | None = None) -> list[int]:
    """Every process below ``pid``, also those in other sessions (which a process group would miss)."""
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
    """The command line of ``pid`` with spaces between arguments, or "" when it is gone."""
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
    """Whether anything on this machine listens on ``port`` (the check that nothing was left behind)."""
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


def flower_processes_with_marker(marker: str) -> list[tuple[int, str]]:
    """(pid, command line) of live processes carrying ``marker``: for tests and the leftover check."""
    return [(pid, command_line(pid)) for pid in pids_with_marker(marker)]


if __name__ == "__main__":  # pragma: no cover - debugging helper: list processes carrying a marker
    for pid, cmd in flower_processes_with_marker(sys.argv[1]):
        print(pid, cmd)
