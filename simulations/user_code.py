"""Makes a user's own modules (``--model mymodels:Net``, ``--dataset myloader:load``) importable everywhere.

``dpfl`` is a console script, so ``sys.path[0]`` is its ``bin/`` folder, not the folder the user ran it
from, and a plug-in that works in ``python -c "import mymodels"`` would not import. The working directory
is appended to ``sys.path`` (appended, not prepended: a user file named like an installed package must not
shadow it) before the fork server starts, so the in-process engine's workers inherit it, and to
``PYTHONPATH`` for processes that start Python afresh (Ray workers, Flower's SuperNodes and ServerApp).
"""

from __future__ import annotations

import os
import sys
from pathlib import Path


def expose_user_code(directory: str | Path | None = None) -> Path:
    """Append ``directory`` (default: the working directory) to ``sys.path`` and ``PYTHONPATH``; idempotent."""
    where = Path(directory or os.getcwd()).expanduser().resolve()
    text = str(where)
    if text not in sys.path:
        sys.path.append(text)
    parts = [p for p in os.environ.get("PYTHONPATH", "").split(os.pathsep) if p]
    if text not in parts:
        os.environ["PYTHONPATH"] = os.pathsep.join([*parts, text])
    return where
