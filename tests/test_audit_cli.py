"""`dpfl audit` end to end: a digits federation with canaries, charged like any run, scored, written into
report/audit.json and the report; a client whose noise is off is caught; bad audits are refused before training."""

from __future__ import annotations

import dataclasses
import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from dpfl.client.canaries import CanaryError, DiracCanaries
from dpfl.client.training import TrainSettings, train_locally
from dpfl.simulations.audit.plan import AuditPlanError, read_plan

ROOT = Path(__file__).resolve().parents[1]
# full-batch DP-GD (q = 1, one step per round): what the server sees is exactly what each step released
AUDIT = ["--dataset", "digits", "--num-clients", "4", "--model", "mlp", "--num-server-rounds", "4",
         "--target-epsilon", "2", "--delta", "1e-5", "--batch-size", "4096", "--momentum", "0",
         "--learning-rate", "0.5", "--canaries", "1000"]


def _dpfl(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "dpfl.simulations.cli.main", *args], capture_output=True, text=True,
                          cwd=ROOT, timeout=300)


@pytest.fixture(scope="module")
def audited(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, subprocess.CompletedProcess[str]]:
    where = tmp_path_factory.mktemp("audit")
    proc = _dpfl("audit", *AUDIT, "--run-dir", str(where), "--run-name", "a")
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-2000:]
    return where / "a", proc


def test_an_audit_is_a_charged_run_with_both_bounds_in_its_report(audited) -> None:
    run, proc = audited
    record = json.loads((run / "report" / "audit.json").read_text())
    summary = json.loads((run / "summary.json").read_text())
    assert record["claimed_epsilon"] == summary["epsilon_max"] <= 2.0
    one = record["one_run"]
    assert one["canaries"] == 1000 and 0 <= one["epsilon_lower_bound"] <= record["claimed_epsilon"]
    assert record["verdict"] == "consistent"
    assert len(record["scores_included"]) + len(record["scores_excluded"]) == 1000
    coins = json.loads((run / "audit" / "coins.json").read_text())["included"]
    assert sum(coins) == len(record["scores_included"])
    # the same ledgers as any run: every client charged every round, at the calibrated release
    for k in range(4):
        lines = (run / "ledgers" / f"client-{k:03d}.jsonl").read_text().splitlines()
        assert len(lines) == 4 and json.loads(lines[-1])["sample_rate"] == 1.0
    md = (run / "report" / "report.md").read_text()
    assert "## 8. Empirical privacy audit" in md and "**Empirical audit**: ε ≥" in md
    assert (run / "report" / "plots" / "audit_scores.png").stat().st_size > 10_000
    report = json.loads((run / "report" / "report.json").read_text())
    assert report["audit"]["violation"] is False
    assert f"ε ≥ {one['epsilon_lower_bound']:.3f} measured on this run" in proc.stdout


def test_the_server_sees_coordinates_never_coins(audited) -> None:
    run, _ = audited
    public = json.loads((run / "audit" / "canaries.json").read_text())
    assert "included" not in json.dumps(public) and len(public["canaries"]) == 1000
    assert {c["owner"] for c in public["canaries"]} == {f"client-{k:03d}" for k in range(4)}
    obs = np.load(run / "audit" / "observations.npz")
    assert obs["values"].shape == (16, 1000)  # 4 clients x 4 rounds, every canary coordinate


def test_a_client_without_noise_is_caught(tmp_path: Path) -> None:
    """One worker runs the ClientApp in this process, so the noise can be switched off under the ledger's feet."""
    script = tmp_path / "broken.py"
    script.write_text(
        "import dataclasses, sys\n"
        "from dpfl.client import app\n"
        "from dpfl.client.training import train_locally\n"
        "def silent(model, x, y, settings, **kw):\n"
        "    return train_locally(model, x, y, dataclasses.replace(settings, noise_multiplier=0.0), **kw)\n"
        "app.train_locally = silent\n"
        "from dpfl.simulations.cli.main import main\n"
        "if __name__ == '__main__':\n"
        "    sys.exit(main(sys.argv[1:]))\n")
    # 200 "in" guesses, fixed before scoring: with the noise gone nearly all are right (3.4 against 2.0 when tried)
    proc = subprocess.run([sys.executable, str(script), "audit", *AUDIT, "--workers", "1", "--guesses", "200",
                           "--run-dir", str(tmp_path), "--run-name", "b"], capture_output=True, text=True, cwd=ROOT,
                          timeout=300)
    assert proc.returncode == 3, proc.stdout[-2000:] + proc.stderr[-2000:]
    record = json.loads((tmp_path / "b" / "report" / "audit.json").read_text())
    assert record["verdict"] == "violation" and record["one_run"]["epsilon_lower_bound"] > record["claimed_epsilon"]
    assert "AUDIT: MEASURED ε ABOVE THE ACCOUNTANT'S" in (tmp_path / "b" / "report" / "report.md").read_text()
    assert "leaks more than its ledger says" in proc.stderr


@pytest.mark.parametrize(("flags", "words"), [
    (["--canaries", "10"], "at least 100 canaries"),
    (["--dp", "false"], "run it with --dp true"),
    (["--privacy-unit", "client", "--client-sampling", "fixed"], "Poisson cohorts"),
    (["--neighbouring", "replace-one"], "add-remove"),
    (["--canary-kind", "input", "--canaries", "5000"], "test split has"),
    (["--confidence", "1.5"], "--confidence"),
])
def test_bad_audits_are_one_line_and_exit_2(tmp_path: Path, flags: list[str], words: str) -> None:
    proc = _dpfl("audit", *AUDIT, *flags, "--run-dir", str(tmp_path), "--run-name", "x")
    assert proc.returncode == 2, proc.stdout[-1500:] + proc.stderr[-1500:]
    assert words in proc.stderr and "Traceback" not in proc.stderr
    assert not (tmp_path / "x" / "metrics.jsonl").exists()


USER_LEVEL = ["--dataset", "digits", "--num-clients", "10", "--model", "mlp", "--num-server-rounds", "4",
              "--privacy-unit", "client", "--dp", "false", "--fraction-train", "0.5", "--user-target-epsilon", "2",
              "--user-delta", "1e-5", "--canaries", "1000"]
SILENT_SERVER = (
    "import sys\n"
    "from dpfl.server import user_level\n"
    "honest = user_level.UserLevelMechanism.noised_mean\n"
    "def silent(self, *a, **kw):\n"
    "    self.z_update = 0.0\n"
    "    return honest(self, *a, **kw)\n"
    "user_level.UserLevelMechanism.noised_mean = silent\n"
    "from dpfl.simulations.cli.main import main\n"
    "if __name__ == '__main__':\n"
    "    sys.exit(main(sys.argv[1:]))\n")


def test_a_user_level_audit_uses_crafted_clients_and_catches_a_silent_server(tmp_path: Path) -> None:
    proc = _dpfl("audit", *USER_LEVEL, "--run-dir", str(tmp_path), "--run-name", "u")
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-2000:]
    run = tmp_path / "u"
    record = json.loads((run / "report" / "audit.json").read_text())
    summary = json.loads((run / "summary.json").read_text())
    assert record["privacy_unit"] == "client" and record["claimed_epsilon"] == summary["user_epsilon"] <= 2.0
    assert 0 <= record["one_run"]["epsilon_lower_bound"] <= record["claimed_epsilon"]
    assert len((run / "ledgers" / "server.jsonl").read_text().splitlines()) == 4  # charged like any run
    assert {c["owner"] for c in json.loads((run / "audit" / "canaries.json").read_text())["canaries"]} == {"server"}
    script = tmp_path / "silent.py"
    script.write_text(SILENT_SERVER)
    proc = subprocess.run([sys.executable, str(script), "audit", *USER_LEVEL, "--guesses", "200", "--run-dir",
                           str(tmp_path), "--run-name", "s"], capture_output=True, text=True, cwd=ROOT, timeout=300)
    assert proc.returncode == 3, proc.stdout[-2000:] + proc.stderr[-2000:]
    assert json.loads((tmp_path / "s" / "report" / "audit.json").read_text())["verdict"] == "violation"


def test_several_runs_add_the_pooled_bounds(tmp_path: Path) -> None:
    flags = [*AUDIT[:AUDIT.index("--num-server-rounds")], "--num-server-rounds", "2",
             *AUDIT[AUDIT.index("--target-epsilon"):-1], "300", "--runs", "2"]
    proc = _dpfl("audit", *flags, "--run-dir", str(tmp_path), "--run-name", "m")
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-2000:]
    records = [json.loads((tmp_path / f"m-run-0{k}" / "report" / "audit.json").read_text()) for k in (1, 2)]
    many = records[0]["many_runs"]
    assert many == records[1]["many_runs"] and many["runs"] == 2 and many["scores_in"] + many["scores_out"] == 600
    assert many["one_run_bounds"] == [r["one_run"]["epsilon_lower_bound"] for r in records]
    assert 0 <= many["clopper_pearson_epsilon"] <= records[0]["claimed_epsilon"]
    assert "2 runs pooled" in (tmp_path / "m-run-02" / "report" / "report.md").read_text()
    assert records[0]["claimed_epsilon"] == records[1]["claimed_epsilon"]  # same mechanism, fresh coins


def test_gradient_canaries_need_book_keeping_and_real_coordinates() -> None:
    model = torch.nn.Linear(4, 2)
    x, y = torch.randn(8, 4), torch.randint(0, 2, (8,))
    settings = TrainSettings(local_epochs=1, batch_size=8, learning_rate=0.1, momentum=0.0, optimizer="sgd", dp=True,
                             noise_multiplier=1.0, max_grad_norm=1.0, grad_sample_mode="hooks")
    gens = dict(sampling_generator=torch.Generator().manual_seed(0), noise_generator=torch.Generator().manual_seed(1),
                device=torch.device("cpu"))
    with pytest.raises(CanaryError, match="'bk'"):
        train_locally(model, x, y, settings, canaries=DiracCanaries((("weight", 0),)), **gens)
    bk = dataclasses.replace(settings, grad_sample_mode="bk")
    with pytest.raises(CanaryError, match="outside"):
        train_locally(model, x, y, bk, canaries=DiracCanaries((("weight", 8),)), **gens)
    with pytest.raises(CanaryError, match="not a trainable parameter"):
        train_locally(model, x, y, bk, canaries=DiracCanaries((("nope", 0),)), **gens)


def test_malformed_coins_are_refused(tmp_path: Path) -> None:
    (tmp_path / "canaries.json").write_text(json.dumps({"kind": "gradient", "canaries": [
        {"owner": "client-000", "param": "w", "index": 0, "label": -1}]}))
    (tmp_path / "coins.json").write_text(json.dumps({"included": [1]}))
    with pytest.raises(AuditPlanError, match="one true/false coin per canary"):
        read_plan(tmp_path, coins=True)
    assert read_plan(tmp_path, coins=False).included is None
