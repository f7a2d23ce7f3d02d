"""Progress on a terminal: a bar with ETA plus one readable line per finished round (or sweep point)."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn


class LiveBar:
    """A transient bar with elapsed time and ETA over ``total`` items of one kind, and one printed line per
    finished item (the caller's); shared by the round and the sweep reporters."""

    def __init__(self, console: Console | None = None) -> None:
        self.console = console or Console(stderr=False)
        self.progress: Progress | None = None

    def start_bar(self, label: str, total: int) -> None:
        self.progress = Progress(TextColumn(f"[bold]{label}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(),
                                 TextColumn("eta"), TimeRemainingColumn(), console=self.console, transient=True)
        self.progress.start()
        self.task = self.progress.add_task(label, total=total)

    def advance(self) -> None:
        if self.progress is not None:
            self.progress.advance(self.task)

    def stop(self) -> None:
        if self.progress is not None:
            self.progress.stop()
            self.progress = None


class RichReporter(LiveBar):
    def __init__(self, console: Console | None = None, *, quiet: bool = False) -> None:
        super().__init__(console)
        self.quiet = quiet
        self.total = 0

    def start(self, total_rounds: int) -> None:
        self.total = total_rounds
        if not self.quiet:
            self.start_bar("rounds", total_rounds)

    def round(self, row: Mapping[str, Any]) -> None:
        if self.quiet:
            return
        from dpfl.server.federation import format_round_line  # torch and Flower: not for `dpfl sweep --help`

        self.console.print(format_round_line(row, self.total), highlight=False)
        self.advance()
