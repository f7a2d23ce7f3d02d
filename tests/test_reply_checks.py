"""server.reply_checks and DpFedAvg's reply handling: one test per rejection class, each asserting its reason."""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest
from flwr.app import Array, ArrayRecord, ConfigRecord, Error, Message, MetricRecord, RecordDict

from dpfl.privacy import DpSgdRelease, wire
from dpfl.server import reply_checks
from dpfl.server.averaging import PostProcessing
from dpfl.server.reply_checks import SentModel, UpdateBound
from dpfl.server.roster import Roster
from dpfl.server.strategy import DpFedAvg
from dpfl.simulations.engines.inprocess import set_task_identity

SIGMA, Q, STEPS, N = 1.0, 0.25, 4, 64
BASE_NODE = 500


class NodesGrid:
    """Only what configure_train asks of a Grid."""

    def __init__(self, nodes: list[int]) -> None:
        self.nodes = nodes

    def get_node_ids(self) -> list[int]:
        return list(self.nodes)


def client_id(k: int) -> str:
    return f"client-{k:03d}"


def model(seed: int = 0) -> ArrayRecord:
    rng = np.random.default_rng(seed)
    return ArrayRecord({"w": Array(rng.normal(size=(4, 3)).astype(np.float32)),
                        "b": Array(rng.normal(size=(3,)).astype(np.float32))})


def make_strategy(clients: int = 3, *, dp: bool = True, weights: str | None = "declared",
                  declared: Callable[[int], int] = lambda k: N, bound: UpdateBound | None = None,
                  ledger_dir: Path | None = None) -> tuple[DpFedAvg, Roster, NodesGrid]:
    set_task_identity(1, 1)
    roster = Roster(ledger_dir=ledger_dir, delta=1e-5, accountant="rdp", max_participations=1000, budget=0.0)
    for k in range(clients):
        release = DpSgdRelease(SIGMA, Q, STEPS) if dp else None
        roster.record_terms(BASE_NODE + k, wire.ClientTerms(
            client_id=client_id(k), release=release, neighbouring="add-remove", declared_records=declared(k),
            max_rounds=1000, prior_epsilon=0.0, prior_runs=()))
    strategy = DpFedAvg(roster=roster, num_clients=clients, fraction_train=1.0, min_train_clients=1,
                        fraction_evaluate=0.0, post_processing=PostProcessing(), seed=1,
                        aggregation_weights=weights, update_bound=bound)
    return strategy, roster, NodesGrid([BASE_NODE + k for k in range(clients)])


def send(strategy: DpFedAvg, grid: NodesGrid, arrays: ArrayRecord, server_round: int = 1) -> dict[int, Message]:
    config = ConfigRecord(wire.train_config(server_round, 1e-5, "/tmp/run"))
    messages = list(strategy.configure_train(server_round, arrays, config, grid))
    for i, m in enumerate(messages):
        m.metadata.__dict__["_message_id"] = f"r{server_round}-m{i}"
    return {m.metadata.dst_node_id: m for m in messages}


def honest_content(instruction: Message, k: int, *, declared: int = N, dp: bool = True,
                   scale: float = 0.01, seed: int = 0) -> RecordDict:
    """What an honest ClientApp sends: the model moved a little, the release it was charged, weight N."""
    rng = np.random.default_rng(seed + 1000 * k)
    sent = instruction.content[wire.ARRAYS]
    arrays = ArrayRecord({key: Array((arr.numpy() + scale * rng.normal(size=arr.shape)).astype(arr.numpy().dtype))
                          for key, arr in sent.items()})
    release = DpSgdRelease(SIGMA, Q, STEPS, 1) if dp else None
    rel_metrics, info = wire.release_to_wire(client_id(k), release)
    metrics = {wire.NUM_EXAMPLES: declared, wire.EPSILON: 0.5, wire.SAMPLE_RATE: Q, wire.STEPS: STEPS,
               **rel_metrics, wire.PARTITION_ID: k}
    return RecordDict({wire.ARRAYS: arrays, wire.METRICS: MetricRecord(metrics), wire.RELEASE: ConfigRecord(info)})


def reply(instruction: Message, content: RecordDict) -> Message:
    return Message(content, reply_to=instruction)


def rejection(strategy: DpFedAvg, replies: list[object], server_round: int = 1) -> list[str]:
    strategy.aggregate_train(server_round, replies)
    return [e["reason"] for e in strategy.round_events if e["event"] == "rejected"]


def one_bad(mutate: Callable[[RecordDict, Message], RecordDict | None], **kw: object) -> str:
    """Node 0 sends a reply built by ``mutate`` from an honest one; nodes 1 and 2 are honest. The reason."""
    strategy, roster, grid = make_strategy(**kw)  # type: ignore[arg-type]
    sent = send(strategy, grid, model())
    dp = bool(kw.get("dp", True))
    content = honest_content(sent[BASE_NODE], 0, dp=dp)
    changed = mutate(content, sent[BASE_NODE])
    content = content if changed is None else changed
    replies = [reply(sent[BASE_NODE], content)] + [
        reply(sent[BASE_NODE + k], honest_content(sent[BASE_NODE + k], k, dp=dp)) for k in (1, 2)]
    reasons = rejection(strategy, replies)
    assert strategy.accepted == 2 and strategy.rejected == 1, strategy.round_events
    assert len(reasons) == 1
    assert roster.clients[client_id(0)].status == "dropped" and roster.clients[client_id(0)].reason == reasons[0]
    assert roster.clients[client_id(1)].status == "active"
    return reasons[0]


def set_array(key: str, value: np.ndarray) -> Callable[[RecordDict, Message], None]:
    def mutate(content: RecordDict, _: Message) -> None:
        content[wire.ARRAYS][key] = Array(value)
    return mutate


def set_metric(key: str, value: object) -> Callable[[RecordDict, Message], None]:
    def mutate(content: RecordDict, _: Message) -> None:
        content[wire.METRICS][key] = value
    return mutate


def set_info(key: str, value: str) -> Callable[[RecordDict, Message], None]:
    def mutate(content: RecordDict, _: Message) -> None:
        content[wire.RELEASE][key] = value
    return mutate


# -- the honest path -----------------------------------------------------------------------------------------
def test_honest_replies_are_averaged_with_the_servers_weights_in_float64() -> None:
    strategy, roster, grid = make_strategy(declared=lambda k: 10 * (k + 1))
    sent = send(strategy, grid, model())
    contents = {k: honest_content(sent[BASE_NODE + k], k, declared=10 * (k + 1)) for k in range(3)}
    out, metrics = strategy.aggregate_train(1, [reply(sent[BASE_NODE + k], contents[k]) for k in (2, 0, 1)])
    assert out is not None and metrics is not None and strategy.accepted == 3 and strategy.rejected == 0
    for key in ("w", "b"):
        want = sum(10 * (k + 1) * contents[k][wire.ARRAYS][key].numpy().astype(np.float64) for k in range(3)) / 60
        np.testing.assert_array_equal(out[key].numpy(), want.astype(np.float32))
    assert metrics["participants"] == 3


def test_uniform_weights_ignore_the_declared_records() -> None:
    strategy, _, grid = make_strategy(weights="uniform", declared=lambda k: 10 * (k + 1))
    sent = send(strategy, grid, model())
    contents = {k: honest_content(sent[BASE_NODE + k], k, declared=1) for k in range(3)}
    out, _ = strategy.aggregate_train(1, [reply(sent[BASE_NODE + k], contents[k]) for k in range(3)])
    want = sum(contents[k][wire.ARRAYS]["b"].numpy().astype(np.float64) for k in range(3)) / 3
    assert out is not None
    np.testing.assert_array_equal(out["b"].numpy(), want.astype(np.float32))


def test_the_arrival_order_does_not_change_a_bit_of_the_average() -> None:
    results = []
    for order in ((0, 1, 2), (2, 1, 0), (1, 2, 0)):
        strategy, _, grid = make_strategy()
        sent = send(strategy, grid, model())
        out, _ = strategy.aggregate_train(1, [reply(sent[BASE_NODE + k], honest_content(sent[BASE_NODE + k], k))
                                              for k in order])
        assert out is not None
        results.append(out["w"].numpy().tobytes())
    assert len(set(results)) == 1


# -- records -------------------------------------------------------------------------------------------------
def test_a_missing_record_is_rejected() -> None:
    assert one_bad(lambda c, _: RecordDict({wire.ARRAYS: c[wire.ARRAYS], wire.METRICS: c[wire.METRICS]})) == \
        "reply rejected: records: missing 'release'"


def test_an_extra_record_is_rejected() -> None:
    def mutate(c: RecordDict, _: Message) -> None:
        c["extra"] = ConfigRecord({"x": 1})
    assert one_bad(mutate) == "reply rejected: records: unexpected 'extra'"


def test_a_record_of_the_wrong_kind_is_rejected() -> None:
    def mutate(c: RecordDict, _: Message) -> RecordDict:
        return RecordDict({wire.ARRAYS: ConfigRecord({"w": 1}), wire.METRICS: c[wire.METRICS],
                           wire.RELEASE: c[wire.RELEASE]})
    assert "records: 'arrays' is a ConfigRecord, expected a ArrayRecord" in one_bad(mutate)


def test_empty_content_is_rejected() -> None:
    assert "records: missing 'arrays', 'metrics', 'release'" in one_bad(lambda c, _: RecordDict({}))


# -- arrays --------------------------------------------------------------------------------------------------
def test_a_missing_array_key_is_rejected() -> None:
    def mutate(c: RecordDict, _: Message) -> None:
        del c[wire.ARRAYS]["b"]
    assert one_bad(mutate) == "reply rejected: arrays: missing key(s) 'b'"


def test_an_extra_array_key_is_rejected() -> None:
    assert one_bad(set_array("backdoor", np.zeros(3, np.float32))) == \
        "reply rejected: arrays: unexpected key(s) 'backdoor'"


def test_a_wrong_shape_is_rejected() -> None:
    assert "arrays: 'w' has shape (3, 4) but the model sent has (4, 3)" in one_bad(
        set_array("w", np.zeros((3, 4), np.float32)))


def test_a_one_element_tensor_numpy_would_broadcast_is_rejected() -> None:
    assert "arrays: 'w' has shape (1,) but the model sent has (4, 3)" in one_bad(
        set_array("w", np.zeros(1, np.float32)))


def test_a_wrong_float_dtype_is_rejected() -> None:
    assert "arrays: 'b' has dtype float64 but the model sent has float32" in one_bad(
        set_array("b", np.zeros(3, np.float64)))


def test_an_integer_tensor_is_rejected() -> None:
    assert "arrays: 'b' has dtype int64 but the model sent has float32" in one_bad(
        set_array("b", np.zeros(3, np.int64)))


@pytest.mark.parametrize(("value", "count"), [(np.full((4, 3), np.nan, np.float32), 12),
                                              (np.full((4, 3), np.inf, np.float32), 12),
                                              (np.where(np.eye(4, 3) > 0, np.nan, 0.0).astype(np.float32), 3)],
                         ids=["all-nan", "inf", "some-nan"])
def test_non_finite_values_are_rejected(value: np.ndarray, count: int) -> None:
    assert f"arrays: 'w' holds {count} non-finite value(s) (NaN or Inf)" in one_bad(set_array("w", value))


def test_a_single_nan_element_is_rejected() -> None:
    def mutate(c: RecordDict, _: Message) -> None:
        w = c[wire.ARRAYS]["w"].numpy().copy()
        w[2, 1] = np.nan
        c[wire.ARRAYS]["w"] = Array(w)
    assert "arrays: 'w' holds 1 non-finite value(s)" in one_bad(mutate)


def test_an_update_scaled_by_a_million_is_rejected() -> None:
    def mutate(c: RecordDict, instruction: Message) -> None:
        for key, arr in instruction.content[wire.ARRAYS].items():
            base = arr.numpy()
            c[wire.ARRAYS][key] = Array((base + 1e6 * (c[wire.ARRAYS][key].numpy() - base)).astype(np.float32))
    reason = one_bad(mutate)
    assert "arrays: update norm" in reason and "exceeds the bound" in reason


def test_a_model_scaled_by_a_million_is_rejected_under_the_fallback_bound_too() -> None:
    def mutate(c: RecordDict, instruction: Message) -> None:
        for key, arr in instruction.content[wire.ARRAYS].items():
            c[wire.ARRAYS][key] = Array((1e6 * arr.numpy()).astype(np.float32))
    assert "exceeds the bound" in one_bad(mutate, bound=None)


def test_an_array_whose_bytes_lie_about_its_header_is_rejected() -> None:
    def mutate(c: RecordDict, _: Message) -> None:
        real = Array(np.zeros(12, np.float64))
        c[wire.ARRAYS]["w"] = Array(dtype="float32", shape=(4, 3), stype="numpy.ndarray", data=real.data)
    assert "arrays: 'w' holds shape (12,), dtype float64, not what its header says" in one_bad(mutate)


def test_unreadable_array_bytes_are_rejected() -> None:
    def mutate(c: RecordDict, _: Message) -> None:
        c[wire.ARRAYS]["w"] = Array(dtype="float32", shape=(4, 3), stype="numpy.ndarray", data=b"\x00junk")
    assert "arrays: 'w' cannot be read" in one_bad(mutate)


# -- metrics and the release record --------------------------------------------------------------------------
@pytest.mark.parametrize("key", wire.TRAIN_METRICS)
def test_a_missing_metric_is_rejected(key: str) -> None:
    def mutate(c: RecordDict, _: Message) -> None:
        del c[wire.METRICS][key]
    assert one_bad(mutate) == f"reply rejected: train reply: metric {key!r} is missing"


def test_an_extra_metric_is_rejected() -> None:
    assert "metric 'weight-boost' is not part of the reply schema" in one_bad(set_metric("weight-boost", 1.0))


def test_half_of_the_private_metrics_is_rejected() -> None:
    assert "metric 'train-examples-seen' is missing (private metrics come together)" in one_bad(
        set_metric(wire.TRAIN_LOSS, 0.3))


def test_the_private_metrics_together_are_accepted() -> None:
    strategy, _, grid = make_strategy()
    sent = send(strategy, grid, model())
    contents = [honest_content(sent[BASE_NODE + k], k) for k in range(3)]
    contents[0][wire.METRICS][wire.TRAIN_LOSS] = 0.3
    contents[0][wire.METRICS][wire.TRAIN_EXAMPLES_SEEN] = 40
    strategy.aggregate_train(1, [reply(sent[BASE_NODE + k], contents[k]) for k in range(3)])
    assert strategy.accepted == 3


@pytest.mark.parametrize(("value", "words"), [
    ([1.0, 2.0], "num-examples=[1.0, 2.0] is not valid: expected a finite number"),
    (math.nan, "num-examples=nan is not valid: expected a finite number"),
    (-64, "num-examples=-64 is not valid: expected an integer >= 1"),
    (1e12, "num-examples=1000000000000.0 but the server weighs client-000 by 64 (aggregation-weights = declared)"),
    (1, "num-examples=1 but the server weighs client-000 by 64"),
], ids=["list", "nan", "negative", "1e12", "uniform-claim"])
def test_the_weight_a_reply_claims_is_refused_unless_it_is_the_servers(value: object, words: str) -> None:
    assert words in one_bad(set_metric(wire.NUM_EXAMPLES, value))


def test_without_a_weight_mode_a_reply_can_only_lower_its_weight_to_one() -> None:
    assert "by one of 1, 64 (declared records or uniform)" in one_bad(set_metric(wire.NUM_EXAMPLES, 1e12),
                                                                     weights=None)
    strategy, _, grid = make_strategy(weights=None)
    sent = send(strategy, grid, model())
    strategy.aggregate_train(1, [reply(sent[BASE_NODE + k], honest_content(sent[BASE_NODE + k], k, declared=1))
                                 for k in range(3)])
    assert strategy.accepted == 3


@pytest.mark.parametrize(("key", "value", "words"), [
    (wire.NOISE_MULTIPLIER, math.nan, "noise-multiplier=nan is not valid"),
    (wire.NOISE_MULTIPLIER, 0.0, "noise-multiplier=0.0 is not valid: expected a number > 0"),
    (wire.NOISE_MULTIPLIER, 1000.0, "noise-multiplier=1000.0 but client-000 was charged noise-multiplier=1.0"),
    (wire.NOISE_MULTIPLIER, 0.5, "noise-multiplier=0.5 but client-000 was charged noise-multiplier=1.0"),
    (wire.STEPS, 0, "steps=0 is not valid: expected an integer >= 1"),
    (wire.STEPS, 5, "steps=5 but client-000 was charged steps=4"),
    (wire.SAMPLE_RATE, 2.0, "sample-rate=2.0 is not valid: expected a number in (0, 1]"),
    (wire.SAMPLE_RATE, 0.5, "sample-rate=0.5 but client-000 was charged sample-rate=0.25"),
    (wire.EPSILON, -1.0, "epsilon=-1.0 is not valid: expected a number >= 0"),
    (wire.PARTITION_ID, 1.5, "partition-id=1.5 is not valid: expected an integer >= 0"),
], ids=["sigma-nan", "sigma-0", "sigma-1000", "sigma-low", "steps-0", "steps-other", "q-2", "q-other",
        "epsilon-negative", "partition-fraction"])
def test_a_release_other_than_the_one_charged_is_rejected(key: str, value: float, words: str) -> None:
    assert words in one_bad(set_metric(key, value))


def test_mechanism_none_in_a_dp_run_is_rejected() -> None:
    assert "mechanism='none' but client-000 was charged a dp-sgd release this round" in one_bad(
        set_info(wire.MECHANISM, wire.NO_MECHANISM))


def test_a_dp_release_in_a_run_without_dp_is_rejected() -> None:
    def mutate(c: RecordDict, _: Message) -> None:
        c[wire.RELEASE][wire.MECHANISM] = DpSgdRelease.MECHANISM
        c[wire.METRICS][wire.NOISE_MULTIPLIER] = SIGMA
    reason = one_bad(mutate, dp=False)
    assert "trains without DP in this run" in reason


def test_an_unknown_mechanism_is_rejected() -> None:
    assert "mechanism='laplace' is not valid" in one_bad(set_info(wire.MECHANISM, "laplace"))


def test_an_extra_release_field_is_rejected() -> None:
    assert "release field 'sigma-override' is not part of the reply schema" in one_bad(
        set_info("sigma-override", "0"))


def test_a_missing_release_field_is_rejected() -> None:
    def mutate(c: RecordDict, _: Message) -> None:
        del c[wire.RELEASE][wire.CLIENT_ID]
    assert "release field 'client-id' is missing" in one_bad(mutate)


# -- identity, duplicates, strangers, junk, errors ------------------------------------------------------------
def test_a_reply_naming_another_client_is_rejected_and_books_nothing_on_it() -> None:
    reason = one_bad(set_info(wire.CLIENT_ID, client_id(1)))
    assert f"client-id='client-001' but node {BASE_NODE} stated terms as 'client-000'" in reason


def test_a_second_reply_from_a_node_is_rejected_and_the_first_stands() -> None:
    strategy, roster, grid = make_strategy()
    sent = send(strategy, grid, model())
    honest = [reply(sent[BASE_NODE + k], honest_content(sent[BASE_NODE + k], k)) for k in range(3)]
    bad = honest_content(sent[BASE_NODE], 0)
    bad[wire.METRICS][wire.NUM_EXAMPLES] = 1e12
    error = Message(Error(code=wire.BUDGET_EXHAUSTED, reason="client-000: out of budget"), reply_to=sent[BASE_NODE])
    reasons = rejection(strategy, [*honest, reply(sent[BASE_NODE], bad), error, honest[1]])
    assert strategy.accepted == 3 and len(reasons) == 3
    for r, k in zip(reasons, (0, 0, 1), strict=True):
        assert f"a second reply from node {BASE_NODE + k} this round" in r
    assert "num-examples=1000000000000.0" in reasons[0] and "code 4001" in reasons[1]
    assert "otherwise well-formed" in reasons[2]
    assert roster.clients[client_id(0)].status == "active"  # a later error reply books nothing


def test_a_reply_from_a_node_not_sent_to_is_rejected_without_booking() -> None:
    strategy, roster, grid = make_strategy()
    sent = send(strategy, grid, model())
    stranger = Message(content=RecordDict({}), message_type="train", dst_node_id=77)
    replies = [reply(sent[BASE_NODE + k], honest_content(sent[BASE_NODE + k], k)) for k in range(3)]
    reasons = rejection(strategy, [reply(stranger, honest_content(sent[BASE_NODE], 0)), *replies])
    assert reasons == ["reply rejected: reply from node 77, which was sent no train instruction this round"]
    assert strategy.accepted == 3 and 77 not in roster.node_to_client and len(roster.clients) == 3


@pytest.mark.parametrize("junk", [None, "reply", 42, RecordDict({}), object()], ids=repr)
def test_non_messages_are_rejected(junk: object) -> None:
    strategy, _, grid = make_strategy()
    sent = send(strategy, grid, model())
    replies = [reply(sent[BASE_NODE + k], honest_content(sent[BASE_NODE + k], k)) for k in range(3)]
    reasons = rejection(strategy, [junk, *replies])
    assert reasons == [f"reply rejected: not a Flower Message: {type(junk).__name__}"] and strategy.accepted == 3


@pytest.mark.parametrize("code", [0, -1, 4002, 4003, 99999, 2**31 - 1])
def test_error_replies_with_any_code_are_drops_booked_on_the_nodes_own_client(code: int) -> None:
    strategy, roster, grid = make_strategy()
    sent = send(strategy, grid, model())
    error = Message(Error(code=code, reason="client-002: " + "x" * 5000), reply_to=sent[BASE_NODE])
    strategy.aggregate_train(1, [error, *[reply(sent[BASE_NODE + k], honest_content(sent[BASE_NODE + k], k))
                                         for k in (1, 2)]])
    assert strategy.accepted == 2
    assert roster.clients[client_id(0)].status == "dropped" and roster.clients[client_id(2)].status == "active"
    assert len(strategy.round_events[0]["reason"]) < 400  # a client's text is bounded in the events


def test_a_budget_decline_naming_another_client_declines_only_the_sender() -> None:
    strategy, roster, grid = make_strategy()
    sent = send(strategy, grid, model())
    error = Message(Error(code=wire.BUDGET_EXHAUSTED, reason="client-002: out of budget"), reply_to=sent[BASE_NODE])
    strategy.aggregate_train(1, [error])
    assert roster.clients[client_id(0)].status == "exhausted"
    assert roster.clients[client_id(2)].status == "active" and roster.node_to_client[BASE_NODE] == client_id(0)


def test_all_replies_bad_leaves_the_model_unchanged_and_the_round_goes_on() -> None:
    strategy, roster, grid = make_strategy()
    sent = send(strategy, grid, model())
    assert strategy.aggregate_train(1, [reply(sent[BASE_NODE + k], RecordDict({})) for k in range(3)]) == (None, None)
    assert strategy.rejected == 3 and all(st.status == "dropped" for st in roster.clients.values())
    assert len(send(strategy, grid, model(), server_round=2)) == 3  # dropped clients are sampled again


def test_a_broken_replies_iterable_is_an_empty_round() -> None:
    strategy, _, grid = make_strategy()
    send(strategy, grid, model())

    def broken():
        yield 1
        raise RuntimeError("grid fell over")
    assert strategy.aggregate_train(1, broken()) == (None, None)
    assert any("replies could not be read" in e["reason"] for e in strategy.round_events)


# -- charging ------------------------------------------------------------------------------------------------
def test_a_client_whose_charge_fails_is_not_sent_and_its_roster_entry_is_untouched(tmp_path: Path,
                                                                                    monkeypatch) -> None:
    strategy, roster, grid = make_strategy(ledger_dir=tmp_path)
    ledger = roster.ledgers[client_id(1)]
    before = (roster.clients[client_id(1)].participations, roster.clients[client_id(1)].epsilon)

    def fail(*_: object, **__: object) -> None:
        raise OSError("No space left on device")
    monkeypatch.setattr(ledger, "append", fail)
    sent = send(strategy, grid, model())
    assert set(sent) == {BASE_NODE, BASE_NODE + 2}
    assert (roster.clients[client_id(1)].participations, roster.clients[client_id(1)].epsilon) == before
    assert roster.clients[client_id(1)].last_release is None and roster.clients[client_id(0)].participations == 1
    strategy.aggregate_train(1, [reply(sent[n], honest_content(sent[n], n - BASE_NODE)) for n in sent])
    assert strategy.accepted == 2
    assert any(e["event"] == "failed" and "could not be charged" in e["reason"] and "No space left" in e["reason"]
               for e in strategy.round_events)


# -- the update bound ----------------------------------------------------------------------------------------
def test_the_bound_from_the_run_config_follows_the_derivation() -> None:
    sent = SentModel.of(model())
    bound = UpdateBound.from_run_config({"learning-rate": 0.1, "momentum": 0.5, "optimizer": "sgd",
                                         "max-grad-norm": 2.0})
    release = DpSgdRelease(SIGMA, Q, STEPS)
    d = sent.num_params
    per_step = 0.1 / 0.5 * 2.0 * (100 / Q + SIGMA * (math.sqrt(d) + 10) / (Q * N))
    assert bound.limit(sent, release, N) == pytest.approx(10 * STEPS * per_step)
    adam = UpdateBound.from_run_config({"learning-rate": 0.1, "optimizer": "adam"})
    assert adam.limit(sent, release, N) == pytest.approx(10 * STEPS * 10 * 0.1 * math.sqrt(d))
    assert bound.limit(sent, None, N) == UpdateBound().limit(sent, release, N) == \
        pytest.approx(1000 * (sent.norm + math.sqrt(d)))


def test_a_real_clients_update_is_far_inside_both_bounds(tmp_path: Path) -> None:
    from client_messages import train_call

    from dpfl.simulations.apps import clientapp
    from dpfl.simulations.config import resolve

    cfg = resolve({"dataset": "digits", "model": "mlp", "num-clients": 2, "batch-size": 32, "target-epsilon": 0.0,
                   "noise-multiplier": 1.0, "learning-rate": 0.5, "momentum": 0.9, "local-epochs": 2}).as_dict()
    msg, ctx = train_call(cfg, tmp_path)
    out = clientapp(msg, ctx)
    assert not out.has_error()
    sent = SentModel.of(msg.content[wire.ARRAYS])
    _, release = wire.release_from_wire(out.content[wire.METRICS], out.content[wire.RELEASE], 1)
    declared = int(out.content[wire.METRICS][wire.NUM_EXAMPLES])
    arrays = reply_checks.decode_update(sent, out.content[wire.ARRAYS], math.inf)
    norm = math.sqrt(sum(float(np.square(a.astype(np.float64) - b).sum())
                         for a, b in zip(arrays, sent.arrays, strict=True)))
    assert norm > 0
    for bound in (UpdateBound.from_run_config(cfg), UpdateBound()):
        assert norm < bound.limit(sent, release, declared) / 100
    assert reply_checks.check_update(msg.content[wire.ARRAYS], out.content[wire.ARRAYS],
                                     UpdateBound.from_run_config(cfg).limit(sent, release, declared)) is None
    assert wire.check_train_reply_fields(out.content[wire.METRICS], out.content[wire.RELEASE]) is None


# -- evaluate replies ----------------------------------------------------------------------------------------
def test_evaluate_replies_never_crash_and_malformed_ones_are_skipped() -> None:
    strategy, _, grid = make_strategy()
    sent = send(strategy, grid, model())
    good = [reply(sent[BASE_NODE + k], RecordDict({wire.METRICS: MetricRecord(
        {wire.NUM_EXAMPLES: 10 * (k + 1), "val-loss": float(k), "val-accuracy": 0.5})})) for k in (0, 1)]
    bad = [reply(sent[BASE_NODE + 2], RecordDict({wire.METRICS: MetricRecord({wire.NUM_EXAMPLES: math.nan})})),
           reply(sent[BASE_NODE + 2], RecordDict({wire.METRICS: MetricRecord({wire.NUM_EXAMPLES: 5, "x": [1.0]})})),
           reply(sent[BASE_NODE + 2], RecordDict({wire.METRICS: MetricRecord({"val-loss": 1.0})})),
           reply(sent[BASE_NODE + 2], RecordDict({wire.ARRAYS: model()})),
           reply(sent[BASE_NODE + 2], RecordDict({})),
           Message(Error(code=7, reason=None), reply_to=sent[BASE_NODE + 2]), None, "junk"]
    metrics = strategy.aggregate_evaluate(1, [*bad[:3], good[0], *bad[3:], good[1]])
    assert metrics is not None and metrics[wire.NUM_EXAMPLES] == 30
    assert metrics["val-loss"] == pytest.approx(20 / 30) and metrics["val-accuracy"] == pytest.approx(0.5)
    assert strategy.aggregate_evaluate(1, bad) is None


def test_terms_cannot_claim_a_client_id_another_node_holds() -> None:
    _, roster, _ = make_strategy(2)
    thief = wire.ClientTerms(client_id=client_id(0), release=DpSgdRelease(SIGMA, Q, STEPS), neighbouring="add-remove",
                             declared_records=N, max_rounds=1000, prior_epsilon=0.0, prior_runs=())
    with pytest.raises(wire.WireError, match="already held by node"):
        roster.record_terms(BASE_NODE + 7, thief)
    with pytest.raises(wire.WireError, match="cannot rename itself"):
        roster.record_terms(BASE_NODE + 1, dataclasses.replace(thief, client_id="client-009"))
    assert roster.holder(client_id(0)) == BASE_NODE and roster.node_to_client[BASE_NODE + 1] == client_id(1)
    assert BASE_NODE + 7 not in roster.node_to_client


def test_a_policy_decline_naming_another_client_is_booked_on_the_sender() -> None:
    _, roster, _ = make_strategy(2)
    booked = roster.record_policy_decline(BASE_NODE + 9, client_id(0), 1, f"{client_id(0)}: declined")
    assert booked == f"node-{BASE_NODE + 9}"
    assert roster.clients[client_id(0)].status == "active"
