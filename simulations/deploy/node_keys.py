"""Data owners' node keys: the identity Flower's SuperNode authentication checks, made and read by dpfl.

Each data owner makes its own key pair (``dpfl keys DIR --name NAME``) on its own machine and sends only
the public half to the operator; the private half never leaves that machine. The operator enrols the public
keys (``dpfl server --enrol``), and the SuperLink (``--enable-supernode-auth``) then admits only SuperNodes
that sign with an enrolled key: holding the CA certificate, which every client gets, is not enough.

Flower 1.42 wants EC keys on a NIST curve in OpenSSH format (``flwr supernode register`` loads the public
key with ``load_ssh_public_key``, ``flower-supernode`` the private key with ``load_ssh_private_key``); P-384
is what Flower's own guide uses.
"""

from __future__ import annotations

import os
import re
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from cryptography.exceptions import UnsupportedAlgorithm
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec

NODE_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$")
NIST_CURVES = (ec.SECP256R1, ec.SECP384R1, ec.SECP521R1)


class NodeKeyError(ValueError):
    """A node key is missing, of the wrong kind, or would overwrite one; the message says what to do."""


@dataclass(frozen=True)
class EnrolledNode:
    """One enrolled data owner: its name (the public key file's stem) and its public key file."""

    name: str
    public_key: Path


def generate_node_key(directory: str | Path, name: str, *, overwrite: bool = False) -> tuple[Path, Path]:
    """Write ``NAME.key`` (private, mode 600) and ``NAME.pub`` into ``directory``; return both paths."""
    if not NODE_NAME.match(name):
        raise NodeKeyError(f"--name {name!r} is not valid: letters, digits, '.', '_' or '-', at most 64")
    where = Path(directory).expanduser().resolve()
    private, public = where / f"{name}.key", where / f"{name}.pub"
    for path in (private, public):
        if path.exists() and not overwrite:
            raise NodeKeyError(f"{path} already exists; pass --force to replace this node's key (the operator "
                               "must then enrol the new public key)")
    where.mkdir(parents=True, exist_ok=True)
    key = ec.generate_private_key(ec.SECP384R1())
    data = key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.OpenSSH,
                             serialization.NoEncryption())
    fd = os.open(private, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)  # never world-readable
    with os.fdopen(fd, "wb") as fh:
        fh.write(data)
    public.write_bytes(key.public_key().public_bytes(serialization.Encoding.OpenSSH,
                                                     serialization.PublicFormat.OpenSSH) + f" {name}\n".encode())
    return private, public


def check_private_key(path: str | Path) -> Path:
    """The absolute path of a node's private key, checked to be one Flower's SuperNode accepts."""
    where = Path(path).expanduser().resolve()
    try:
        key = serialization.load_ssh_private_key(where.read_bytes(), None)
    except FileNotFoundError:
        raise NodeKeyError(f"--node-key {path} does not exist; make it with `dpfl keys DIR --name NAME`") from None
    except (OSError, ValueError, TypeError, UnsupportedAlgorithm) as exc:
        raise NodeKeyError(f"--node-key {path} is not an OpenSSH private key ({exc}); give the NAME.key that "
                           "`dpfl keys` wrote (not the .pub)") from None
    _check_curve(key, f"--node-key {path}")
    return where


def load_public_key(path: Path) -> None:
    """Refuse a public key file Flower's registration would not take, naming the file."""
    try:
        key = serialization.load_ssh_public_key(path.read_bytes())
    except (OSError, ValueError, UnsupportedAlgorithm) as exc:
        raise NodeKeyError(f"{path} is not an OpenSSH public key ({exc}); enrol the NAME.pub that `dpfl keys` "
                           "wrote") from None
    _check_curve(key, str(path))


def _check_curve(key: object, what: str) -> None:
    curve = getattr(key, "curve", None)
    if not isinstance(key, ec.EllipticCurvePrivateKey | ec.EllipticCurvePublicKey) \
            or not isinstance(curve, NIST_CURVES):
        raise NodeKeyError(f"{what} is not an EC key on a NIST curve, which Flower's SuperNode authentication "
                           "requires; make one with `dpfl keys DIR --name NAME`")


def enrolment_list(sources: Sequence[str | Path]) -> list[EnrolledNode]:
    """Every public key named by ``sources`` (files, or folders of ``*.pub``), checked; one node per name."""
    nodes: dict[str, EnrolledNode] = {}
    for source in sources:
        where = Path(source).expanduser().resolve()
        if where.is_dir():
            files = sorted(where.glob("*.pub"))
            if not files:
                raise NodeKeyError(f"--enrol {source}: no *.pub files in this folder; put each data owner's "
                                   "public key (from `dpfl keys`) in it")
        elif where.is_file():
            files = [where]
        else:
            raise NodeKeyError(f"--enrol {source} does not exist; give a public key file or a folder of them")
        for file in files:
            load_public_key(file)
            name = file.stem
            if not NODE_NAME.match(name):
                raise NodeKeyError(f"{file}: the file name must be NAME.pub with NAME of letters, digits, '.', "
                                   "'_' or '-'")
            if name in nodes and nodes[name].public_key != file:
                raise NodeKeyError(f"two public keys are named {name}: {nodes[name].public_key} and {file}; "
                                   "rename one")
            nodes[name] = EnrolledNode(name, file)
    return list(nodes.values())
