"""Checks on what a client sends back: a train reply's records, update, metrics and release, before any use.

Pure functions: each takes what the server sent (or knows) and what came back, and returns the reason a
reply is unusable (``str``) or ``None``; ``decode_update`` raises ``Rejected`` with that reason and returns the
update's arrays when it is usable. Nothing a reply says about itself is believed: its arrays must have
exactly the keys, shapes and dtypes of the global model the server sent, hold only finite values, and lie
within ``UpdateBound`` of the sent model; its metrics and release record must match the schema in
``privacy/wire.py`` exactly. Identity, release and aggregation weight are compared with what the server
itself recorded (``server/roster.py``), in ``server/strategy.py``.

The update-norm bound (``UpdateBound``), and why it never rejects an honest update:

- With the run's training settings (``UpdateBound.from_run_config``), a DP-SGD step of a client is
  ``lr * (sum of clipped per-sample gradients + N(0, sigma^2 C^2 I_d)) / B`` with ``B = q * N`` (N the declared
  records the sampling rate comes from). By the triangle inequality its norm is at most
  ``lr * C * (|batch| / B + sigma * |xi| / B)``; ``|batch| / B <= n / (q N)``, bounded here by
  ``RECORDS_SLACK / q`` (a client may hold up to 100 times its declared records: non-IID shares), and the
  Gaussian norm ``|xi| <= sqrt(d) + 10`` except with probability ``exp(-50)`` per step. SGD momentum ``mu``
  multiplies a bound on every step by at most ``1 / (1 - mu)``; an Adam step moves each coordinate by at most
  ``(1 - b1) / sqrt(1 - b2) * sqrt(1 / (1 - b1^2 / b2)) < 7.3`` learning rates (torch's default betas), so
  ``ADAM_STEP * lr * sqrt(d)`` with ``ADAM_STEP = 10``. Summed over the release's ``steps`` (no cancellation
  assumed) and multiplied by ``SAFETY = 10``, the bound is a worst case an honest client cannot reach.
  SGD weight decay ``wd`` adds ``lr / (1 - mu) * wd * |w|`` per step with ``|w| <= |sent| + (the update so far)``,
  so (Gronwall) the sum ``B`` becomes ``(B + steps * a * |sent|) * exp(steps * a)``, ``a = lr * wd / (1 - mu)``.
- Without the training settings, or for a run without DP (no clipping: nothing bounds a plain SGD step), the
  bound is ``FALLBACK_FACTOR * (|sent| + sqrt(d))`` with ``FALLBACK_FACTOR = 1000``: a thousand times the sent
  model's norm plus a thousand per-coordinate unit steps. With the default settings a typical honest update is
  below a tenth of ``|sent| + sqrt(d)``, four orders of magnitude under it; what it stops is a scaled or
  exploded update (x1e6, Inf-adjacent), which would make the averaged model whatever its sender chose.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import numpy as np
from flwr.app import Array, ArrayRecord, ConfigRecord, MetricRecord, RecordDict

from dpfl.privacy import wire
from dpfl.privacy.releases import DpSgdRelease

RECORDS_SLACK = 100.0  # a client's true records / its declared N that an honest bound still allows
GAUSS_TAIL = 10.0  # |xi| <= sqrt(d) + 10 except with probability exp(-50) per step
ADAM_STEP = 10.0  # most learning rates one Adam step moves one coordinate (true bound < 7.3)
SAFETY = 10.0  # on top of the worst case above
FALLBACK_FACTOR = 1000.0  # without training settings: this times (|sent| + sqrt(d))
MAX_REASON = 300  # characters of a client's own error text kept in events


class Rejected(ValueError):
    """A reply that is not used; the message is the reason, as events and the report show it."""


def clip_text(text: object, limit: int = MAX_REASON) -> str:
    """A client's text, bounded: an error reason of a megabyte must not fill metrics.jsonl."""
    s = str(text)
    return s if len(s) <= limit else s[:limit] + f"... ({len(s)} characters)"


@dataclass(frozen=True)
class SentModel:
    """The global model a round sent, decoded once: what every reply is compared with."""

    keys: tuple[str, ...]
    arrays: tuple[np.ndarray, ...]
    norm: float  # L2 over the floating-point arrays, in float64
    num_params: int  # floating-point parameters d

    @classmethod
    def of(cls, record: ArrayRecord) -> SentModel:
        keys = tuple(record.keys())
        arrays = tuple(record[k].numpy() for k in keys)
        floating = [a for a in arrays if _floating(a)]
        norm = math.sqrt(sum(float(np.square(a, dtype=np.float64).sum()) for a in floating))
        return cls(keys=keys, arrays=arrays, norm=norm, num_params=sum(int(a.size) for a in floating))


def _floating(a: np.ndarray) -> bool:
    return bool(np.issubdtype(a.dtype, np.floating))


@dataclass(frozen=True)
class UpdateBound:
    """The largest update norm (L2 of reply - sent, over all floating arrays) an honest client can produce;
    see the module docstring for the derivation. ``learning_rate`` None: the training settings are unknown
    and the fallback applies."""

    learning_rate: float | None = None
    momentum: float = 0.0
    optimizer: str = "sgd"
    max_grad_norm: float = 1.0
    weight_decay: float = 0.0

    @classmethod
    def from_run_config(cls, cfg: Mapping[str, Any]) -> UpdateBound:
        """From the flat run config the clients train with (learning-rate, momentum, optimizer, max-grad-norm)."""
        return cls(learning_rate=float(cfg["learning-rate"]), momentum=float(cfg.get("momentum", 0.0)),
                   optimizer=str(cfg.get("optimizer", "sgd")), max_grad_norm=float(cfg.get("max-grad-norm", 1.0)),
                   weight_decay=float(cfg.get("weight-decay", 0.0)))

    def fallback(self, sent: SentModel) -> float:
        return FALLBACK_FACTOR * (sent.norm + math.sqrt(max(sent.num_params, 1)))

    def limit(self, sent: SentModel, release: DpSgdRelease | None, declared_records: int) -> float:
        """The bound for one client's update this round, from its charged release and declared records."""
        if self.learning_rate is None or release is None:
            return self.fallback(sent)
        d = max(sent.num_params, 1)
        if self.optimizer == "adam":
            per_step = ADAM_STEP * self.learning_rate * math.sqrt(d)
        else:
            batch = max(release.sample_rate * max(declared_records, 1), 1e-12)
            per_step = (self.learning_rate / max(1.0 - self.momentum, 1e-12) * self.max_grad_norm
                        * (RECORDS_SLACK / release.sample_rate
                           + release.noise_multiplier * (math.sqrt(d) + GAUSS_TAIL) / batch))
        bound = release.steps * per_step
        if self.weight_decay > 0 and self.optimizer != "adam":  # Adam's step is bounded whatever its gradient
            # each step adds lr / (1 - momentum) * wd * w, and ||w|| never exceeds ||sent|| + the bound so far
            decay = self.learning_rate / max(1.0 - self.momentum, 1e-12) * self.weight_decay
            bound = (bound + release.steps * decay * sent.norm) * math.exp(release.steps * decay)
        return SAFETY * bound


# -- the reply's records ------------------------------------------------------------------------------------
def check_train_records(content: object) -> str | None:
    """Exactly the three records a train reply carries (wire.TRAIN_REPLY_RECORDS), each of its kind."""
    if not isinstance(content, RecordDict):
        return f"records: content is {type(content).__name__}, not a RecordDict"
    names = set(content.keys())
    wanted = set(wire.TRAIN_REPLY_RECORDS)
    if names != wanted:
        missing, extra = sorted(wanted - names), sorted(names - wanted)
        return "records: " + "; ".join(
            [f"missing {', '.join(repr(n) for n in missing)}"] * bool(missing)
            + [f"unexpected {', '.join(repr(n) for n in extra)}"] * bool(extra))
    kinds = {wire.ARRAYS: ArrayRecord, wire.METRICS: MetricRecord, wire.RELEASE: ConfigRecord}
    for name, kind in kinds.items():
        if not isinstance(content[name], kind):
            return f"records: {name!r} is a {type(content[name]).__name__}, expected a {kind.__name__}"
    return None


def check_fields(metrics: Mapping[str, Any], info: Mapping[str, Any]) -> str | None:
    """The metrics and release record hold exactly the schema of privacy/wire.py."""
    try:
        wire.check_train_reply_fields(metrics, info)
    except wire.WireError as exc:
        return str(exc)
    return None


# -- the update ---------------------------------------------------------------------------------------------
def decode_update(sent: SentModel, reply: object, bound: float) -> list[np.ndarray]:
    """The reply's arrays in the sent model's key order, after every check; ``Rejected`` names the first
    failure: keys, an unreadable array, shape, dtype, a non-finite value, the update norm."""
    if not isinstance(reply, ArrayRecord):
        raise Rejected(f"arrays: got {type(reply).__name__}, expected an ArrayRecord")
    got = list(reply.keys())
    missing = [k for k in sent.keys if k not in reply]
    extra = [k for k in got if k not in set(sent.keys)]
    if missing or extra:
        parts = ([f"missing key(s) {', '.join(repr(k) for k in missing[:5])}"] if missing else []) + \
                ([f"unexpected key(s) {', '.join(repr(clip_text(k, 60)) for k in extra[:5])}"] if extra else [])
        raise Rejected("arrays: " + "; ".join(parts))
    out: list[np.ndarray] = []
    sq = 0.0
    for key, base in zip(sent.keys, sent.arrays, strict=True):
        item = reply[key]
        if not isinstance(item, Array):
            raise Rejected(f"arrays: {key!r} is a {type(item).__name__}, not an Array")
        if tuple(item.shape) != base.shape:
            raise Rejected(f"arrays: {key!r} has shape {tuple(item.shape)} but the model sent has {base.shape}")
        if str(item.dtype) != str(base.dtype):
            raise Rejected(f"arrays: {key!r} has dtype {item.dtype} but the model sent has {base.dtype}")
        try:
            value = item.numpy()
        except Exception as exc:  # noqa: BLE001 - bytes from a client: any decoding failure is a rejection
            raise Rejected(f"arrays: {key!r} cannot be read: {type(exc).__name__}: {clip_text(exc, 120)}") from None
        if not isinstance(value, np.ndarray) or value.shape != base.shape or value.dtype != base.dtype:
            what = (f"shape {value.shape}, dtype {value.dtype}" if isinstance(value, np.ndarray)
                    else type(value).__name__)
            raise Rejected(f"arrays: {key!r} holds {what}, not what its header says "
                           f"(shape {base.shape}, dtype {base.dtype})")
        if _floating(value):
            if not np.isfinite(value).all():
                bad = int(value.size - np.isfinite(value).sum())
                raise Rejected(f"arrays: {key!r} holds {bad} non-finite value(s) (NaN or Inf)")
            diff = value.astype(np.float64) - base.astype(np.float64)
            sq += float(np.square(diff).sum())
        out.append(value)
    norm = math.sqrt(sq)
    if not math.isfinite(norm) or norm > bound:
        raise Rejected(f"arrays: update norm {norm:.4g} exceeds the bound {bound:.4g} an honest client can reach "
                       "(server/reply_checks.py: UpdateBound)")
    return out


def check_update(sent: SentModel | ArrayRecord, reply: object, bound: float) -> str | None:
    """Why the reply's arrays are unusable against the model sent, or None."""
    try:
        decode_update(sent if isinstance(sent, SentModel) else SentModel.of(sent), reply, bound)
    except Rejected as exc:
        return str(exc)
    return None


def weighted_mean(sent: SentModel, updates: list[tuple[float, list[np.ndarray]]]) -> ArrayRecord:
    """FedAvg of checked updates with the server's own weights, accumulated in float64 in the order given
    (the caller sorts by node, so the result does not depend on arrival order). Integer arrays are not
    averaged: the sent model's are kept (no DP-SGD step changes one, and a reply must not steer a counter)."""
    total = math.fsum(w for w, _ in updates)
    if not updates or not total > 0:
        raise ValueError("no positive aggregation weight")
    out: dict[str, Array] = {}
    for i, (key, base) in enumerate(zip(sent.keys, sent.arrays, strict=True)):
        if not _floating(base):
            out[key] = Array(np.array(base, copy=True))
            continue
        acc = np.zeros(base.shape, dtype=np.float64)
        for w, arrays in updates:
            acc += w * arrays[i].astype(np.float64)
        out[key] = Array(np.asarray(acc / total).astype(base.dtype))
    return ArrayRecord(out)


# -- evaluate replies ---------------------------------------------------------------------------------------
def check_evaluate_reply(content: object) -> str | None:
    """An evaluate reply: one MetricRecord of finite numbers with a positive integer num-examples."""
    if not isinstance(content, RecordDict):
        return f"records: content is {type(content).__name__}, not a RecordDict"
    if set(content.keys()) != {wire.METRICS} or not isinstance(content[wire.METRICS], MetricRecord):
        return f"records: expected only the MetricRecord {wire.METRICS!r}, got {sorted(content.keys())}"
    metrics = content[wire.METRICS]
    for key, value in metrics.items():
        if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(float(value)):
            return f"metrics: {key}={clip_text(value, 60)} is not a finite number"
    n = metrics.get(wire.NUM_EXAMPLES)
    if n is None:
        return f"metrics: {wire.NUM_EXAMPLES!r} is missing"
    if not float(n).is_integer() or not 1 <= n <= 1e12:
        return f"metrics: {wire.NUM_EXAMPLES}={n!r} is not an integer in [1, 1e12]"
    return None
