"""Named recipes: a preset is a layer of run-config values between the defaults and the user's own.

Each one records where its numbers come from, so a user can see what was measured and re-measure it.
``dpfl simulate --preset NAME`` applies one; any key given as well (config file, --run-config, flags)
still wins.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any


@dataclass(frozen=True)
class Preset:
    description: str
    values: dict[str, Any] = field(default_factory=dict)


PRESETS: dict[str, Preset] = {
    # A first run in seconds: scikit-learn's digits (installed with dpfl, nothing to download), 3 clients, the
    # MLP, per-client epsilon 3 at the default delta. `time dpfl simulate --preset quick` here (2 shared cores):
    # 8.5 s wall, 91.4 % test accuracy, epsilon 2.973 (bench/first_run.py measures it and writes JSON).
    "quick": Preset(
        description="a first run in seconds: digits, 3 clients, MLP, 10 rounds, per-client epsilon 3",
        values={"dataset": "digits", "num-clients": 3, "model": "mlp", "num-server-rounds": 10,
                "local-epochs": 1, "batch-size": 64, "learning-rate": 0.2, "momentum": 0.9,
                "max-grad-norm": 1.0, "target-epsilon": 3.0}),
    # The best recipe found for Fashion-MNIST, 10 IID clients, per-client epsilon 3 (delta 1e-5, PLD), one
    # seed each, `dpfl simulate --run-config "target-epsilon=3 delta=1e-5 validation-fraction=0 ..."`:
    #   10 rounds x 2 epochs, batch 128, lr 0.1 (the old defaults)       80.0 %
    #   + ema-decay 0.5                                                   80.3 %
    #   + server-momentum 0.5                                             80.8 %
    #   10 rounds x 3 epochs, batch 256, lr 0.2                           80.4 %
    #   20 rounds x 1 epoch, batch 128, lr 0.1                            81.0 %  (+ momentum 0.5, EMA 0.5: 81.7 %)
    #   40 rounds x 1 epoch, batch 128, lr 0.1                            81.9 %
    #   30 rounds x 1 epoch, batch 256, lr 0.2  <- this preset            82.5 %  (+ momentum 0.5, EMA 0.5: 82.2 %)
    #   40 rounds x 1 epoch, batch 512, lr 0.4, server momentum 0.5       82.6 %  (25 % slower)
    # More, shorter rounds with larger batches win: the clients drift less between averagings, and at a
    # fixed epsilon a larger batch buys a smaller noise-to-signal ratio per step. bench/accuracy.py
    # measures it over seeds, with Dirichlet(0.5) and the centralised ceiling. It is also the default.
    "fashion-mnist-accurate": Preset(
        description="Fashion-MNIST, 10 clients, tanh CNN, per-client epsilon 3: 30 rounds x 1 epoch, batch 256, "
                    "lr 0.2 (the defaults, pinned)",
        values={"dataset": "fashion-mnist", "num-clients": 10, "model": "cnn", "num-server-rounds": 30,
                "local-epochs": 1, "batch-size": 256, "learning-rate": 0.2, "momentum": 0.9,
                "max-grad-norm": 1.0, "target-epsilon": 3.0}),
    # Topic of a quotation (6 topics of Debian's fortunes, 3,907 train / 977 test) with the DP LSTM, split by
    # author over 3 clients. Tried at per-client epsilon 8 (one seed each, `dpfl simulate --dataset fortunes
    # --model lstm --partition natural --target-epsilon 8 ...`):
    #   6 clients, 20 rounds, batch 64, Adam 0.005, 4,097 x 32 embedding, hidden 64      29.9 %
    #   6 clients, 20 rounds, batch 256, Adam 0.02 / SGD 2.0 + momentum 0.9, 1,025 x 16, 32   29.5 % / 25.3 %
    #   3 clients, 30 rounds x 2 epochs, batch 512, Adam 0.02, C = 1                       38.7 %
    #   3 clients, 30 rounds x 2 epochs, batch 512, Adam 0.05, C = 0.1  <- this preset     43.0 %
    # Fewer parameters (the small hashed embedding) and fewer, larger batches per client fight the noise
    # best; non-private the same model reaches about 55 %. bench/text.py measures epsilon 3, 8 and infinity.
    "fortunes-lstm": Preset(
        description="text: topic of a quotation (Debian's fortunes), DP LSTM, 3 clients split by author, "
                    "per-client epsilon 3",
        values={"dataset": "fortunes", "model": "lstm", "num-clients": 3, "partition": "natural",
                "num-server-rounds": 30, "local-epochs": 2, "batch-size": 512, "optimizer": "adam",
                "learning-rate": 0.05, "max-grad-norm": 0.1, "target-epsilon": 3.0}),
}


class UnknownPresetError(ValueError):
    """An unknown preset name; the message lists the known ones."""


def preset_values(name: str) -> dict[str, Any]:
    if name not in PRESETS:
        known = ", ".join(sorted(PRESETS)) or "none"
        raise UnknownPresetError(f"unknown preset {name!r}; known presets: {known}")
    return dict(PRESETS[name].values)


def preset_help() -> str:
    return "; ".join(f"{name}: {p.description}" for name, p in PRESETS.items())
