"""Which app a SuperNode may run: the bundle hash of a source checkout, and the guard put on a node's PATH.

``app_bundle_hash`` builds the Flower app bundle (FAB) of a checkout exactly as ``flwr run`` does (Flower's
``build_fab_from_disk``: sorted files, fixed timestamps, so the same tree always gives the same bytes) and
returns its SHA-256: the value a data owner puts in ``approved-apps``. ``guard_environment`` prepares a
SuperNode's environment so that every ClientApp process it starts goes through ``dpfl.client.app_guard``.
"""

from __future__ import annotations

import hashlib
import os
import sys
from collections.abc import Iterable
from pathlib import Path

from dpfl.client.app_guard import APP_HASH, APPROVED_APPS_ENV
from dpfl.simulations.config import ConfigError
from dpfl.simulations.deploy.supervisor import LaunchError


def app_bundle_hash(app: Path) -> str:
    """SHA-256 of the bundle ``flwr run`` would build from ``app``."""
    from flwr.cli.build import build_fab_from_disk

    try:
        return hashlib.sha256(build_fab_from_disk(app)).hexdigest()
    except (OSError, ValueError) as exc:
        raise LaunchError(f"cannot build the Flower app bundle of {app}: {exc}") from None


def freeze_app(app: Path, into: Path) -> Path:
    """A frozen copy of the bundle ``flwr run`` would build from ``app``, unpacked into ``into``: a launch hashes
    and submits this copy, so editing the checkout meanwhile cannot make the nodes refuse their own run."""
    import io
    import zipfile

    from flwr.cli.build import build_fab_from_disk

    try:
        bundle = zipfile.ZipFile(io.BytesIO(build_fab_from_disk(app)))
    except (OSError, ValueError) as exc:
        raise LaunchError(f"cannot build the Flower app bundle of {app}: {exc}") from None
    into.mkdir(parents=True, exist_ok=True)
    for name in bundle.namelist():
        if name.startswith(".info/"):
            continue  # the manifest Flower writes; rebuilt on every build
        target = (into / name).resolve()
        if into.resolve() not in target.parents:
            raise LaunchError(f"the app bundle of {app} holds a path outside it: {name}")
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_bytes(bundle.read(name))
    return into


def check_app_hashes(values: Iterable[str], what: str) -> list[str]:
    """Lower-case SHA-256 hex digests, or a ConfigError naming the bad one."""
    out = []
    for value in values:
        digest = str(value).strip().lower()
        if not APP_HASH.match(digest):
            raise ConfigError(f"{what} {value!r} is not valid: expected the 64-hex-digit SHA-256 that "
                              "`dpfl app-hash` prints")
        out.append(digest)
    return out


def guard_environment(home: Path, approved: Iterable[str]) -> dict[str, str]:
    """Environment for a SuperNode whose ClientApps run only ``approved`` bundles.

    Writes ``<home>/bin/flwr-clientapp`` (this Python, dpfl's guard) and ``<home>/approved-apps.txt``;
    the returned PATH puts that folder first, which Flower's SuperExec searches for ``flwr-clientapp``."""
    hashes = sorted(set(approved))
    if not hashes:
        raise ConfigError("no app is approved for this SuperNode: it would refuse every run; give "
                          "approved-apps in the privacy policy or --approve-app HASH")
    bin_dir = home / "bin"
    bin_dir.mkdir(parents=True, exist_ok=True)
    listing = home / "approved-apps.txt"
    listing.write_text("# app bundles this SuperNode may run (SHA-256), written by dpfl\n" + "\n".join(hashes) + "\n")
    shim = bin_dir / "flwr-clientapp"
    shim.write_text(f"#!{sys.executable}\nfrom dpfl.client.app_guard import main\n\nmain()\n")
    shim.chmod(0o755)
    return {"PATH": f"{bin_dir}{os.pathsep}{os.environ.get('PATH', '')}", APPROVED_APPS_ENV: str(listing)}


def approved_for_node(node_config: dict[str, object], default: str) -> list[str]:
    """The bundles a launched SuperNode may run: its owner policy's ``approved-apps``, else ``default``."""
    from dpfl.privacy.owner_policy import OwnerPolicy, OwnerPolicyError

    path = node_config.get("privacy-policy")
    if path:
        try:
            policy = OwnerPolicy.load(str(path))
        except OwnerPolicyError as exc:
            raise ConfigError(str(exc)) from None
        if policy.approved_apps:
            return list(policy.approved_apps)
    return [default]
