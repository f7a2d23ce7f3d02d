"""The words client and server use in Flower messages, and releases to and from a message, validated.

Both sides import these names from here (neither imports the other), so a renamed key cannot
silently split the server's record of a release from the client's. Whatever arrives is checked here
before it becomes a ``Release``: a wrong release would be a wrong epsilon.
"""

from __future__ import annotations

import math
import numbers
import re
from collections.abc import Mapping
from dataclasses import dataclass, replace
from typing import Any

from dpfl.privacy.releases import DpSgdRelease

# Error codes carried by Flower ``Error`` replies (``Message(Error(code, reason), reply_to=...)``).
BUDGET_EXHAUSTED = 4001  # the client declined: this round's release would exceed its budget
LEDGER_CONFLICT = 4002  # the client's ledger copies disagree; it refuses to train
CLIENT_FAILED = 4003  # training raised; nothing was released
POLICY_DECLINED = 4004  # the instruction breaks the data owner's own privacy policy; nothing was trained
DECLINES = (BUDGET_EXHAUSTED, POLICY_DECLINED)  # codes that certify the client did not train

# Record names in a train instruction and a train reply.
ARRAYS = "arrays"
CONFIG = "config"  # ConfigRecord of the train instruction
METRICS = "metrics"
RELEASE = "release"  # ConfigRecord of a reply: client-id and mechanism
TERMS = "terms"  # ConfigRecord of a terms reply (the QUERY before a client's first round)

# Keys in the train instruction's ConfigRecord.
CFG_ROUND = "server-round"
CFG_DELTA = "delta"
CFG_RUN_PATH = "run-path"
CFG_QUERY = "query"
CFG_USER_CLIP = "user-clip-norm"  # privacy-unit = client: the L2 norm the client clips its whole update to
QUERY_TERMS = "privacy-terms"  # the query asking a client what it will release in this run

# Keys in a terms reply (public: what the client's mechanism will be, and how often it will run).
DECLARED_RECORDS = "declared-records"
NEIGHBOURING = "neighbouring"
MAX_ROUNDS = "max-rounds"
PRIOR_EPSILON = "prior-epsilon"
PRIOR_RUNS = "prior-runs"
NEIGHBOURING_RELATIONS = ("add-remove", "replace-one")

# Keys in a train reply's MetricRecord (the release parameters are public: they describe the mechanism).
NUM_EXAMPLES = "num-examples"  # the aggregation weight (Flower's FedAvg reads this key)
EPSILON = "epsilon"
NOISE_MULTIPLIER = "noise-multiplier"
SAMPLE_RATE = "sample-rate"
STEPS = "steps"
PARTITION_ID = "partition-id"
TRAIN_LOSS = "train-loss"  # private metrics: only with private-metrics = true (not covered by DP)
TRAIN_EXAMPLES_SEEN = "train-examples-seen"
WITHIN_CLIP = "update-within-clip"  # privacy-unit = client: 1 if the update was within the clip norm, else 0
# Keys in a train reply's release ConfigRecord.
CLIENT_ID = "client-id"
CLIENT_ID_PATTERN = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,63}")
RESERVED_CLIENT_ID = "server"
MECHANISM = "mechanism"
NO_MECHANISM = "none"  # dp=false: the reply carries no DP release

# The train reply's schema: exactly these records, metric keys and release keys (the server rejects others).
TRAIN_REPLY_RECORDS = (ARRAYS, METRICS, RELEASE)
TRAIN_METRICS = (NUM_EXAMPLES, EPSILON, SAMPLE_RATE, STEPS, NOISE_MULTIPLIER, PARTITION_ID)
TRAIN_PRIVATE_METRICS = (TRAIN_LOSS, TRAIN_EXAMPLES_SEEN)  # optional, together
RELEASE_FIELDS = (CLIENT_ID, MECHANISM)


class WireError(ValueError):
    """A message field is missing or not what the protocol allows; the message names the field."""


@dataclass(frozen=True)
class TrainInstruction:
    server_round: int
    delta: float
    run_path: str
    user_clip_norm: float | None = None  # privacy-unit = client: clip the whole update to this norm


def _number(values: Mapping[str, Any], key: str, where: str) -> float:
    if key not in values:
        raise WireError(f"{where}: {key!r} is missing")
    value = values[key]
    if isinstance(value, bool) or not isinstance(value, numbers.Real) or not math.isfinite(float(value)):
        raise WireError(f"{where}: {key}={value!r} is not valid: expected a finite number")
    return float(value)


def _integer(values: Mapping[str, Any], key: str, where: str, minimum: int) -> int:
    value = _number(values, key, where)
    if not value.is_integer() or value < minimum:
        raise WireError(f"{where}: {key}={values[key]!r} is not valid: expected an integer >= {minimum}")
    return int(value)


def train_config(server_round: int, delta: float, run_path: str) -> dict[str, Any]:
    """The train instruction's ConfigRecord content (the user-level strategy adds ``CFG_USER_CLIP``)."""
    return {CFG_ROUND: server_round, CFG_DELTA: delta, CFG_RUN_PATH: run_path}


def read_train_instruction(config: Mapping[str, Any]) -> TrainInstruction:
    """Round, delta and run path of a train instruction, checked (0 < delta < 1, round >= 1)."""
    where = "train instruction"
    delta = _number(config, CFG_DELTA, where)
    if not 0 < delta < 1:
        raise WireError(f"{where}: {CFG_DELTA}={config[CFG_DELTA]!r} is not valid: expected a number in (0, 1)")
    clip = None
    if CFG_USER_CLIP in config:
        clip = _number(config, CFG_USER_CLIP, where)
        if not (math.isfinite(clip) and clip > 0):
            raise WireError(f"{where}: {CFG_USER_CLIP}={config[CFG_USER_CLIP]!r} is not valid: expected a finite "
                            "number > 0")
    return TrainInstruction(server_round=_integer(config, CFG_ROUND, where, 1), delta=delta,
                            run_path=str(config.get(CFG_RUN_PATH, "")), user_clip_norm=clip)


def terms_request(delta: float, run_path: str, server_round: int = 1) -> dict[str, Any]:
    """The terms query's ConfigRecord content: the federation's delta, the run, and the first round the
    client may be asked to train in (after a restart or a resume, a later one)."""
    return {CFG_QUERY: QUERY_TERMS, CFG_DELTA: delta, CFG_RUN_PATH: run_path, CFG_ROUND: server_round}


def read_terms_request(config: Mapping[str, Any]) -> TrainInstruction:
    """A terms query, checked like a train instruction (round 1 when the query names none)."""
    if config.get(CFG_QUERY) != QUERY_TERMS:
        raise WireError(f"query: {CFG_QUERY}={config.get(CFG_QUERY)!r} is not valid: expected {QUERY_TERMS!r}")
    return read_train_instruction({CFG_ROUND: 1, **config})


@dataclass(frozen=True)
class ClientTerms:
    """What a client will release in this run if asked: one round's release, how many rounds at most, under
    which neighbouring relation and public record count, and what its records already spent before."""

    client_id: str
    release: DpSgdRelease | None  # None: dp = false (no guarantee)
    neighbouring: str
    declared_records: int
    max_rounds: int
    prior_epsilon: float
    prior_runs: tuple[str, ...]


def terms_to_wire(terms: ClientTerms) -> dict[str, Any]:
    metrics, info = release_to_wire(terms.client_id, terms.release)
    return {**metrics, **info, NEIGHBOURING: terms.neighbouring, DECLARED_RECORDS: terms.declared_records,
            MAX_ROUNDS: terms.max_rounds, PRIOR_EPSILON: terms.prior_epsilon,
            PRIOR_RUNS: "\n".join(terms.prior_runs)}


def read_terms(values: Mapping[str, Any]) -> ClientTerms:
    """A terms reply, every field checked (WireError names a bad one)."""
    where = "terms reply"
    client_id, release = release_from_wire(values, values, 1)
    relation = values.get(NEIGHBOURING)
    if relation not in NEIGHBOURING_RELATIONS:
        raise WireError(f"{where}: {NEIGHBOURING}={relation!r} is not valid: expected one of "
                        f"{', '.join(NEIGHBOURING_RELATIONS)}")
    prior = _number(values, PRIOR_EPSILON, where)
    if prior < 0:
        raise WireError(f"{where}: {PRIOR_EPSILON}={prior!r} is not valid: expected a number >= 0")
    runs = values.get(PRIOR_RUNS, "")
    if not isinstance(runs, str):
        raise WireError(f"{where}: {PRIOR_RUNS}={runs!r} is not valid: expected text")
    return ClientTerms(client_id=client_id, release=None if release is None else replace(release, round=0),
                       neighbouring=str(relation), declared_records=_integer(values, DECLARED_RECORDS, where, 1),
                       max_rounds=_integer(values, MAX_ROUNDS, where, 0), prior_epsilon=prior,
                       prior_runs=tuple(r for r in runs.split("\n") if r))


def release_to_wire(client_id: str, release: DpSgdRelease | None) -> tuple[dict[str, float | int], dict[str, str]]:
    """(metric values, release record values) describing this reply's release (None: dp=false)."""
    if release is None:
        return {NOISE_MULTIPLIER: 0.0}, {CLIENT_ID: client_id, MECHANISM: NO_MECHANISM}
    metrics = {NOISE_MULTIPLIER: release.noise_multiplier, SAMPLE_RATE: release.sample_rate, STEPS: release.steps}
    return metrics, {CLIENT_ID: client_id, MECHANISM: release.mechanism}


def check_client_id(value: Any, where: str = "client id") -> str:
    """A client id is a file name on both sides (its ledger is ``<id>.jsonl``), so it is 1-64 letters, digits,
    '.', '_' or '-', starting with a letter or digit, and never ``server`` (the name of the central ledger)."""
    if not isinstance(value, str) or not CLIENT_ID_PATTERN.fullmatch(value) or value == RESERVED_CLIENT_ID:
        raise WireError(f"{where}: {CLIENT_ID}={str(value)[:80]!r} is not valid: expected 1-64 letters, digits, "
                        f"'.', '_' or '-', starting with a letter or digit, and not {RESERVED_CLIENT_ID!r}")
    return value


def release_from_wire(metrics: Mapping[str, Any], info: Mapping[str, Any],
                      server_round: int) -> tuple[str, DpSgdRelease | None]:
    """The (client id, release) a train reply describes, every field checked; WireError names a bad one.

    ``server_round`` is the server's own round (a reply does not carry one): checked too, since a release
    dated round 0 or 2.5 would be accounted as a real one.
    """
    where = "train reply"
    server_round = _integer({CFG_ROUND: server_round}, CFG_ROUND, where, 1)
    client_id = check_client_id(info.get(CLIENT_ID), where)
    mechanism = info.get(MECHANISM)
    if mechanism == NO_MECHANISM:
        return client_id, None
    if mechanism != DpSgdRelease.MECHANISM:
        raise WireError(f"{where}: {MECHANISM}={mechanism!r} is not valid: expected "
                        f"{DpSgdRelease.MECHANISM!r} or {NO_MECHANISM!r}")
    sigma = _number(metrics, NOISE_MULTIPLIER, where)
    if sigma <= 0:
        raise WireError(f"{where}: {NOISE_MULTIPLIER}={sigma!r} is not valid: expected a number > 0")
    q = _number(metrics, SAMPLE_RATE, where)
    if not 0 < q <= 1:
        raise WireError(f"{where}: {SAMPLE_RATE}={q!r} is not valid: expected a number in (0, 1]")
    steps = _integer(metrics, STEPS, where, 1)
    return client_id, DpSgdRelease(noise_multiplier=sigma, sample_rate=q, steps=steps, round=server_round)


def check_train_reply_fields(metrics: Mapping[str, Any], info: Mapping[str, Any]) -> None:
    """A train reply's metrics and release record hold exactly ``TRAIN_METRICS`` (plus, together, the
    ``TRAIN_PRIVATE_METRICS``) and ``RELEASE_FIELDS``, each of its type; WireError names the first bad key.

    Values are only typed here (finite numbers, integers where counted, text); whether they are the
    release the server charged and the weight it knows is the server's comparison (server/roster.py)."""
    where = "train reply"
    keys = set(metrics.keys())
    allowed = set(TRAIN_METRICS) | set(TRAIN_PRIVATE_METRICS) | {WITHIN_CLIP}
    missing = [k for k in TRAIN_METRICS if k not in keys]
    if missing:
        raise WireError(f"{where}: metric {missing[0]!r} is missing")
    extra = sorted(str(k) for k in keys - allowed)
    if extra:
        raise WireError(f"{where}: metric {extra[0][:60]!r} is not part of the reply schema")
    private = [k for k in TRAIN_PRIVATE_METRICS if k in keys]
    if private and len(private) != len(TRAIN_PRIVATE_METRICS):
        absent = next(k for k in TRAIN_PRIVATE_METRICS if k not in keys)
        raise WireError(f"{where}: metric {absent!r} is missing (private metrics come together)")
    for key in (*TRAIN_METRICS, *private):
        _number(metrics, key, where)
    _integer(metrics, NUM_EXAMPLES, where, 1)
    _integer(metrics, STEPS, where, 1)
    _integer(metrics, PARTITION_ID, where, 0)
    if _number(metrics, EPSILON, where) < 0:
        raise WireError(f"{where}: {EPSILON}={metrics[EPSILON]!r} is not valid: expected a number >= 0")
    if TRAIN_EXAMPLES_SEEN in metrics:
        _integer(metrics, TRAIN_EXAMPLES_SEEN, where, 0)
    if WITHIN_CLIP in metrics and _number(metrics, WITHIN_CLIP, where) not in (0.0, 1.0):
        raise WireError(f"{where}: {WITHIN_CLIP}={metrics[WITHIN_CLIP]!r} is not valid: expected 0 or 1")
    fields = set(info.keys())
    for key in RELEASE_FIELDS:
        if key not in fields:
            raise WireError(f"{where}: release field {key!r} is missing")
        if not isinstance(info[key], str):
            raise WireError(f"{where}: {key}={info[key]!r} is not valid: expected text")
    extra = sorted(str(k) for k in fields - set(RELEASE_FIELDS))
    if extra:
        raise WireError(f"{where}: release field {extra[0][:60]!r} is not part of the reply schema")
