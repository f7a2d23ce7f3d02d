"""A federation under a flood of malformed and malicious train replies: it completes, refuses every bad reply
with its reason, and (with deterministic noise) ends on bit-for-bit the model of the same run without them.

The federation has honest clients and attacker nodes. Every node is sampled every round (fraction-train 1
over all of them), so the attackers never change which honest clients train. Attackers state real terms (their
ClientApp answers the terms query) and are charged like anyone, but their train replies are forged here:
in the attacked run each attacker's reply is a random bad one, and every round adds a few hundred more bad
replies (second replies from attackers and honest nodes alike, replies from nodes never sent an instruction);
in the clean run the attackers simply never answer. Each injected reply carries the words its rejection must
contain, and the run's metrics.jsonl must list exactly those rejections, in order.
"""

from __future__ import annotations

import json
import math
import random
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from flwr.app import Array, ArrayRecord, ConfigRecord, Error, Message, MessageType, MetricRecord, RecordDict

from dpfl.privacy import DpSgdRelease, wire
from dpfl.server.reply_checks import SentModel, UpdateBound
from dpfl.simulations.config import resolve
from dpfl.simulations.engines import simulate as simulate_module
from dpfl.simulations.engines.inprocess import InProcessGrid
from dpfl.simulations.engines.simulate import simulate

HONEST, ATTACKERS, ROUNDS, EXTRA_PER_ROUND = 3, 3, 4, 250
CONFIG = {"dataset": "digits", "model": "logreg", "num-clients": HONEST + ATTACKERS, "num-server-rounds": ROUNDS,
          "fraction-train": 1.0, "min-train-clients": 1, "batch-size": 32, "local-epochs": 1, "learning-rate": 0.1,
          "noise-multiplier": 1.0, "target-epsilon": 0.0, "delta": 1e-5, "accountant": "rdp", "workers": 1,
          "deterministic-noise": True, "seed": 7}
ODD_CODES = (-7, 0, 1, 404, wire.LEDGER_CONFLICT, wire.CLIENT_FAILED, 99_999, 2**31 - 1)

Content = RecordDict | Error
Mutation = Callable[[RecordDict, "Forger"], tuple[Content, str]]


class Forger:
    """What an attacker knows to make a reply look honest: the instruction and the terms it stated."""

    def __init__(self, instruction: Message, terms: wire.ClientTerms, rng: random.Random) -> None:
        self.instruction = instruction
        self.terms = terms
        self.rng = rng
        self.sent = instruction.content[wire.ARRAYS]

    def honest(self) -> RecordDict:
        nprng = np.random.default_rng(self.rng.randrange(2**32))
        arrays = ArrayRecord({k: Array((a.numpy() + 1e-3 * nprng.normal(size=a.numpy().shape)).astype(np.float32))
                              for k, a in self.sent.items()})
        release = self.terms.release
        assert release is not None
        rel_metrics, info = wire.release_to_wire(self.terms.client_id, replace_round(release))
        metrics = {wire.NUM_EXAMPLES: self.terms.declared_records, wire.EPSILON: 1.0, **rel_metrics,
                   wire.PARTITION_ID: int(self.terms.client_id.split("-")[1])}
        return RecordDict({wire.ARRAYS: arrays, wire.METRICS: MetricRecord(metrics),
                           wire.RELEASE: ConfigRecord(info)})

    def key(self) -> str:
        return self.rng.choice(list(self.sent.keys()))

    def shape(self) -> tuple[int, ...]:
        return tuple(self.sent[self.key()].shape)


def replace_round(release: DpSgdRelease) -> DpSgdRelease:
    return DpSgdRelease(release.noise_multiplier, release.sample_rate, release.steps, 1)


# -- the classes of bad replies: each returns (content, words its rejection must contain) -----------------------
def _array(c: RecordDict, f: Forger, make: Callable[[np.ndarray], np.ndarray], words: str) -> tuple[Content, str]:
    key = f.key()
    c[wire.ARRAYS][key] = Array(make(c[wire.ARRAYS][key].numpy()))
    return c, words.format(key=key)


def _metric(key: str, value: object, words: str) -> Mutation:
    def mutate(c: RecordDict, f: Forger) -> tuple[Content, str]:
        c[wire.METRICS][key] = value
        return c, words.format(cid=f.terms.client_id)
    return mutate


def _drop_key(c: RecordDict, f: Forger) -> tuple[Content, str]:
    key = f.key()
    del c[wire.ARRAYS][key]
    return c, f"arrays: missing key(s) '{key}'"


def _extra_key(c: RecordDict, f: Forger) -> tuple[Content, str]:
    c[wire.ARRAYS]["linear.backdoor"] = Array(np.zeros(3, np.float32))
    return c, "arrays: unexpected key(s) 'linear.backdoor'"


def _huge_update(c: RecordDict, f: Forger) -> tuple[Content, str]:
    sent = SentModel.of(f.sent)
    norm = UpdateBound().fallback(sent) * f.rng.uniform(2, 1e6)
    nprng = np.random.default_rng(f.rng.randrange(2**32))
    directions = {k: nprng.normal(size=a.shape) for k, a in zip(sent.keys, sent.arrays, strict=True)}
    scale = norm / math.sqrt(sum(float(np.square(d).sum()) for d in directions.values()))
    for k, a in zip(sent.keys, sent.arrays, strict=True):
        c[wire.ARRAYS][k] = Array((a + scale * directions[k]).astype(np.float32))
    return c, "exceeds the bound"


def _scaled_model(c: RecordDict, f: Forger) -> tuple[Content, str]:
    for k, a in f.sent.items():
        c[wire.ARRAYS][k] = Array((a.numpy() * 1e6).astype(np.float32))
    return c, "exceeds the bound"


def _lying_header(c: RecordDict, f: Forger) -> tuple[Content, str]:
    key = f.key()
    other = Array(np.zeros(int(np.prod(f.sent[key].shape)) + 1, np.float32))
    c[wire.ARRAYS][key] = Array(dtype="float32", shape=tuple(f.sent[key].shape), stype="numpy.ndarray",
                                data=other.data)
    return c, "not what its header says"


def _junk_bytes(c: RecordDict, f: Forger) -> tuple[Content, str]:
    key = f.key()
    c[wire.ARRAYS][key] = Array(dtype="float32", shape=tuple(f.sent[key].shape), stype="numpy.ndarray",
                                data=bytes(f.rng.randrange(256) for _ in range(f.rng.randrange(1, 64))))
    return c, "cannot be read"


def _records(drop: str | None = None, add: str | None = None, swap: str | None = None) -> Mutation:
    def mutate(c: RecordDict, f: Forger) -> tuple[Content, str]:
        records = {name: c[name] for name in wire.TRAIN_REPLY_RECORDS if name != drop}
        if add:
            records[add] = ConfigRecord({"payload": "x"})
        if swap:
            records[swap] = ConfigRecord({"k": 1}) if swap != wire.RELEASE else MetricRecord({"k": 1})
        out = RecordDict(records)
        words = (f"records: missing '{drop}'" if drop else f"records: unexpected '{add}'" if add
                 else f"records: '{swap}' is a")
        return out, words
    return mutate


def _drop_metric(c: RecordDict, f: Forger) -> tuple[Content, str]:
    key = f.rng.choice(wire.TRAIN_METRICS)
    del c[wire.METRICS][key]
    return c, f"metric '{key}' is missing"


def _info(key: str, value: str | None, words: str) -> Mutation:
    def mutate(c: RecordDict, f: Forger) -> tuple[Content, str]:
        if value is None:
            del c[wire.RELEASE][key]
        else:
            c[wire.RELEASE][key] = value
        return c, words
    return mutate


def _other_client(c: RecordDict, f: Forger) -> tuple[Content, str]:
    victim = f.rng.choice([f"client-{k:03d}" for k in range(HONEST + ATTACKERS)
                           if f"client-{k:03d}" != f.terms.client_id])
    c[wire.RELEASE][wire.CLIENT_ID] = victim
    return c, f"client-id='{victim}' but node {f.instruction.metadata.dst_node_id} stated terms as"


def _error(codes: Iterable[int]) -> Mutation:
    def mutate(c: RecordDict, f: Forger) -> tuple[Content, str]:
        code = f.rng.choice(list(codes))
        text = f"{f.rng.choice(['client-000', 'client-001', 'nobody'])}: {'junk ' * f.rng.randrange(1, 400)}"
        return Error(code=code, reason=text), text[:40]
    return mutate


MUTATIONS: dict[str, Mutation] = {
    "missing-array-key": _drop_key,
    "extra-array-key": _extra_key,
    "wrong-shape": lambda c, f: _array(c, f, lambda a: np.zeros(a.shape[::-1] + (2,), np.float32), "'{key}' has shape"),
    "one-element-tensor": lambda c, f: _array(c, f, lambda a: np.ones(1, np.float32), "'{key}' has shape (1,)"),
    "float64": lambda c, f: _array(c, f, lambda a: a.astype(np.float64), "'{key}' has dtype float64"),
    "integer-tensor": lambda c, f: _array(c, f, lambda a: a.astype(np.int64), "'{key}' has dtype int64"),
    "all-nan": lambda c, f: _array(c, f, lambda a: np.full_like(a, np.nan), "non-finite value(s)"),
    "inf": lambda c, f: _array(c, f, lambda a: np.where(a > 0, np.inf, -np.inf).astype(np.float32),
                               "non-finite value(s)"),
    "one-nan": lambda c, f: _array(c, f, lambda a: np.where(np.arange(a.size).reshape(a.shape) == a.size // 2,
                                                             np.nan, a).astype(np.float32), "holds 1 non-finite"),
    "huge-norm": _huge_update,
    "model-x1e6": _scaled_model,
    "lying-header": _lying_header,
    "junk-bytes": _junk_bytes,
    "missing-metrics-record": _records(drop=wire.METRICS),
    "missing-release-record": _records(drop=wire.RELEASE),
    "missing-arrays-record": _records(drop=wire.ARRAYS),
    "extra-record": _records(add="extra"),
    "wrong-record-kind": _records(swap=wire.METRICS),
    "empty-content": lambda c, f: (RecordDict({}), "records: missing 'arrays', 'metrics', 'release'"),
    "missing-metric": _drop_metric,
    "extra-metric": _metric("aggregation-weight", 1e9, "metric 'aggregation-weight' is not part of the reply schema"),
    "list-metric": _metric(wire.STEPS, [1, 2], "steps=[1, 2] is not valid"),
    "sigma-nan": _metric(wire.NOISE_MULTIPLIER, math.nan, "noise-multiplier=nan is not valid"),
    "sigma-0": _metric(wire.NOISE_MULTIPLIER, 0.0, "noise-multiplier=0.0 is not valid"),
    "sigma-1000": _metric(wire.NOISE_MULTIPLIER, 1000.0, "noise-multiplier=1000.0 but {cid} was charged"),
    "steps-0": _metric(wire.STEPS, 0, "steps=0 is not valid"),
    "steps-other": _metric(wire.STEPS, 10_000, "steps=10000 but {cid} was charged"),
    "q-2": _metric(wire.SAMPLE_RATE, 2.0, "sample-rate=2.0 is not valid"),
    "q-other": _metric(wire.SAMPLE_RATE, 0.999, "sample-rate=0.999 but {cid} was charged"),
    "epsilon-inf": _metric(wire.EPSILON, math.inf, "epsilon=inf is not valid"),
    "num-examples-1e12": _metric(wire.NUM_EXAMPLES, 1e12, "num-examples=1000000000000.0 but the server weighs {cid}"),
    "num-examples-negative": _metric(wire.NUM_EXAMPLES, -5, "num-examples=-5 is not valid"),
    "num-examples-nan": _metric(wire.NUM_EXAMPLES, math.nan, "num-examples=nan is not valid"),
    "mechanism-none": _info(wire.MECHANISM, wire.NO_MECHANISM, "mechanism='none' but"),
    "mechanism-laplace": _info(wire.MECHANISM, "laplace", "mechanism='laplace' is not valid"),
    "missing-client-id": _info(wire.CLIENT_ID, None, "release field 'client-id' is missing"),
    "extra-release-field": _info("note", "trust me", "release field 'note' is not part of the reply schema"),
    "wrong-client-id": _other_client,
    "error-odd-code": _error(ODD_CODES),
}


class FuzzGrid(InProcessGrid):
    """The in-process Grid, with the attacker nodes' train replies forged (attacked) or lost (clean)."""

    attacked = True
    seed = 0
    log: list[list[tuple[str, str, str]]] = []  # per round: (class, event kind, words), in reply order

    def __init__(self, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.attackers = set(self.node_ids[HONEST:])
        self.terms: dict[int, wire.ClientTerms] = {}
        self.rng = random.Random(self.seed)
        type(self).log = []

    def send_and_receive(self, messages: Iterable[Message], *, timeout: float | None = None) -> Iterable[Message]:
        messages = list(messages)
        train = [m for m in messages if m.metadata.message_type == MessageType.TRAIN]
        if not train:  # the terms query: everyone answers for real; remember what each stated
            replies = list(super().send_and_receive(messages, timeout=timeout))
            for r in replies:
                if not r.has_error():
                    self.terms[r.metadata.src_node_id] = wire.read_terms(r.content[wire.TERMS])
            return replies
        honest = [m for m in messages if m.metadata.dst_node_id not in self.attackers]
        forged = [m for m in messages if m.metadata.dst_node_id in self.attackers]
        replies = list(super().send_and_receive(honest, timeout=timeout))
        for m in forged:
            m.metadata.__dict__["_message_id"] = f"forged-{id(m)}"
        if not self.attacked:
            return replies
        events: list[tuple[str, str, str]] = []
        for m in forged:  # each attacker's own reply: bad, and booked as its drop
            name, content, words = self._bad(m)
            replies.append(Message(content, reply_to=m))
            events.append((name, "failed" if isinstance(content, Error) else "rejected", words))
        for _ in range(EXTRA_PER_ROUND):
            kind = self.rng.random()
            if kind < 0.1:  # a node that was sent nothing this round
                stranger = Message(content=RecordDict({}), message_type=MessageType.TRAIN,
                                   dst_node_id=90_000 + self.rng.randrange(1000))
                name, content, _ = self._bad(self.rng.choice(messages))
                replies.append(Message(content, reply_to=stranger))
                events.append((f"stranger/{name}", "rejected", "which was sent no train instruction this round"))
                continue
            target = self.rng.choice(messages)  # a second reply from a sampled node, honest or attacker
            name, content, words = self._bad(target, codes=(*ODD_CODES, wire.BUDGET_EXHAUSTED, wire.POLICY_DECLINED))
            replies.append(Message(content, reply_to=target))
            if isinstance(content, Error):
                words = f"error reply, code {content.code}"
            events.append((f"second/{name}", "rejected", f"a second reply from node {target.metadata.dst_node_id} "
                           f"this round (only its first reply counts): \x00{words}"))
        type(self).log.append(events)
        return replies

    def _bad(self, instruction: Message, codes: Iterable[int] = ODD_CODES) -> tuple[str, Content, str]:
        node = instruction.metadata.dst_node_id
        forger = Forger(instruction, self.terms[node], self.rng)
        name = self.rng.choice(list(MUTATIONS))
        mutate = _error(codes) if name == "error-odd-code" else MUTATIONS[name]
        content, words = mutate(forger.honest(), forger)
        return name, content, words


def _run(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, name: str, attacked: bool):
    monkeypatch.setattr(FuzzGrid, "attacked", attacked)
    monkeypatch.setattr(simulate_module, "InProcessGrid", FuzzGrid)
    cfg = resolve({**CONFIG, "run-dir": str(tmp_path), "run-name": name})
    return simulate(cfg, run_path=tmp_path / name)


def _rows(path: Path) -> list[dict]:
    return [json.loads(line) for line in (path / "metrics.jsonl").read_text().splitlines() if line.strip()]


def test_a_thousand_bad_replies_are_refused_and_the_model_is_bit_for_bit_the_clean_one(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    clean = _run(tmp_path, monkeypatch, "clean", attacked=False)
    attacked = _run(tmp_path, monkeypatch, "attacked", attacked=True)
    log = FuzzGrid.log
    assert clean.result is not None and attacked.result is not None
    assert attacked.result.rounds_completed == clean.result.rounds_completed == ROUNDS
    assert attacked.result.stop_reason == "" and clean.result.stop_reason == ""
    assert clean.result.final_accuracy > 0.5  # the honest clients did train (chance is 0.1)

    injected = sum(len(r) for r in log)
    assert injected >= 1000
    classes = {name.split("/")[-1] for r in log for name, _, _ in r}
    assert classes == set(MUTATIONS), set(MUTATIONS) - classes

    rows = _rows(attacked.run_path)
    assert [r["round"] for r in rows] == list(range(1, ROUNDS + 1))
    for row, expected in zip(rows, log, strict=True):
        events = row["events"]
        assert len(events) == len(expected), (row["round"], len(events), len(expected))
        for event, (name, kind, words) in zip(events, expected, strict=True):
            assert event["event"] == kind, (name, event)
            for fragment in words.split("\x00"):  # a second reply: its node, then what is wrong with it
                assert fragment in event["reason"], (name, fragment, event["reason"])
            if kind == "rejected":
                assert event["reason"].startswith("reply rejected: "), event

    # the bad replies changed nothing: the model, every honest client's ledger and status are the clean run's
    for key in clean.result.arrays:
        a, b = clean.result.arrays[key].numpy(), attacked.result.arrays[key].numpy()
        assert a.tobytes() == b.tobytes() and np.isfinite(a).all(), key
    saved = [torch.load(p / "model.pt", weights_only=True) for p in (clean.run_path, attacked.run_path)]
    assert all(torch.equal(saved[0][k], saved[1][k]) for k in saved[0])
    summaries = [json.loads((p / "summary.json").read_text()) for p in (clean.run_path, attacked.run_path)]
    for cid in (f"client-{k:03d}" for k in range(HONEST)):
        assert summaries[1]["clients"][cid]["status"] == "active"
        assert summaries[1]["clients"][cid]["participations"] == ROUNDS
        assert summaries[0]["epsilon_per_client"][cid] == summaries[1]["epsilon_per_client"][cid]
        ledgers = [(p / "ledgers" / f"{cid}.jsonl").read_text().splitlines() for p in (clean.run_path,
                                                                                     attacked.run_path)]
        assert [json.loads(x)["epsilon"] for x in ledgers[0]] == [json.loads(x)["epsilon"] for x in ledgers[1]]
    for cid in (f"client-{k:03d}" for k in range(HONEST, HONEST + ATTACKERS)):
        assert summaries[1]["clients"][cid]["status"] == "dropped"  # charged every round, never averaged
        assert summaries[1]["clients"][cid]["participations"] == ROUNDS
    assert (attacked.run_path / "report" / "report.json").exists()
