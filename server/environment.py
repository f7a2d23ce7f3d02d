"""What a run ran on: package versions, Python, git revision, platform, CPUs and device, for config.json.

``describe_environment()`` is written under config.json's ``environment`` key so a run directory says
which code and libraries produced it. Nothing here may fail a run: an unknown version, a checkout without
git or a git that hangs is ``None``. The key is not a run-config key: readers that turn config.json back
into a run config drop it (``privacy.rundata.run_config_values``).
"""

from __future__ import annotations

import importlib.metadata
import os
import platform
import subprocess
import sys
from pathlib import Path
from typing import Any

import torch

DISTRIBUTIONS = ("dpfl", "torch", "opacus", "flwr", "dp-accounting")
CHECKOUT = Path(__file__).resolve().parents[1]  # the package root: the checkout when dpfl runs from one
GIT_TIMEOUT_S = 2.0


def package_version(name: str) -> str | None:
    """The installed distribution's version, or None when it is not installed."""
    if name == "torch":
        return str(torch.__version__)  # the build actually imported (e.g. "2.13.0+cpu")
    try:
        return importlib.metadata.version(name)
    except importlib.metadata.PackageNotFoundError:
        return None


def git_revision(root: Path = CHECKOUT, timeout: float = GIT_TIMEOUT_S) -> str | None:
    """``git rev-parse HEAD`` of the checkout dpfl is imported from, or None: no git, not a checkout, or a
    repository that is not dpfl's own (an installed dpfl inside someone else's repository reports None)."""
    try:
        proc = subprocess.run(["git", "-C", str(root), "rev-parse", "--show-toplevel", "HEAD"],
                              capture_output=True, text=True, timeout=timeout, check=False)
    except (OSError, subprocess.SubprocessError):
        return None
    lines = proc.stdout.split()
    if proc.returncode != 0 or len(lines) != 2:
        return None
    try:
        if Path(lines[0]).resolve() != root.resolve():
            return None
    except OSError:
        return None
    return lines[1] if len(lines[1]) >= 40 else None


def device_name(setting: str = "auto") -> str:
    """Where clients train: the CUDA device's name when one is used, else ``"cpu"``."""
    if setting == "cpu":
        return "cpu"
    try:
        if torch.cuda.is_available():
            return str(torch.cuda.get_device_name(0))
    except Exception:  # noqa: BLE001 - a broken driver must not fail the run; the clients' own check names it
        return "cpu"
    return "cpu"


def describe_environment(device_setting: str = "auto") -> dict[str, Any]:
    """The ``environment`` object of config.json."""
    out: dict[str, Any] = {name: package_version(name) for name in DISTRIBUTIONS}
    out.update({
        "python": platform.python_version(),
        "python-implementation": platform.python_implementation(),
        "executable": sys.executable,
        "git-revision": git_revision(),
        "platform": platform.platform(),
        "machine": platform.machine(),
        "cpu-count": os.cpu_count(),
        "device": device_name(str(device_setting or "auto")),
    })
    return out
