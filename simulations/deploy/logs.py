"""Log display: many processes' output merged into one readable, prefixed stream, Flower's chatter filtered out.

A federation of N clients prints thousands of Flower INFO lines per round; what a person needs is the
ServerApp's one line per round, every error with its traceback, and each distinct warning once. The
full output of every process stays in its own log file (the supervisor writes those) and, unfiltered,
in the merged log.

Flower's security warnings (plaintext ``--insecure``, "SuperNode authentication is disabled") are never
filtered: each shows once, like every other distinct warning.
"""

from __future__ import annotations

import re
import threading
from collections.abc import Sequence
from pathlib import Path
from typing import IO

from rich.console import Console
from rich.text import Text

from dpfl.simulations.deploy.supervisor import ManagedProcess

FLOWER_NOISE = re.compile(
    r"^\s*$|^\s*(INFO|DEBUG)\s*:|^\S+\s+(INFO|DEBUG)\s+\[|^INFO:\s|^[\d/]+ [\d:]+:(INFO|DEBUG):|"
    r"^(Using SuperLink|Successfully installed|Starting local SuperLink|Flower App configuration warnings|"
    r"- Recommended property|Flower configuration not found)"
)
IMPORTANT = re.compile(r"ERROR|CRITICAL|Traceback|Exception|Error:|error:|Killed|FAILED")
WARNING = re.compile(r"WARN", re.IGNORECASE)
KNOWN_NOISE = re.compile(r"FutureWarning: Tip|"
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
        if name in ("superlink", "gateway"):
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
