"""privacy.wire: releases to and from a Flower message, every field checked before it becomes a Release."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest

from dpfl.privacy import DpSgdRelease, wire
from dpfl.privacy.wire import WireError, read_train_instruction, release_from_wire, release_to_wire


def _reply(release: DpSgdRelease) -> tuple[dict, dict]:
    return release_to_wire("client-007", release)


def test_dp_sgd_release_round_trips() -> None:
    release = DpSgdRelease(noise_multiplier=1.25, sample_rate=0.04, steps=25, round=3)
    metrics, info = _reply(release)
    assert release_from_wire(metrics, info, server_round=3) == ("client-007", release)


def test_no_dp_reply_carries_no_release() -> None:
    metrics, info = release_to_wire("client-001", None)
    assert info[wire.MECHANISM] == wire.NO_MECHANISM
    assert release_from_wire(metrics, info, server_round=1) == ("client-001", None)


@pytest.mark.parametrize(("field", "value"), [
    (wire.NOISE_MULTIPLIER, math.nan), (wire.NOISE_MULTIPLIER, math.inf), (wire.NOISE_MULTIPLIER, 0.0),
    (wire.NOISE_MULTIPLIER, True), (wire.SAMPLE_RATE, 2.0), (wire.SAMPLE_RATE, 0.0), (wire.STEPS, 0),
    (wire.STEPS, 2.5), (wire.STEPS, "25"), (wire.STEPS, None),
])
def test_a_malformed_release_field_is_rejected_by_name(field: str, value: object) -> None:
    metrics, info = _reply(DpSgdRelease(1.0, 0.1, 10, 1))
    metrics[field] = value
    with pytest.raises(WireError, match=field):
        release_from_wire(metrics, info, server_round=1)


@pytest.mark.parametrize("missing", [wire.NOISE_MULTIPLIER, wire.SAMPLE_RATE, wire.STEPS])
def test_a_missing_release_field_is_rejected_by_name(missing: str) -> None:
    metrics, info = _reply(DpSgdRelease(1.0, 0.1, 10, 1))
    del metrics[missing]
    with pytest.raises(WireError, match=missing):
        release_from_wire(metrics, info, server_round=1)


@pytest.mark.parametrize(("field", "value"), [(wire.MECHANISM, "laplace"), (wire.MECHANISM, None),
                                              (wire.CLIENT_ID, ""), (wire.CLIENT_ID, 7)])
def test_a_malformed_release_record_is_rejected_by_name(field: str, value: object) -> None:
    metrics, info = _reply(DpSgdRelease(1.0, 0.1, 10, 1))
    info[field] = value
    with pytest.raises(WireError, match=field):
        release_from_wire(metrics, info, server_round=1)


@pytest.mark.parametrize("server_round", [0, 2.5, True, math.nan, "1"])
def test_a_bad_round_is_rejected_by_name(server_round: object) -> None:
    metrics, info = _reply(DpSgdRelease(1.0, 0.1, 10, 1))
    with pytest.raises(WireError, match=wire.CFG_ROUND):
        release_from_wire(metrics, info, server_round=server_round)  # type: ignore[arg-type]


@pytest.mark.parametrize(("key", "value"), [(wire.CFG_DELTA, 1.0), (wire.CFG_DELTA, 0.0),
                                            (wire.CFG_DELTA, math.nan), (wire.CFG_ROUND, 0),
                                            (wire.CFG_ROUND, 1.5)])
def test_a_malformed_train_instruction_is_rejected_by_name(key: str, value: object) -> None:
    config = wire.train_config(1, 1e-5, "/tmp/run")
    config[key] = value
    with pytest.raises(WireError, match=key):
        read_train_instruction(config)


def test_the_clientapps_real_reply_parses_back_to_the_release_its_ledger_recorded(tmp_path: Path) -> None:
    from client_messages import train_call

    from dpfl.simulations.apps import clientapp
    from dpfl.simulations.config import resolve

    cfg = resolve({"dataset": "digits", "model": "logreg", "num-clients": 2, "batch-size": 32,
                   "target-epsilon": 0.0, "noise-multiplier": 1.3}).as_dict()
    msg, ctx = train_call(cfg, tmp_path)
    reply = clientapp(msg, ctx)
    assert not reply.has_error()
    client_id, release = release_from_wire(reply.content[wire.METRICS], reply.content[wire.RELEASE], 1)
    ledger_file = tmp_path / "client-state" / f"{client_id}.jsonl"
    entries = [json.loads(line) for line in ledger_file.read_text().splitlines() if line.strip()]
    assert release is not None and len(entries) == 1
    assert release.to_dict() == {k: entries[0][k] for k in release.to_dict()}
    assert release.noise_multiplier == 1.3


def test_terms_round_trip_and_hostile_terms_are_refused() -> None:

    terms = wire.ClientTerms(client_id="client-001", release=DpSgdRelease(1.2, 0.04, 25), neighbouring="add-remove",
                             declared_records=6000, max_rounds=7, prior_epsilon=0.5, prior_runs=("runs/a", "runs/b"))
    assert wire.read_terms(wire.terms_to_wire(terms)) == terms
    good = wire.terms_to_wire(terms)
    for key, value in [(wire.NEIGHBOURING, "swap-two"), (wire.MAX_ROUNDS, -1), (wire.DECLARED_RECORDS, 0),
                       (wire.PRIOR_EPSILON, float("nan")), (wire.NOISE_MULTIPLIER, 0.0), (wire.SAMPLE_RATE, 1.5),
                       (wire.CLIENT_ID, "")]:
        with pytest.raises(wire.WireError, match=key):
            wire.read_terms({**good, key: value})
    with pytest.raises(wire.WireError, match="query"):
        wire.read_terms_request({wire.CFG_DELTA: 1e-5})
    assert wire.read_terms_request(wire.terms_request(1e-5, "runs/x")).delta == 1e-5
