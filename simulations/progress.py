"""Progress over rounds on a terminal: a bar with ETA plus one readable line per round."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn

from server.federation import format_round_line


class RichReporter:
    def __init__(self, console: Console | None = None, *, quiet: bool = False) -> None:
        self.console = console or Console(stderr=False)
        self.quiet = quiet
        self.progress: Progress | None = None
        self.total = 0

    def start(self, total_rounds: int) -> None:
        self.total = total_rounds
        if self.quiet:
            return
        self.progress = Progress(TextColumn("[bold]rounds"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(),
                                 TextColumn("eta"), TimeRemainingColumn(), console=self.console, transient=True)
        self.progress.start()
        self.task = self.progress.add_task("rounds", total=total_rounds)

    def round(self, row: Mapping[str, Any]) -> None:
        if self.quiet:
            return
        self.console.print(format_round_line(row, self.total), highlight=False)
        if self.progress is not None:
            self.progress.advance(self.task)

    def stop(self) -> None:
        if self.progress is not None:
            self.progress.stop()
            self.progress = None
