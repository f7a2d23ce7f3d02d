"""The server's typed settings, read once from the flat run config at the composition root.

Server code reads ``settings.fraction_train`` instead of casting ``cfg["fraction-train"]`` wherever it
needs it, so a key is parsed in one place and a typo fails when the server starts, not mid-run.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from dpfl.privacy import PrivacyPolicy


@dataclass(frozen=True)
class ServerSettings:
    num_clients: int
    num_rounds: int
    fraction_train: float
    min_train_clients: int
    fraction_evaluate: float
    server_learning_rate: float
    server_momentum: float
    ema_decay: float
    round_timeout: float
    model: str
    fix_model: bool  # Opacus' fix applied to the model (every client builds it the same way)
    seed: int
    neighbouring: str  # "add-remove" | "replace-one"
    aggregation_weights: str  # "declared" | "uniform": never what a reply claims (server/reply_checks.py)
    policy: PrivacyPolicy
    run_config: Mapping[str, Any]  # the flat run config as given, written to config.json
    early_stopping_patience: int = 0  # 0: off (server/early_stopping.py)
    server_validation_fraction: float = 0.0  # of the server's held-out records, for early stopping only

    @classmethod
    def from_config(cls, cfg: Mapping[str, Any]) -> ServerSettings:
        """From an already validated flat kebab-case run config (dpfl.simulations.config validates it)."""
        return cls(num_clients=int(cfg["num-clients"]), num_rounds=int(cfg["num-server-rounds"]),
                   fraction_train=float(cfg["fraction-train"]), min_train_clients=int(cfg["min-train-clients"]),
                   fraction_evaluate=float(cfg["fraction-evaluate"]),
                   server_learning_rate=float(cfg["server-learning-rate"]),
                   server_momentum=float(cfg["server-momentum"]), ema_decay=float(cfg["ema-decay"]),
                   round_timeout=float(cfg["round-timeout"]), model=str(cfg["model"]),
                   fix_model=bool(cfg.get("fix-model", False)), seed=int(cfg["seed"]),
                   neighbouring=str(cfg["neighbouring"]),
                   aggregation_weights=str(cfg.get("aggregation-weights", "declared")),
                   policy=PrivacyPolicy.from_config(cfg), run_config=dict(cfg),
                   early_stopping_patience=int(cfg.get("early-stopping-patience", 0)),
                   server_validation_fraction=float(cfg.get("server-validation-fraction", 0.0)))
