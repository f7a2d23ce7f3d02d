"""The run config's schema: every key, its type, default and allowed values, and how a value is coerced.

Keys are Flower's flat kebab-case run-config keys. Defaults here are mirrored into
``pyproject.toml`` ``[tool.flwr.app.config]`` (``python -m dpfl.simulations.config --pyproject``
prints the table; a test keeps the two equal) so ``flwr run .`` and ``dpfl simulate`` agree.
Everything is validated before any work starts; an invalid value names key, value and what
is allowed.
"""

from __future__ import annotations

import math
import re
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

Scalar = bool | int | float | str
MAX_ROUNDS = 100_000  # PLD calibration over 1e5 rounds takes ~95 s here; 1e6 would hang before round 1


class ConfigError(ValueError):
    """A run-config value is wrong; the message names the key, the value and what is allowed."""


@dataclass(frozen=True)
class Option:
    key: str
    default: Scalar
    help: str
    choices: tuple[str, ...] | None = None
    check: Callable[[Any], bool] | None = None
    allowed: str = ""  # words for what `check` accepts

    @property
    def kind(self) -> type:
        return type(self.default)


def _positive(v: float) -> bool:
    return v > 0 and math.isfinite(v)


def _non_negative(v: float) -> bool:
    return v >= 0 and math.isfinite(v)


def _fraction(v: float) -> bool:
    return 0 < v <= 1


def _fraction_or_zero(v: float) -> bool:
    return 0 <= v <= 1


def _open_unit_or_zero(v: float) -> bool:
    return v == 0 or 0 < v < 1


NAME_MAX = 128
SAFE_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]*")


def _run_name(v: str) -> bool:
    """A run name is one directory under run-dir: no separator or '..' may move it elsewhere."""
    return not v or (len(v) <= NAME_MAX and SAFE_NAME.fullmatch(v) is not None and ".." not in v)


def tags_of(value: str) -> list[str]:
    """The labels of a ``tag`` value ('a, b' -> ['a', 'b'])."""
    return [t.strip() for t in str(value).split(",") if t.strip()]


def _tags(v: str) -> bool:
    return all(len(t) <= NAME_MAX and SAFE_NAME.fullmatch(t) for t in tags_of(v)) and (
        not v.strip() or bool(tags_of(v)))


BUILT_IN_DATASETS = ("fashion-mnist", "digits", "synthetic", "fortunes")
FILE_DATASETS = ("csv", "parquet", "npz", "imagefolder", "hf-disk")  # = simulations.data.spec.FILE_KINDS
DATASET_WORDS = (f"one of {', '.join(BUILT_IN_DATASETS)} (built in), {', '.join(FILE_DATASETS)} (your files, "
                 f"with data-path), or 'package.module:loader'")


def _dataset_name(v: str) -> bool:
    module, sep, attr = v.partition(":")
    return v in BUILT_IN_DATASETS or v in FILE_DATASETS or bool(sep and module.strip() and attr.strip())


OPTIONS: tuple[Option, ...] = (
    # data
    Option("dataset", "fashion-mnist", "where records come from: a built-in dataset, your own files (csv, parquet, "
           "npz, imagefolder, hf-disk; give data-path) or your loader 'package.module:loader'",
           check=_dataset_name, allowed=DATASET_WORDS),
    Option("data-path", "", "your data: a file (csv, parquet, npz) or folder (imagefolder, hf-disk; Fashion-MNIST's "
           "IDX files); empty: the built-in dataset's default location"),
    Option("data-dir", "", "old name of data-path, still accepted (give one of the two)"),
    Option("test-data-path", "", "the server's held-out test set in the same format as data-path (empty: the "
           "source's own test split, else test-fraction of the records)"),
    Option("label-column", "label", "csv/parquet/hf-disk: the column holding the label"),
    Option("feature-columns", "", "csv/parquet: comma-separated feature columns (empty: every other numeric "
           "column except the label and client columns)"),
    Option("client-column", "", "csv/parquet/hf-disk: the column naming each record's owner (partition "
           "by-column)"),
    Option("labels", "", "the public label set, comma-separated, in class-index order (never read off the "
           "records)"),
    Option("num-classes", 0, "labels are the integers 0..K-1 (0: from labels, the schema or the source's own "
           "public class list)", check=lambda v: v == 0 or v >= 2, allowed="0 or an integer >= 2"),
    Option("data-schema", "", "a TOML/JSON file with the public schema: labels, feature ranges, means, "
           "categories, fills (nothing is fitted on the records)"),
    Option("test-fraction", 0.2, "without a test source: fraction of each client's records held out as the "
           "simulation's test set", check=lambda v: 0 <= v < 1, allowed="a number in [0, 1)"),
    Option("image-size", "", "imagefolder: resize every image to HxW, e.g. 32x32 (empty: all images must "
           "share one size)"),
    Option("input-shape", "", "one record's input shape, e.g. 30 or 3x32x32: needed only by a server that holds "
           "no records (clients bring their own data and there is no test-data-path)"),
    Option("image-mode", "RGB", "imagefolder: colour (RGB) or grey (L)", choices=("RGB", "L")),
    Option("num-clients", 10, "number of clients (partitions)", check=lambda v: v >= 1, allowed="an integer >= 1"),
    Option("partition", "iid", "how records are split over clients (by-column: each record's client-column "
           "names its owner; natural: the dataset's own owners, e.g. fortunes' authors)",
           choices=("iid", "dirichlet", "shards", "by-column", "natural")),
    Option("dirichlet-alpha", 0.5, "Dirichlet concentration for --partition dirichlet", check=_positive,
           allowed="a number > 0"),
    Option("shards-per-client", 2, "label shards per client for --partition shards", check=lambda v: v >= 1,
           allowed="an integer >= 1"),
    Option("validation-fraction", 0.0, "fraction of each client's records kept for local validation (used only "
           "by client-side evaluation, fraction-evaluate > 0; 0 trains on every record)",
           check=lambda v: 0 <= v < 1, allowed="a number in [0, 1)"),
    Option("synthetic-alpha", 1.0, "Synthetic(alpha, beta): model heterogeneity", check=_non_negative,
           allowed="a number >= 0"),
    Option("synthetic-beta", 1.0, "Synthetic(alpha, beta): data heterogeneity", check=_non_negative,
           allowed="a number >= 0"),
    # model and local training
    Option("model", "cnn", "a zoo model (cnn, mlp, logreg, resnet; lstm for token ids), your own "
           "'package.module:factory' (a callable (input_shape, num_classes) -> nn.Module) or a name registered in "
           "the dpfl.models entry points"),
    Option("fix-model", False, "replace the layers DP-SGD cannot train with the fix Opacus proposes (e.g. "
           "BatchNorm -> GroupNorm) on server and clients alike"),
    Option("num-server-rounds", 30, "federated rounds", check=lambda v: 1 <= v <= MAX_ROUNDS,
           allowed=f"an integer in [1, {MAX_ROUNDS}] (accounting more rounds takes longer than training them)"),
    Option("fraction-train", 1.0, "fraction of clients sampled for training each round", check=_fraction,
           allowed="a number in (0, 1]"),
    Option("min-train-clients", 1, "fewest clients a training round needs", check=lambda v: v >= 1,
           allowed="an integer >= 1"),
    Option("fraction-evaluate", 0.0, "fraction of clients for client-side evaluation (0: off; their "
           "metrics are computed on private data and are not DP)", check=_fraction_or_zero,
           allowed="a number in [0, 1]"),
    Option("local-epochs", 1, "local epochs per round (in expectation, with Poisson sampling)",
           check=lambda v: v >= 1, allowed="an integer >= 1"),
    Option("batch-size", 256, "expected batch size (Poisson sampling rate = batch-size / declared records)",
           check=lambda v: v >= 1, allowed="an integer >= 1"),
    Option("optimizer", "sgd", "local optimizer", choices=("sgd", "adam")),
    Option("learning-rate", 0.2, "local learning rate", check=_positive, allowed="a number > 0"),
    Option("momentum", 0.9, "SGD momentum", check=lambda v: 0 <= v < 1, allowed="a number in [0, 1)"),
    Option("early-stopping-patience", 0, "stop once the server's validation accuracy has not improved for this "
           "many rounds and release the best model (0: off); judged on a split of the server's own held-out data, "
           "never the clients'", check=lambda v: v >= 0, allowed="an integer >= 0"),
    Option("server-validation-fraction", 0.5, "early stopping: the fraction of the server's held-out records used "
           "for validation (the rest is the reported test set)", check=lambda v: 0 < v < 1,
           allowed="a number in (0, 1)"),
    Option("augmentations", 1, "augmentation multiplicity K: each sampled image is shifted K times and the K "
           "gradients averaged inside its clip (the ledger is that of K = 1; K > 1 trains with Opacus' hooks)",
           check=lambda v: 1 <= v <= 64, allowed="an integer from 1 to 64"),
    Option("weight-decay", 0.0, "L2 weight decay of the local optimizer (free under DP: it acts on the noised "
           "gradient)", check=_non_negative, allowed="a number >= 0"),
    Option("dropout", 0.0, "dropout after every activation of the model while training (free under DP: part of "
           "the model)", check=lambda v: 0 <= v < 1, allowed="a number in [0, 1)"),
    Option("server-learning-rate", 1.0, "server step size applied to the averaged update", check=_positive,
           allowed="a number > 0"),
    Option("server-momentum", 0.0, "server momentum on the averaged update (FedAvgM; 0: plain FedAvg)",
           check=lambda v: 0 <= v < 1, allowed="a number in [0, 1)"),
    Option("ema-decay", 0.0, "the released model is an exponential moving average of the global models over "
           "rounds with this decay (0: the last model); post-processing, no privacy cost",
           check=lambda v: 0 <= v < 1, allowed="a number in [0, 1)"),
    Option("aggregation-weights", "declared", "FedAvg weights: declared dataset sizes (public by "
           "declaration) or uniform", choices=("declared", "uniform")),
    # differential privacy
    Option("dp", True, "train with DP-SGD (false: plain SGD on the same code path, no guarantee)"),
    Option("noise-multiplier", 1.0, "DP-SGD noise multiplier sigma, used when target-epsilon is 0 (on the "
           "command line, giving --noise-multiplier without --target-epsilon turns calibration off)",
           check=_positive, allowed="a number > 0"),
    Option("max-grad-norm", 1.0, "per-sample clipping norm C", check=_positive, allowed="a number > 0"),
    Option("target-epsilon", 3.0, "calibrate sigma so each client ends at this epsilon after its most rounds "
           "(0: off, use noise-multiplier)",
           check=_non_negative, allowed="a number >= 0 (0 turns calibration off)"),
    Option("epsilon-budget", 0.0, "per-client epsilon budget enforced before each release (0: none)",
           check=_non_negative, allowed="a number >= 0 (0 means no budget)"),
    Option("max-participations", 0, "most rounds one client may train in (0: num-server-rounds)",
           check=lambda v: v >= 0, allowed="an integer >= 0"),
    Option("delta", 0.0, "delta of the (epsilon, delta) guarantee (0: 1 / (10 x total declared records))",
           check=_open_unit_or_zero, allowed="0 (auto) or a number in (0, 1)"),
    Option("accountant", "pld", "accountant for reported epsilon", choices=("pld", "prv", "rdp")),
    Option("neighbouring", "add-remove", "neighbouring relation of the guarantee: add-remove (one record added "
           "or removed; the record count is each client's public declared count) or replace-one (one record "
           "replaced; the true count is public; PLD accounting only)", choices=("add-remove", "replace-one")),
    Option("declared-records", 0, "add-remove: the public record count N each client declares (0: the dataset's "
           "public train size / num-clients; a data owner's privacy policy overrides it)",
           check=lambda v: v >= 0, allowed="an integer >= 0 (0: the nominal share)"),
    # user-level DP (privacy-unit = client): DP-FedAvg with Poisson client sampling, noise added by the server
    Option("privacy-unit", "record", "what the guarantee protects: one record at a client (record: DP-SGD at "
           "each client, the keys above) or one whole client (client: user-level DP-FedAvg; each sampled client "
           "clips its update to user-clip-norm, the server adds Gaussian noise; fraction-train is the Poisson "
           "sampling rate q; with dp = true both guarantees hold)", choices=("record", "client")),
    Option("client-sampling", "poisson", "privacy-unit = client: how a round's cohort is drawn (poisson: each "
           "client independently with probability fraction-train, add/remove one client; fixed: exactly "
           "fraction-train x num-clients clients without replacement, replace-one client, RDP accounting)",
           choices=("poisson", "fixed")),
    Option("user-target-epsilon", 3.0, "privacy-unit = client: calibrate the server's noise multiplier so the "
           "user-level epsilon after num-server-rounds is at most this (0: off, use user-noise-multiplier)",
           check=_non_negative, allowed="a number >= 0 (0 turns calibration off)"),
    Option("user-noise-multiplier", 1.0, "privacy-unit = client: noise std / clip norm of one round's release, "
           "used when user-target-epsilon is 0", check=_positive, allowed="a number > 0"),
    Option("user-clip-norm", 1.0, "privacy-unit = client: L2 norm each client clips its model update to (the "
           "first round's, under adaptive-clipping)", check=_positive, allowed="a number > 0"),
    Option("user-delta", 0.0, "privacy-unit = client: delta of the user-level guarantee (0: 1 / (10 x "
           "num-clients))", check=_open_unit_or_zero, allowed="0 (auto) or a number in (0, 1)"),
    Option("user-epsilon-budget", 0.0, "privacy-unit = client: stop before a round whose release would take "
           "the user-level epsilon above this (0: none)", check=_non_negative, allowed="a number >= 0"),
    Option("adaptive-clipping", False, "privacy-unit = client: move the clip norm toward clip-target-quantile "
           "of the update norms from a noised count (Andrew et al. 2021), inside the same release"),
    Option("clip-target-quantile", 0.5, "adaptive-clipping: the share of updates that should be within the "
           "clip norm", check=lambda v: 0 < v < 1, allowed="a number in (0, 1)"),
    Option("clip-learning-rate", 0.2, "adaptive-clipping: the geometric step of the clip norm", check=_positive,
           allowed="a number > 0"),
    Option("clipped-count-stddev", 0.0, "adaptive-clipping: noise std of the count of updates within the clip "
           "norm (0: the larger of expected cohort / 20 and the noise multiplier)", check=_non_negative,
           allowed="a number >= 0 (0: auto)"),
    Option("grad-sample-mode", "auto", "how per-sample gradients are computed (auto: the fastest exact mode "
           "measured for the model, see bench/dp_step.py)", choices=("auto", "bk", "hooks", "ghost", "functorch")),
    Option("private-metrics", False, "also send loss/accuracy on clients' private data (NOT covered by DP)"),
    Option("deterministic-noise", False, "TEST ONLY: seed noise from --seed; the run is NOT PRIVATE"),
    # run
    Option("seed", 42, "seed for partitioning, model init and client selection (never for DP noise)",
           check=lambda v: 0 <= v < 2**63, allowed="an integer in [0, 2**63) (torch's seed range)"),
    Option("device", "auto", "where clients train", choices=("auto", "cpu", "cuda")),
    Option("run-dir", "runs", "parent directory of run directories"),
    Option("run-name", "", "run directory name (empty: time stamp, dataset and model)", check=_run_name,
           allowed=f"empty, or a name of letters, digits, '.', '_' and '-' (no '..', no path separator), at most "
                   f"{NAME_MAX} characters"),
    Option("tag", "", "labels to find the run by (`dpfl runs list --tag LABEL`), comma-separated, e.g. "
           "'baseline,eps3'", check=_tags, allowed="empty, or comma-separated labels of letters, digits, '.', '_' "
                                                  "and '-'"),
    Option("state-dir", "", "directory for durable client ledgers (empty: <run dir>/client-state)"),
    Option("audit-plan", "", "set by `dpfl audit`: the folder of the audit's canaries and coins (empty: no audit)"),
    Option("resume", False, "continue the run in run-dir/run-name from its last complete round: same config, "
           "its ledgers and checkpoint (`dpfl resume RUN_DIR` sets this and reads the config)"),
    Option("round-timeout", 600.0, "seconds the server waits for replies in one round", check=_positive,
           allowed="a number > 0"),
    Option("workers", 0, "in-process engine: worker processes (0: min(cores, clients))",
           check=lambda v: v >= 0, allowed="an integer >= 0"),
    Option("tracker", "", "your own tracker of each round's accuracy, loss, epsilon, delta, sigma and "
           "participants, 'package.module:factory' (docs/tracking.md; empty: TensorBoard and metrics.csv only)",
           check=lambda v: not v or (":" in v and all(part.strip() for part in v.split(":", 1))),
           allowed="empty or 'package.module:factory'"),
)

OPTION_BY_KEY: dict[str, Option] = {o.key: o for o in OPTIONS}
DEFAULTS: dict[str, Scalar] = {o.key: o.default for o in OPTIONS}


def coerce(option: Option, value: Any) -> Scalar:
    """Turn a CLI/TOML/Flower value into the option's type, or raise ConfigError."""
    kind = option.kind
    bad = ConfigError(f"{option.key}={value!r} is not valid: expected {allowed_words(option)}")
    if kind is bool:
        if isinstance(value, bool):
            return value
        if isinstance(value, str) and value.lower() in ("true", "1", "yes", "on", "false", "0", "no", "off"):
            return value.lower() in ("true", "1", "yes", "on")
        if isinstance(value, int) and value in (0, 1):
            return bool(value)
        raise bad
    if kind is int:
        if isinstance(value, bool):
            raise bad
        if isinstance(value, int):
            return value
        if isinstance(value, float) and value.is_integer():
            return int(value)
        if isinstance(value, str):
            try:
                return int(value)
            except ValueError:
                raise bad from None
        raise bad
    if kind is float:
        if isinstance(value, bool):
            raise bad
        if isinstance(value, int | float):
            return float(value)
        if isinstance(value, str):
            try:
                return float(value)
            except ValueError:
                raise bad from None
        raise bad
    if isinstance(value, str):
        return value
    raise bad


def allowed_words(option: Option) -> str:
    if option.choices:
        return "one of " + ", ".join(option.choices)
    if option.allowed:
        return option.allowed
    return {bool: "true or false", int: "an integer", float: "a number", str: "a string"}[option.kind]


def pyproject_table() -> str:
    """The [tool.flwr.app.config] body for pyproject.toml."""
    import tomli_w

    return tomli_w.dumps(dict(DEFAULTS))


def markdown_table() -> str:
    """The configuration reference of the README."""
    rows = ["| key (also a flag) | default | allowed | meaning |", "|---|---|---|---|"]
    for o in OPTIONS:
        default = str(o.default).lower() if isinstance(o.default, bool) else repr(o.default)
        rows.append(f"| `{o.key}` | `{default}` | {allowed_words(o)} | {o.help} |")
    return "\n".join(rows)
