"""Only enrolled parties get in, operators' APIs stay local, and a node runs only the app its owner approved.

The federation test starts the real SuperLink (SuperNode authentication on, TLS) and the real nginx
gateway, then tries what an outsider holding only ``ca.crt`` would: list runs and enrol itself through the
public address (403 from the gateway), join without a key or with a key nobody enrolled (refused, the
SuperNode gives up); an enrolled key joins. The app guard is checked against Flower's ClientApp runner.
"""

from __future__ import annotations

import hashlib
import inspect
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ed25519

from dpfl.client.app_guard import UnapprovedApp, check_bundle, guarded, read_approved
from dpfl.privacy.owner_policy import OwnerPolicy, OwnerPolicyError
from dpfl.simulations.deploy.approval import app_bundle_hash, approved_for_node, guard_environment
from dpfl.simulations.deploy.certs import generate_certificates
from dpfl.simulations.deploy.flower import repo_root, write_flower_home
from dpfl.simulations.deploy.gateway import FLEET_PREFIX, gateway_config
from dpfl.simulations.deploy.node_keys import (
    EnrolledNode,
    NodeKeyError,
    check_private_key,
    enrolment_list,
    generate_node_key,
)
from dpfl.simulations.deploy.processes import free_ports, pids_with_marker
from dpfl.simulations.deploy.secure_link import start_secure_link
from dpfl.simulations.deploy.supervisor import Supervisor

DEPLOYABLE = (shutil.which("flower-superlink") and shutil.which("flower-supernode") and shutil.which("flwr")
              and sys.platform.startswith("linux"))
needs_flower = pytest.mark.skipif(not DEPLOYABLE, reason="needs Flower's deployment commands on Linux")
POLICY = 'data-source = "h"\nmax-epsilon = 10.0\n'


# --- node keys ----------------------------------------------------------------------------------------------
def test_node_keys_are_made_checked_and_never_overwritten(tmp_path: Path) -> None:
    private, public = generate_node_key(tmp_path, "alice")
    assert private.stat().st_mode & 0o777 == 0o600
    assert check_private_key(private) == private
    assert public.read_text().startswith("ecdsa-sha2-nistp384 ")
    with pytest.raises(NodeKeyError, match="already exists"):
        generate_node_key(tmp_path, "alice")
    with pytest.raises(NodeKeyError, match="not an OpenSSH private key"):
        check_private_key(public)  # the .pub given where the private key belongs
    with pytest.raises(NodeKeyError, match="does not exist"):
        check_private_key(tmp_path / "nobody.key")
    other = ed25519.Ed25519PrivateKey.generate()
    (tmp_path / "ed.key").write_bytes(other.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.OpenSSH, serialization.NoEncryption()))
    with pytest.raises(NodeKeyError, match="NIST curve"):
        check_private_key(tmp_path / "ed.key")
    with pytest.raises(NodeKeyError, match="not valid"):
        generate_node_key(tmp_path, "../evil")


def test_enrolment_list_reads_files_and_folders_and_refuses_what_flower_would_not(tmp_path: Path) -> None:
    generate_node_key(tmp_path / "owners", "alice")
    generate_node_key(tmp_path / "owners", "bob")
    nodes = enrolment_list([tmp_path / "owners"])
    assert [n.name for n in nodes] == ["alice", "bob"]
    (tmp_path / "bad.pub").write_text("not a key\n")
    with pytest.raises(NodeKeyError, match="bad.pub is not an OpenSSH public key"):
        enrolment_list([tmp_path / "bad.pub"])
    (tmp_path / "empty").mkdir()
    with pytest.raises(NodeKeyError, match="no \\*.pub"):
        enrolment_list([tmp_path / "empty"])
    with pytest.raises(NodeKeyError, match="does not exist"):
        enrolment_list([tmp_path / "missing.pub"])


# --- gateway ------------------------------------------------------------------------------------------------
def test_gateway_forwards_only_the_fleet_api(tmp_path: Path) -> None:
    certs = generate_certificates(tmp_path / "certs")
    text = gateway_config("0.0.0.0", 9092, 40000, certs, tmp_path)
    locations = [line.strip() for line in text.splitlines() if line.strip().startswith("location")]
    assert locations == [f"location {FLEET_PREFIX} {{", "location / {"]
    assert "proxy_pass https://127.0.0.1:40000;" in text and "return 403" in text
    assert "listen 0.0.0.0:9092 ssl;" in text and "proxy_ssl_verify on;" in text
    assert str(certs.ca_cert) in text  # the SuperLink's certificate is verified, not merely encrypted to
    plain = gateway_config("127.0.0.1", 9092, 40000, None, tmp_path)
    assert "ssl" not in plain and "proxy_pass http://127.0.0.1:40000;" in plain


# --- app approval -------------------------------------------------------------------------------------------
def test_the_guard_refuses_an_unapproved_bundle_before_flower_unpacks_it(tmp_path: Path) -> None:
    bundle, other = b"PK approved bundle", b"PK the server's other bundle"
    approved = frozenset({hashlib.sha256(bundle).hexdigest()})
    unpacked: list[bytes] = []
    install = guarded(lambda content, *a, **k: unpacked.append(content) or tmp_path, approved, "test")
    with pytest.raises(UnapprovedApp, match=hashlib.sha256(other).hexdigest()):
        install(other, skip_prompt=True)
    assert unpacked == []  # nothing of the refused bundle was written, let alone imported
    install(bundle, skip_prompt=True)
    assert unpacked == [bundle]
    assert check_bundle(bundle, approved) == hashlib.sha256(bundle).hexdigest()
    assert read_approved(None) == frozenset() and read_approved(tmp_path / "missing") == frozenset()  # fail closed


def test_the_guard_hooks_the_call_flowers_clientapp_runner_makes() -> None:
    """If Flower stops installing the bundle through this name, the guard would silently stop guarding."""
    import flwr.supernode.runtime.run_clientapp as runner

    source = inspect.getsource(runner.run_clientapp)
    assert "install_from_fab(fab.content" in source
    assert source.index("install_from_fab(") < source.index("load_client_app_fn(")
    assert callable(runner.install_from_fab)


def test_guard_environment_puts_the_guard_first_on_path(tmp_path: Path) -> None:
    digest = "ab" * 32
    env = guard_environment(tmp_path, [digest])
    first = env["PATH"].split(os.pathsep)[0]
    assert shutil.which("flwr-clientapp", path=env["PATH"]) == str(Path(first) / "flwr-clientapp")
    assert read_approved(env["DPFL_APPROVED_APPS_FILE"]) == {digest}
    assert "dpfl.client.app_guard" in (Path(first) / "flwr-clientapp").read_text()


def test_approved_apps_in_the_owner_policy(tmp_path: Path) -> None:
    digest = "0f" * 32
    assert OwnerPolicy.from_mapping({"data-source": "h", "max-epsilon": 1.0,
                                     "approved-apps": [digest.upper()]}).approved_apps == (digest,)
    for bad in ([], ["abc"], "0f" * 32, [1]):
        with pytest.raises(OwnerPolicyError, match="approved-apps"):
            OwnerPolicy.from_mapping({"data-source": "h", "max-epsilon": 1.0, "approved-apps": bad})
    policy = tmp_path / "p.toml"
    policy.write_text(POLICY + f'approved-apps = ["{digest}"]\n')
    assert approved_for_node({"privacy-policy": str(policy)}, "11" * 32) == [digest]
    (tmp_path / "q.toml").write_text(POLICY)
    assert approved_for_node({"privacy-policy": str(tmp_path / "q.toml")}, "11" * 32) == ["11" * 32]


def test_the_app_hash_is_that_of_the_bundle_flwr_run_builds() -> None:
    from flwr.cli.build import build_fab_from_disk

    root = repo_root()
    assert app_bundle_hash(root) == hashlib.sha256(build_fab_from_disk(root)).hexdigest()
    out = subprocess.run([sys.executable, "-m", "dpfl.simulations.cli.main", "app-hash"], capture_output=True,
                         text=True, timeout=120)
    assert out.returncode == 0 and out.stdout.strip() == app_bundle_hash(root), out.stderr


# --- a real SuperLink behind the gateway --------------------------------------------------------------------
def _flwr(home: Path, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(["flwr", *args], env={**os.environ, "FLWR_HOME": str(home)}, capture_output=True,
                          text=True, timeout=60)


def _supernode(sup: Supervisor, name: str, address: str, ca: Path, key: Path | None, port: int,
               tmp: Path) -> object:
    cmd = ["flower-supernode", "--superlink", address, "--root-certificates", str(ca), "--port", str(port),
           "--max-retries", "3", "--max-wait-time", "20"]
    if key is not None:
        cmd += ["--auth-supernode-private-key", str(key)]
    return sup.start(name, cmd, env={"FLWR_HOME": str(tmp / name)})


@needs_flower
def test_only_enrolled_nodes_join_and_nobody_reaches_control_from_outside(tmp_path: Path) -> None:
    certs = generate_certificates(tmp_path / "certs")
    alice_key, alice_pub = generate_node_key(tmp_path / "keys", "alice")
    mallory_key, _ = generate_node_key(tmp_path / "keys", "mallory")  # a key nobody enrolled
    lines: list[str] = []
    sup = Supervisor(tmp_path / "logs", lambda proc, line: lines.append(f"[{proc.name}] {line}"))
    try:
        public_port, *node_ports = free_ports(4)
        link = start_secure_link(sup, public_host="127.0.0.1", public_port=public_port, certs=certs,
                                 enrolled=[EnrolledNode("alice", alice_pub)], work_dir=tmp_path / "link",
                                 startup_timeout=60)
        assert set(link.node_ids) == {"alice"}
        # an outsider with only ca.crt, pointed at the public address: Control is not served there
        outsider = tmp_path / "outsider"
        write_flower_home(outsider, "fed", link.public_address, ca_cert=certs.ca_cert)
        listed = _flwr(outsider, "ls", "fed")
        assert listed.returncode != 0 and "403" in listed.stdout + listed.stderr
        enrolled_self = _flwr(outsider, "supernode", "register", str(tmp_path / "keys" / "mallory.pub"), "fed")
        assert enrolled_self.returncode != 0 and "403" in enrolled_self.stdout + enrolled_self.stderr
        submitted = _flwr(outsider, "run", str(repo_root()), "fed")  # its own app, were Control reachable
        assert submitted.returncode != 0 and "403" in submitted.stdout + submitted.stderr
        # the operator, on this machine, sees only the enrolled node
        nodes = _flwr(link.operator_home, "supernode", "list", "dpfl", "--format", "json")
        assert nodes.returncode == 0, nodes.stdout + nodes.stderr
        assert str(link.node_ids["alice"]) in nodes.stdout
        keyless = _supernode(sup, "keyless", link.public_address, certs.ca_cert, None, node_ports[0], tmp_path)
        mallory = _supernode(sup, "mallory", link.public_address, certs.ca_cert, mallory_key, node_ports[1], tmp_path)
        alice = _supernode(sup, "alice", link.public_address, certs.ca_cert, alice_key, node_ports[2], tmp_path)
        deadline = time.monotonic() + 90
        while (keyless.poll() is None or mallory.poll() is None) and time.monotonic() < deadline:
            time.sleep(0.5)
        assert keyless.poll() not in (None, 0) and mallory.poll() not in (None, 0), "\n".join(lines[-40:])
        activated = f"Activated node_id={link.node_ids['alice']}"
        while not any(activated in x for x in link.superlink.lines) and time.monotonic() < deadline:
            time.sleep(0.5)
        assert any(activated in x for x in link.superlink.lines), "\n".join(lines[-40:])
        assert alice.poll() is None
        activations = [x for x in link.superlink.lines if "Activated node_id=" in x]
        assert len(activations) == 1  # nobody else got in
        assert not any("SuperNode authentication is disabled" in x for x in link.superlink.lines)
        # a local process without the shared secret cannot claim the ServerApp's task
        rogue = sup.start("rogue-superexec", ["flower-superexec", "--runtime-api-address", link.control_address,
                                              "--root-certificates", str(certs.ca_cert)])
        deadline = time.monotonic() + 60
        while rogue.poll() is None and time.monotonic() < deadline:
            time.sleep(0.5)
        assert rogue.poll() is not None, "a SuperExec without the secret kept running"
        assert any("SuperExec authentication failed" in x for x in link.superlink.lines)
        assert link.failure() is None  # dpfl's own SuperExec is still there
    finally:
        sup.stop_all()
    assert pids_with_marker(sup.marker) == []


@needs_flower
def test_without_enrolment_flowers_own_warning_is_shown(tmp_path: Path) -> None:
    from io import StringIO

    from rich.console import Console

    from dpfl.simulations.deploy.logs import LogPrinter

    out = StringIO()
    printer = LogPrinter(Console(file=out, width=300), merged_log=tmp_path / "merged.log")
    sup = Supervisor(tmp_path / "logs", printer)
    try:
        (public_port,) = free_ports(1)
        link = start_secure_link(sup, public_host="127.0.0.1", public_port=public_port, certs=None, enrolled=None,
                                 work_dir=tmp_path / "link", startup_timeout=60)
        deadline = time.monotonic() + 20
        while "authentication is disabled" not in out.getvalue() and time.monotonic() < deadline:
            time.sleep(0.2)
        assert link.failure() is None
    finally:
        sup.stop_all()
        printer.close()
    assert "SuperNode authentication is disabled" in out.getvalue()  # never filtered


def test_dpfl_server_refuses_to_start_without_saying_whom_it_admits(tmp_path: Path) -> None:
    certs = generate_certificates(tmp_path / "certs")
    cmd = [sys.executable, "-m", "dpfl.simulations.cli.main", "server", "--certificates", str(certs.directory),
           "--dataset", "digits", "--run-dir", str(tmp_path)]
    out = subprocess.run(cmd, capture_output=True, text=True, timeout=120)
    assert out.returncode == 2 and "--enrol FILE|DIR" in out.stdout + out.stderr
    insecure = subprocess.run([*cmd[:4], "--insecure", "--enrol", str(tmp_path), "--dataset", "digits"],
                              capture_output=True, text=True, timeout=120)
    assert insecure.returncode == 2 and "--enrol needs TLS" in insecure.stdout + insecure.stderr


@needs_flower
@pytest.mark.slow
def test_a_launched_node_runs_no_app_its_owner_did_not_approve(tmp_path: Path) -> None:
    """The server's bundle is not in the owner's approved-apps: refused before any of it runs, nothing trains."""
    policy = tmp_path / "policy.toml"
    policy.write_text(POLICY + f'state-dir = "{tmp_path / "state"}"\napproved-apps = ["{"ab" * 32}"]\n')
    cmd = [sys.executable, "-m", "dpfl.simulations.cli.main", "launch", "--clients", "2", "--privacy-policy",
           str(policy), "--dataset", "digits", "--model", "mlp", "--num-server-rounds", "1", "--target-epsilon", "0",
           "--noise-multiplier", "1.0", "--round-timeout", "60", "--run-dir", str(tmp_path), "--run-name", "r"]
    out = subprocess.run(cmd, capture_output=True, text=True, timeout=400)
    text = out.stdout + out.stderr
    assert out.returncode != 0, text[-3000:]
    assert "did not approve app bundle sha256" in text and "nothing was trained" in text, text[-3000:]
    assert not any(p.read_text() for p in (tmp_path / "state").glob("*.jsonl"))
