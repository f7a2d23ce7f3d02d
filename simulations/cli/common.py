"""What every ``dpfl`` command shares: exit codes, the console, the one-line error, logging set-up.

Its own module so that the commands (``cli/deploy.py``, ``cli/sweep.py``, ...) and ``cli/main.py``, which
only builds the parser and registers them, can all use it without importing each other.
"""

from __future__ import annotations

import logging
import sys

from rich.console import Console
from rich.markup import escape

from dpfl.simulations.deploy.supervisor import EXIT_INTERRUPTED, EXIT_TERMINATED

EXIT_OK = 0
EXIT_FAILED = 1
EXIT_BAD_INPUT = 2  # nothing was started
__all__ = ["EXIT_BAD_INPUT", "EXIT_FAILED", "EXIT_INTERRUPTED", "EXIT_OK", "EXIT_TERMINATED", "console", "error",
           "fail", "setup_logging"]

console = Console(highlight=False, soft_wrap=True)


def error(message: str, code: int = EXIT_FAILED) -> int:
    """Print ``error: message`` as one line on stderr and return ``code``: the message is escaped, so a
    ``[tool.flwr.app]`` or ``--grid [..]`` in it is shown, not taken for rich markup."""
    Console(stderr=True, highlight=False, soft_wrap=True).print(f"[bold red]error:[/] {escape(message)}")
    return code


def fail(message: str) -> int:
    """Bad input: one line naming what is wrong, exit code 2, before any work starts."""
    return error(message, EXIT_BAD_INPUT)


def setup_logging(verbose: bool) -> None:
    """dpfl's own logger prints warnings (INFO with -v); Flower's INFO chatter stays quiet."""
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(message)s", "%H:%M:%S"))
    ours = logging.getLogger("dpfl")
    ours.handlers[:] = [handler]
    ours.setLevel(logging.INFO if verbose else logging.WARNING)
    ours.propagate = False
    import flwr.supercore.logger  # noqa: F401 - Flower sets its logger to DEBUG on import; quiet it afterwards

    logging.getLogger("flwr").setLevel(logging.INFO if verbose else logging.WARNING)
