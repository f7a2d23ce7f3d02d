"""Progress on a terminal: a bar with ETA plus one readable line per finished round (or sweep point).

A round of a run without a DP guarantee (its metrics row says ``"privacy": "NOT PRIVATE"``) starts with that
stamp, in bold red, and so does the bar from then on.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn
from rich.text import Text

from dpfl.privacy.policy import NOT_PRIVATE_STAMP


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

        self.console.print(stamped_line(format_round_line(row, self.total), row), highlight=False)
        if is_stamped(row) and self.progress is not None:
            self.progress.columns[0].text_format = f"[bold red]{NOT_PRIVATE_STAMP}[/] [bold]rounds"
        self.advance()


def is_stamped(row: Mapping[str, Any]) -> bool:
    return row.get("privacy") == NOT_PRIVATE_STAMP


def stamped_line(line: str, row: Mapping[str, Any]) -> Text:
    """The round line, starting with the NOT PRIVATE stamp (in bold red) when the row carries it."""
    text = Text(line)
    if is_stamped(row):
        if not line.startswith(NOT_PRIVATE_STAMP):
            text = Text(f"{NOT_PRIVATE_STAMP} | {line}")
        text.stylize("bold red", 0, len(NOT_PRIVATE_STAMP))
    return text
