"""``dpfl keys`` and ``dpfl app-hash``, and the enrolment and app-approval flags of ``dpfl server``/``client``.

A data owner runs ``dpfl keys`` once on its own machine and sends the operator only NAME.pub; it runs
``dpfl app-hash`` on the checkout it reviewed and puts the hash in its policy's ``approved-apps``. The
operator passes the public keys to ``dpfl server --enrol``. See docs/security.md for what each defends.
"""

from __future__ import annotations

import argparse
from pathlib import Path

from dpfl.simulations.cli.common import console, fail
from dpfl.simulations.config import ConfigError


def register(sub: argparse._SubParsersAction) -> None:
    """Add ``keys`` and ``app-hash`` to the ``dpfl`` parser."""
    p = sub.add_parser("keys", help="make this data owner's node key pair (only the .pub goes to the operator)",
                       description="Write NAME.key (private, mode 600: it stays on this machine) and NAME.pub "
                                   "into DIR. The operator enrols NAME.pub with `dpfl server --enrol`; this "
                                   "owner starts its client with `dpfl client --node-key DIR/NAME.key`.")
    p.add_argument("directory", metavar="DIR")
    p.add_argument("--name", required=True, help="this node's name (the operator sees it; letters, digits, . _ -)")
    p.add_argument("--force", action="store_true", help="replace an existing key (it must be enrolled again)")
    p.set_defaults(func=cmd_keys)

    p = sub.add_parser("app-hash", help="print the SHA-256 of the Flower app bundle built from a checkout",
                       description="Build the app bundle `flwr run` would send from PATH (default: the dpfl "
                                   "checkout installed here) and print its SHA-256: the value a data owner "
                                   "puts in its policy's approved-apps after reviewing that code.")
    p.add_argument("path", nargs="?", default=None, metavar="PATH")
    p.set_defaults(func=cmd_app_hash)


def add_server_flags(p: argparse.ArgumentParser) -> None:
    p.add_argument("--enrol", action="append", default=[], metavar="FILE|DIR",
                   help="a data owner's public key (NAME.pub from `dpfl keys`), or a folder of them; only "
                        "SuperNodes signing with an enrolled key get in (repeatable; needs TLS)")
    p.add_argument("--any-node", action="store_true",
                   help="accept any SuperNode that holds the CA certificate (no enrolment; Flower warns)")


def add_client_flags(p: argparse.ArgumentParser) -> None:
    p.add_argument("--node-key", default=None, metavar="FILE",
                   help="this node's private key (NAME.key from `dpfl keys`); the server admits it only if the "
                        "operator enrolled NAME.pub")
    p.add_argument("--approve-app", action="append", default=[], metavar="SHA256",
                   help="an app bundle this node may run (`dpfl app-hash`), besides its policy's approved-apps; "
                        "default when neither is given: the bundle of the dpfl checkout installed here")


def cmd_keys(args: argparse.Namespace) -> int:
    from dpfl.simulations.deploy.node_keys import NodeKeyError, generate_node_key

    try:
        private, public = generate_node_key(args.directory, args.name, overwrite=args.force)
    except (NodeKeyError, OSError) as exc:
        return fail(str(exc))
    console.print(f"wrote {private} (private: keep it on this machine) and {public}")
    console.print(f"  send {public.name} to the operator, who enrols it: dpfl server --enrol {public.name} ...")
    console.print(f"  start this node with:                        dpfl client --node-key {private} ...")
    return 0


def cmd_app_hash(args: argparse.Namespace) -> int:
    from dpfl.simulations.deploy.approval import app_bundle_hash
    from dpfl.simulations.deploy.flower import repo_root
    from dpfl.simulations.deploy.supervisor import LaunchError

    try:
        root = Path(args.path).expanduser().resolve() if args.path else repo_root()
        if not (root / "pyproject.toml").is_file():
            raise LaunchError(f"{root} holds no pyproject.toml: give the folder of a Flower app")
        digest = app_bundle_hash(root)
    except LaunchError as exc:
        return fail(str(exc))
    console.print(digest, highlight=False, soft_wrap=True)
    return 0


def client_approved_apps(args: argparse.Namespace, policy_apps: tuple[str, ...]) -> tuple[list[str], str]:
    """The bundles this node may run, and where they came from (for the log); ConfigError if none can be."""
    from dpfl.simulations.deploy.approval import app_bundle_hash, check_app_hashes
    from dpfl.simulations.deploy.flower import repo_root
    from dpfl.simulations.deploy.supervisor import LaunchError

    given = check_app_hashes(args.approve_app, "--approve-app") + list(policy_apps)
    if given:
        return sorted(set(given)), "the privacy policy's approved-apps and --approve-app"
    try:
        return [app_bundle_hash(repo_root())], "the bundle of the dpfl checkout installed here"
    except LaunchError as exc:
        raise ConfigError(f"{exc}; or name the app bundles this node may run with --approve-app SHA256") from None
