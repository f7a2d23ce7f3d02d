"""The data owner's app allow-list: a SuperNode runs only app bundles whose hash the owner approved.

In a deployed federation the server decides which Flower app (FAB) runs, and the SuperNode fetches it and
runs its code on the owner's machine, next to the owner's records. An owner who does not trust the server
must decide that itself. Flower's own ``--trusted-entities`` accepts only apps signed through Flower's hub,
so for local apps dpfl checks the bundle: ``dpfl client`` puts this module, under the name
``flwr-clientapp``, first on the SuperNode's PATH (Flower's SuperExec starts every ClientApp process by that
name), and it refuses any bundle whose SHA-256 is not in the owner's list, before the bundle is unpacked,
so no code of it runs. The list is a file (one hex digest per line) named by ``DPFL_APPROVED_APPS_FILE``;
without it, or when it cannot be read, nothing is approved (fail closed).

Relies on ``flwr.supernode.runtime.run_clientapp`` calling ``install_from_fab`` with the bundle's bytes
(Flower 1.42.*, which ``pyproject.toml`` pins; tests/test_enrolment.py fails loudly if that moves).
"""

from __future__ import annotations

import hashlib
import os
import re
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

APPROVED_APPS_ENV = "DPFL_APPROVED_APPS_FILE"
APP_HASH = re.compile(r"^[0-9a-f]{64}$")


class UnapprovedApp(RuntimeError):
    """The server asked this node to run an app bundle its owner did not approve."""


def read_approved(path: str | Path | None) -> frozenset[str]:
    """The approved bundle hashes in ``path`` (blank lines and ``#`` comments ignored); empty when unreadable."""
    if not path:
        return frozenset()
    try:
        lines = Path(path).read_text(encoding="utf-8").splitlines()
    except (OSError, UnicodeDecodeError):
        return frozenset()
    return frozenset(x.strip().lower() for x in lines if APP_HASH.match(x.strip().lower()))


def check_bundle(content: bytes, approved: frozenset[str]) -> str:
    """The bundle's SHA-256, or UnapprovedApp when the owner did not approve it.

    The exception's text reaches the server (Flower reports a ClientApp's error upstream), so it names the
    refused bundle only; the owner's list and where it lives stay in the local log."""
    digest = hashlib.sha256(content).hexdigest()
    if digest not in approved:
        raise UnapprovedApp(f"this data owner did not approve app bundle sha256 {digest}; nothing of it ran")
    return digest


def guarded(install: Callable[..., Any], approved: frozenset[str], source: str) -> Callable[..., Any]:
    """``install`` (Flower's install_from_fab), refusing any bundle not approved before it is unpacked."""

    def install_if_approved(fab_file: Any, *args: Any, **kwargs: Any) -> Any:
        content = fab_file if isinstance(fab_file, bytes) else Path(fab_file).read_bytes()
        try:
            check_bundle(content, approved)
        except UnapprovedApp as exc:
            listed = ", ".join(sorted(approved)) or "none"
            print(f"dpfl ERROR: refused to run an app bundle: {exc}. Approved here ({source or 'no list'}): {listed}. "
                  "If you trust it, add its hash to approved-apps in your privacy policy (or pass "
                  "--approve-app HASH) and restart `dpfl client`", file=sys.stderr, flush=True)
            raise
        return install(fab_file, *args, **kwargs)

    return install_if_approved


def main() -> None:
    """``flwr-clientapp`` with the allow-list in force (same arguments as Flower's)."""
    import flwr.supernode.runtime.run_clientapp as runner
    from flwr.supernode.cli.flwr_clientapp import flwr_clientapp

    source = os.environ.get(APPROVED_APPS_ENV, "")
    runner.install_from_fab = guarded(runner.install_from_fab, read_approved(source), source)
    flwr_clientapp()


if __name__ == "__main__":
    main()
