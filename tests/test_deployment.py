"""The deployment engine with real processes on 127.0.0.1: flower-superlink, flower-supernode, flwr run.

The fast suite runs one real 2-client federation (and compares it with the in-process engine); TLS,
a client killed mid-run and a client restarted mid-run are slow. After every federation: no process
started for it is left (every one carries the supervisor's marker) and no port it used is listening.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import signal
import ssl
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

from dpfl.privacy.rundata import read_summary
from dpfl.simulations.config import resolve
from dpfl.simulations.deploy.certs import CertificateError, certificate_hosts, generate_certificates, load_certificates
from dpfl.simulations.deploy.flower import node_config_string
from dpfl.simulations.deploy.logs import LogPrinter
from dpfl.simulations.deploy.processes import (
    descendants,
    free_ports,
    is_alive,
    listening_ports,
    pids_with_marker,
    port_listening,
)
from dpfl.simulations.deploy.supervisor import Supervisor

ROOT = Path(__file__).resolve().parent.parent
FLOWER = shutil.which("flower-superlink") and shutil.which("flower-supernode") and shutil.which("flwr")
needs_flower = pytest.mark.skipif(not FLOWER or not sys.platform.startswith("linux"),
                                  reason="needs Flower's deployment commands on Linux")

# 2 clients, digits, deterministic noise: the launched run and the in-process run are the same computation.
BASE = {"dataset": "digits", "model": "mlp", "num-clients": 2, "num-server-rounds": 2, "batch-size": 64,
        "learning-rate": 0.1, "noise-multiplier": 1.0, "target-epsilon": 0.0, "delta": 1e-5,
        "deterministic-noise": True, "seed": 7, "round-timeout": 120.0}

# A bound, not a wait: a round ends as soon as every client replied, or when Flower reports a dead node
# (no heartbeat for ~60 s). It must exceed a slow round: each round starts a fresh ClientApp process that
# imports torch and Opacus, 20-30 s on a loaded 2-core machine; a shorter timeout drops healthy clients.
SLOW_ROUND_TIMEOUT = 120.0


def cli_flags(values: dict) -> list[str]:
    return [f"--{k}={str(v).lower() if isinstance(v, bool) else v}" for k, v in values.items()]


def dpfl(*args: str, timeout: float = 300) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "dpfl.simulations.cli.main", *args], cwd=ROOT, capture_output=True,
                          text=True, timeout=timeout)


def start_dpfl(*args: str, log: Path) -> subprocess.Popen[bytes]:
    """A `dpfl` command in the background (own session, output to a file), for tests that act mid-run."""
    fh = open(log, "wb")  # noqa: SIM115 - the child owns it; closed when the test ends
    return subprocess.Popen([sys.executable, "-m", "dpfl.simulations.cli.main", *args], cwd=ROOT, stdout=fh,
                            stderr=subprocess.STDOUT, start_new_session=True)


def federation(run_path: Path, timeout: float = 180) -> dict:
    path = run_path / "logs" / "federation.json"
    deadline = time.monotonic() + timeout
    while not path.exists():
        assert time.monotonic() < deadline, "the federation never came up"
        time.sleep(0.2)
    return json.loads(path.read_text())


def wait_rounds(run_path: Path, rounds: int, proc: subprocess.Popen, timeout: float = 300) -> None:
    deadline = time.monotonic() + timeout
    metrics = run_path / "metrics.jsonl"
    while not (metrics.exists() and len(metrics.read_text().splitlines()) >= rounds):
        assert proc.poll() is None, f"dpfl exited early with code {proc.returncode}"
        assert time.monotonic() < deadline, f"round {rounds} never finished"
        time.sleep(0.2)


def kill_tree(pid: int, sig: int = signal.SIGKILL) -> None:
    """A machine dying: the SuperNode and everything under it (SuperExec, ClientApp)."""
    for p in [pid, *descendants(pid)]:
        with contextlib.suppress(ProcessLookupError):
            os.kill(p, sig)


def assert_nothing_left(fed: dict) -> None:
    """No process of this federation alive, no port of it listening, no Flower process using its home."""
    deadline = time.monotonic() + 10
    while pids_with_marker(fed["marker"]) and time.monotonic() < deadline:
        time.sleep(0.2)
    assert pids_with_marker(fed["marker"]) == []
    ports = [int(fed["superlink_address"].rsplit(":", 1)[1])] + [c["port"] for c in fed["clients"].values()]
    assert not set(ports) & listening_ports(), f"ports still listening: {set(ports) & listening_ports()}"
    ps = subprocess.run(["ps", "-ww", "-eo", "pid,stat,args"], capture_output=True,
                        text=True).stdout.splitlines()
    home = str(Path(fed["flower_home"]).parent)
    stray = [line for line in ps if ("flower-" in line or "flwr" in line) and " Z" not in line
             and (home in line or any(f":{p}" in line for p in ports))]
    assert stray == [], stray


def launch_and_kill_client_1(run_path: Path, *, rounds: int, min_train_clients: int,
                             timeout: float) -> tuple[int, dict]:
    """`dpfl launch --clients 2` into ``run_path`` (log: launch.out beside it); once round 1 is written,
    kill client-1's SuperNode tree and wait for dpfl to exit. Returns (exit code, federation.json)."""
    proc = start_dpfl("launch", "--clients", "2", *cli_flags({
        **BASE, "num-server-rounds": rounds, "round-timeout": SLOW_ROUND_TIMEOUT,
        "min-train-clients": min_train_clients, "run-dir": run_path.parent, "run-name": run_path.name}),
        log=run_path.parent / "launch.out")
    try:
        fed = federation(run_path)
        wait_rounds(run_path, 1, proc)
        kill_tree(fed["clients"]["client-1"]["pid"])  # round 2 is under way
        return proc.wait(timeout=timeout), fed
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGTERM)
            proc.wait(30)


def summary(run_path: Path) -> dict:
    found = read_summary(run_path)
    assert found is not None, f"{run_path} has no readable summary.json"
    return found


def ledger_entries(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


# --- fast: no Flower processes ----------------------------------------------------------------------------
def test_certificates_verify_over_a_real_tls_handshake(tmp_path: Path) -> None:
    paths = generate_certificates(tmp_path / "certs", ["fl.example.org", "10.1.2.3"])
    hosts = certificate_hosts(paths.server_cert)
    for host in ("127.0.0.1", "localhost", "fl.example.org", "10.1.2.3"):
        assert host in hosts
    assert oct(paths.server_key.stat().st_mode & 0o777) == "0o600"
    with pytest.raises(CertificateError, match="already exists"):
        generate_certificates(tmp_path / "certs")
    assert load_certificates(tmp_path / "certs").ca_cert == paths.ca_cert
    with pytest.raises(CertificateError, match="dpfl certs"):
        load_certificates(tmp_path / "nowhere")

    server_ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    server_ctx.load_cert_chain(paths.server_cert, paths.server_key)
    client_ctx = ssl.create_default_context(cafile=str(paths.ca_cert))
    import socket

    listener = socket.create_server(("127.0.0.1", 0))
    port = listener.getsockname()[1]

    def serve() -> None:
        conn, _ = listener.accept()
        with server_ctx.wrap_socket(conn, server_side=True) as tls:
            tls.sendall(b"ok")

    thread = threading.Thread(target=serve, daemon=True)
    thread.start()
    with socket.create_connection(("127.0.0.1", port)) as raw, \
            client_ctx.wrap_socket(raw, server_hostname="127.0.0.1") as tls:
        assert tls.recv(2) == b"ok"  # hostname 127.0.0.1 verified against the SAN, chain against the CA
    thread.join(5)
    listener.close()


def test_supervisor_stops_detached_grandchildren_and_frees_ports(tmp_path: Path) -> None:
    """Flower's SuperExec runs in a new session, so process groups are not enough: the marker is."""
    port = free_ports(1)[0]
    grandchild = f"import socket, time; s = socket.create_server(('127.0.0.1', {port})); time.sleep(600)"
    script = (f"import subprocess, sys, time\n"
              f"subprocess.Popen([sys.executable, '-c', {grandchild!r}], start_new_session=True)\n"
              "print('started', flush=True); time.sleep(600)\n")
    lines: list[str] = []
    sup = Supervisor(tmp_path / "logs", lambda proc, line: lines.append(line), grace=1.0)
    proc = sup.start("parent", [sys.executable, "-c", script])
    deadline = time.monotonic() + 20
    while not port_listening(port):
        assert time.monotonic() < deadline
        time.sleep(0.05)
    assert len(pids_with_marker(sup.marker)) == 2
    assert sup.stop_all() == []
    assert pids_with_marker(sup.marker) == [] and not is_alive(proc.pid)
    assert not port_listening(port)
    assert "started" in lines and "started" in (tmp_path / "logs" / "parent.log").read_text()


def test_log_printer_shows_rounds_and_errors_hides_flower_chatter() -> None:
    from io import StringIO

    from rich.console import Console

    out = StringIO()
    printer = LogPrinter(Console(file=out, width=200, highlight=False))
    printer(None, "INFO :      Start `flwr-serverapp` process", name="server")
    printer(None, "11/24/2026 18:26:45:INFO:aggregate_train: Received 2 results", name="server")
    printer(None, "18:26:45 dpfl round   1/2 | accuracy 0.6694 | ε max 2.355", name="server")
    printer(None, "INFO :      Received successfully", name="client-0")
    printer(None, "WARNING :   something odd 1", name="client-0")
    printer(None, "WARNING :   something odd 2", name="client-1")  # same warning: shown once
    printer(None, "Traceback (most recent call last):", name="client-1")
    printer(None, '  File "x.py", line 1', name="client-1")
    printer(None, "ValueError: boom", name="client-1")
    text = out.getvalue()
    assert "[server] 18:26:45 dpfl round   1/2" in text
    assert "flwr-serverapp" not in text and "aggregate_train" not in text
    assert "Received successfully" not in text
    assert text.count("something odd") == 1
    assert "[client-1] ValueError: boom" in text and 'File "x.py"' in text


def test_node_config_refuses_values_flower_would_split() -> None:
    assert node_config_string({"partition-id": 1, "data-dir": "/d"}) == 'partition-id=1 data-dir="/d"'
    with pytest.raises(ValueError, match="spaces"):
        node_config_string({"data-dir": "/my data"})


def test_a_torn_or_incomplete_summary_is_one_error_line_not_a_traceback(tmp_path: Path,
                                                                       capsys: pytest.CaptureFixture[str]) -> None:
    """Engines in other processes only have summary.json; a run killed while writing it must still end
    with one clear line and exit code 1."""
    from dpfl.simulations.cli.deploy import _print_run_summary
    from dpfl.simulations.cli.summary import SummaryError, client_events, result_from_summary

    cfg = resolve({**BASE, "run-dir": str(tmp_path), "run-name": "torn"})
    run_path = tmp_path / "torn"
    run_path.mkdir()
    (run_path / "summary.json").write_text('{"rounds_completed": 2, "final_acc')  # torn write
    assert read_summary(run_path) is None
    with pytest.raises(SummaryError, match="missing or unreadable"):
        result_from_summary(read_summary(run_path), run_path)
    with pytest.raises(SummaryError, match="final_accuracy"):
        result_from_summary({"rounds_completed": 2, "final_accuracy": None}, run_path)
    assert _print_run_summary(cfg, run_path, {"rounds_completed": 2}) == 1
    err = capsys.readouterr().err
    assert "error:" in err and "final_accuracy" in err and "Traceback" not in err
    assert len(err.strip().splitlines()) == 1
    assert client_events({"clients": {"client-000": {"events": [{"round": 2, "event": "dropped"}, "junk"]},
                                      "client-001": None}}) == [("client-000", 2, "dropped", "")]
    full = {"rounds_completed": 2, "final_accuracy": 0.5, "epsilon_max": 1.5, "delta": 1e-5,
            "epsilon_per_client": {"client-000": 1.5}, "wall_seconds": 3.0}
    assert _print_run_summary(cfg, run_path, full) == 0
    out = capsys.readouterr().out
    assert "rounds        2/2" in out and "ε             1.500 at δ = 1e-05" in out and "3.0 s" in out


def test_error_lines_show_brackets_instead_of_reading_them_as_markup(capsys: pytest.CaptureFixture[str]) -> None:
    from dpfl.simulations.cli.common import EXIT_BAD_INPUT, fail

    assert fail("no pyproject.toml with [tool.flwr.app] in /x") == EXIT_BAD_INPUT
    assert "[tool.flwr.app]" in capsys.readouterr().err


@pytest.mark.parametrize("args, message", [
    (["--clients", "0"], "--clients 0"),
    (["--clients", "2", "--num-clients", "3"], "disagrees"),
    (["--certificates", "/nonexistent/certs"], "dpfl certs"),
    (["--learning-rate", "-1"], "learning-rate"),
])
def test_launch_rejects_bad_input_before_starting_anything(args: list[str], message: str,
                                                           capsys: pytest.CaptureFixture[str]) -> None:
    import argparse

    from dpfl.simulations.cli import deploy as deploy_cli

    parser = argparse.ArgumentParser(prog="dpfl")
    deploy_cli.register(parser.add_subparsers(dest="command"))
    parsed = parser.parse_args(["launch", "--dataset", "digits", "--model", "mlp", *args])
    assert parsed.func(parsed) == 2
    out = capsys.readouterr()
    assert message in out.err + out.out
    assert "superlink" not in out.out.lower()


# --- fast: one real federation ----------------------------------------------------------------------------
@needs_flower
def test_launched_federation_matches_in_process_simulation(tmp_path: Path) -> None:
    """Same config, two engines: identical epsilon (same releases), accuracy within one point.

    The federation is started in-process (`launch_federation`, what `dpfl launch` calls after validating;
    the CLI itself is exercised by the slow tests) while the in-process reference runs: the federation
    mostly waits on Flower's 3 s polling, so the two overlap well."""
    from io import StringIO

    from rich.console import Console

    from dpfl.simulations.deploy.launch import launch_federation
    from dpfl.simulations.engines.simulate import preflight, simulate

    run_path = tmp_path / "launched"
    cfg = resolve({**BASE, "run-dir": str(tmp_path), "run-name": "launched"})
    preflight(cfg)
    out = StringIO()
    outcome: dict = {}
    thread = threading.Thread(target=lambda: outcome.update(result=launch_federation(
        cfg, run_path, console=Console(file=out, width=200, highlight=False))), daemon=True)
    thread.start()
    simulate(cfg.replace(**{"run-name": "inprocess", "workers": 1}), run_path=tmp_path / "inprocess")
    thread.join(300)
    result = outcome["result"]
    assert result.exit_code == 0, result.message + out.getvalue()[-4000:]
    assert result.leftover_pids == [] and result.leftover_ports == []
    text = out.getvalue()
    assert "[server]" in text and "round   2/2" in text
    assert "Starting Flower SuperNode" not in text  # Flower's INFO chatter stays in the logs
    fed = federation(run_path)
    assert_nothing_left(fed)
    for name in ("config.json", "metrics.jsonl", "model.pt", "summary.json"):
        assert (run_path / name).exists(), name
    assert (run_path / "logs" / "superlink.log").exists() and (run_path / "logs" / "client-1.log").exists()
    assert len(list((run_path / "ledgers").glob("*.jsonl"))) == 2
    launched = summary(run_path)
    assert launched["rounds_completed"] == 2 and not launched["stop_reason"]
    reference = summary(tmp_path / "inprocess")
    assert launched["epsilon_per_client"] == reference["epsilon_per_client"]  # identical, not approximately
    assert launched["epsilon_max"] == reference["epsilon_max"]
    assert abs(launched["final_accuracy"] - reference["final_accuracy"]) <= 0.01
    # the clients' own durable ledgers agree with the server's
    for cid in ("client-000", "client-001"):
        own = ledger_entries(run_path / "client-state" / f"{cid}.jsonl")
        assert [e["round"] for e in own] == [1, 2]
        assert own[-1]["epsilon"] == pytest.approx(launched["epsilon_per_client"][cid])


# --- slow: TLS, failures, durability ----------------------------------------------------------------------
@needs_flower
@pytest.mark.slow
def test_tls_federation(tmp_path: Path) -> None:
    assert dpfl("certs", str(tmp_path / "certs")).returncode == 0
    res = dpfl("launch", "--clients", "2", "--certificates", str(tmp_path / "certs"),
               *cli_flags({**BASE, "num-server-rounds": 1, "run-dir": tmp_path, "run-name": "tls"}))
    assert res.returncode == 0, res.stdout[-4000:] + res.stderr[-4000:]
    assert "TLS" in res.stdout and "plaintext" not in res.stdout
    fed = federation(tmp_path / "tls")
    assert fed["tls"] is True and fed["ca_cert"].endswith("ca.crt")
    link_log = (tmp_path / "tls" / "logs" / "superlink.log").read_text()
    assert "--ssl-certfile" in link_log.splitlines()[0] and "--insecure" not in link_log.splitlines()[0]
    for k in (0, 1):
        first = (tmp_path / "tls" / "logs" / f"client-{k}.log").read_text().splitlines()[0]
        assert "--root-certificates" in first and "--insecure" not in first
    assert summary(tmp_path / "tls")["rounds_completed"] == 1
    assert_nothing_left(fed)


@needs_flower
@pytest.mark.slow
def test_client_killed_mid_run_is_dropped_and_the_run_completes(tmp_path: Path) -> None:
    run_path = tmp_path / "kill"
    code, fed = launch_and_kill_client_1(run_path, rounds=3, min_train_clients=1, timeout=300)
    assert code == 0, (tmp_path / "launch.out").read_text()[-4000:]
    out = (tmp_path / "launch.out").read_text()
    result = summary(run_path)
    assert result["rounds_completed"] == 3 and not result["stop_reason"]
    events = result["clients"]["client-001"]["events"]
    assert events and events[0]["round"] == 2 and events[0]["event"] == "dropped", events
    assert "client-001 dropped in round 2" in out
    assert "client-1 (SuperNode pid" in out and "the run goes on" in out
    rows = [json.loads(x) for x in (run_path / "metrics.jsonl").read_text().splitlines()]
    assert [r["participants"] for r in rows] == [2, 1, 1]
    assert_nothing_left(fed)


@needs_flower
@pytest.mark.slow
def test_too_few_clients_left_ends_the_run_cleanly(tmp_path: Path) -> None:
    """min-train-clients=2 and one client gone: once Flower stops listing it (no heartbeat for ~60 s) the
    server stops and says why; until then a round waits for it at most round-timeout. Never forever."""
    run_path = tmp_path / "few"
    code, fed = launch_and_kill_client_1(run_path, rounds=5, min_train_clients=2, timeout=400)
    result = summary(run_path)
    assert 1 <= result["rounds_completed"] < 5
    assert "min-train-clients" in result["stop_reason"], result["stop_reason"]
    assert code == 0  # stopped cleanly after at least one round, as `dpfl simulate` reports it
    assert_nothing_left(fed)


@needs_flower
@pytest.mark.slow
@pytest.mark.parametrize("sig, code", [(signal.SIGTERM, 143), (signal.SIGINT, 130)])
def test_interrupted_launch_stops_every_process(tmp_path: Path, sig: int, code: int) -> None:
    flags = cli_flags({**BASE, "num-server-rounds": 5, "run-dir": tmp_path, "run-name": "stop"})
    plaintext = ["--insecure"] if sig == signal.SIGINT else []  # the opt-out path starts and stops the same way
    proc = start_dpfl("launch", "--clients", "2", *plaintext, *flags, log=tmp_path / "launch.out")
    try:
        fed = federation(tmp_path / "stop")  # written once every SuperNode has registered
        time.sleep(2)
        os.kill(proc.pid, sig)  # Ctrl-C reaches only dpfl: its children live in their own sessions
        assert proc.wait(timeout=60) == code, (tmp_path / "launch.out").read_text()[-3000:]
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait(30)
    assert "stopped every process" in (tmp_path / "launch.out").read_text()
    assert_nothing_left(fed)


@needs_flower
@pytest.mark.slow
def test_restarted_client_continues_its_ledger(tmp_path: Path) -> None:
    """Every round runs in a fresh ClientApp process and a restarted SuperNode has no memory: epsilon must
    continue from the client's ledger on disk, never from zero."""
    run_path = tmp_path / "restart"
    proc = start_dpfl("launch", "--clients", "2", *cli_flags({
        **BASE, "num-server-rounds": 3, "round-timeout": SLOW_ROUND_TIMEOUT, "min-train-clients": 1,
        "run-dir": tmp_path, "run-name": "restart"}), log=tmp_path / "launch.out")
    client = None
    try:
        fed = federation(run_path)
        wait_rounds(run_path, 1, proc)
        old = fed["clients"]["client-1"]["pid"]
        kill_tree(old, signal.SIGTERM)  # a clean restart: the SuperNode leaves, then comes back
        deadline = time.monotonic() + 30
        while is_alive(old) and time.monotonic() < deadline:
            time.sleep(0.1)
        client = start_dpfl("client", "--server", fed["superlink_address"], "--partition-id", "1",
                            "--num-partitions", "2", "--certificates", fed["ca_cert"],
                            "--node-key", fed["clients"]["client-1"]["node_key"], log=tmp_path / "client.out")
        assert proc.wait(timeout=300) == 0, (tmp_path / "launch.out").read_text()[-4000:]
    finally:
        for p in (proc, client):
            if p is not None and p.poll() is None:
                os.killpg(p.pid, signal.SIGTERM)
                p.wait(30)
    entries = ledger_entries(run_path / "client-state" / "client-001.jsonl")
    rounds = [e["round"] for e in entries]
    assert rounds[0] == 1 and len(rounds) >= 2, rounds  # trained before and after the restart
    eps = [e["epsilon"] for e in entries]
    assert all(b > a for a, b in zip(eps, eps[1:], strict=False)), eps  # never back to zero
    server_side = [e["round"] for e in ledger_entries(run_path / "ledgers" / "client-001.jsonl")]
    # charged at send: the server's ledger holds every round the client paid, plus any round it was sent while
    # it was gone (Flower still listed it) and then dropped: never below the client's own
    dropped = {e["round"] for e in summary(run_path)["clients"]["client-001"]["events"] if e["event"] == "dropped"}
    assert set(rounds) <= set(server_side) and set(server_side) - set(rounds) <= dropped, (server_side, rounds)
    server_eps = summary(run_path)["epsilon_per_client"]["client-001"]
    assert server_eps >= eps[-1] - 1e-9  # the server's epsilon is never below what the client spent
    if set(server_side) == set(rounds):
        assert server_eps == pytest.approx(eps[-1])
    assert_nothing_left(fed)


@pytest.mark.slow
@pytest.mark.parametrize("hostile", [{"delta": 0.5}, {"noise-multiplier": 0.3, "target-epsilon": 0.0},
                                     {"deterministic-noise": True}],
                         ids=["delta-0.5", "sigma-below-minimum", "deterministic-noise"])
def test_a_launched_federation_of_policy_holders_declines_a_hostile_run_config(tmp_path: Path,
                                                                                hostile: dict) -> None:
    """The run config is the server's; each SuperNode's policy is its own (node config): nothing trains."""
    policy = tmp_path / "policy.toml"
    policy.write_text(f'data-source = "h"\nmax-epsilon = 10.0\nmin-noise-multiplier = 0.5\n'
                      f'state-dir = "{tmp_path / "state"}"\n')
    res = dpfl("launch", "--clients", "2", "--privacy-policy", str(policy),
               *cli_flags({**BASE, "num-server-rounds": 1, "run-dir": tmp_path, "run-name": "hostile", **hostile}))
    assert res.returncode != 0, res.stdout[-4000:]
    assert "declined by its privacy policy" in res.stdout and "nothing was trained" in res.stdout
    result = summary(tmp_path / "hostile")
    assert result["rounds_completed"] == 0
    assert {c["status"] for c in result["clients"].values()} == {"declined (policy)"}
    assert not any(p.read_text() for p in (tmp_path / "hostile" / "ledgers").glob("*.jsonl"))
    assert not any(p.read_text() for p in (tmp_path / "state").glob("*.jsonl"))
