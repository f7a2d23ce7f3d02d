"""The client's typed settings, read once from the flat run config at the composition root.

Client code reads ``settings.batch_size`` instead of casting ``cfg["batch-size"]`` at every use, so each
key is parsed in one place. These come from the server's run config, so a client checks the privacy-relevant
ones against its owner's own policy (privacy/owner_policy.py, client/terms.py) before it trains.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from dpfl.client.training import TrainSettings
from dpfl.privacy import PrivacyPolicy


@dataclass(frozen=True)
class ClientSettings:
    local_epochs: int
    batch_size: int
    learning_rate: float
    momentum: float
    optimizer: str
    noise_multiplier: float  # used as given when target_epsilon is 0; else calibrated per client
    max_grad_norm: float
    grad_sample_mode: str
    model: str
    fix_model: bool  # Opacus' fix applied to the model (the server builds it the same way)
    device: str
    seed: int
    aggregation_weights: str  # "declared" | "uniform"
    state_dir: str  # "" : next to the run directory the server names
    neighbouring: str  # "add-remove" | "replace-one"
    policy: PrivacyPolicy
    privacy_unit: str = "record"  # "client": clip the whole update to the instruction's user-clip-norm
    weight_decay: float = 0.0
    dropout: float = 0.0  # models/regularisation.py: after every activation, training only
    augmentations: int = 1  # augmentation multiplicity K (client/augmentation.py)

    @classmethod
    def from_config(cls, cfg: Mapping[str, Any]) -> ClientSettings:
        """From an already validated flat kebab-case run config (dpfl.simulations.config validates it)."""
        return cls(local_epochs=int(cfg["local-epochs"]), batch_size=int(cfg["batch-size"]),
                   learning_rate=float(cfg["learning-rate"]), momentum=float(cfg["momentum"]),
                   optimizer=str(cfg["optimizer"]), noise_multiplier=float(cfg["noise-multiplier"]),
                   max_grad_norm=float(cfg["max-grad-norm"]), grad_sample_mode=str(cfg["grad-sample-mode"]),
                   model=str(cfg["model"]), fix_model=bool(cfg.get("fix-model", False)),
                   device=str(cfg["device"]), seed=int(cfg["seed"]),
                   aggregation_weights=str(cfg["aggregation-weights"]), state_dir=str(cfg["state-dir"]),
                   neighbouring=str(cfg["neighbouring"]), policy=PrivacyPolicy.from_config(cfg),
                   privacy_unit=str(cfg.get("privacy-unit", "record")),
                   weight_decay=float(cfg.get("weight-decay", 0.0)), dropout=float(cfg.get("dropout", 0.0)),
                   augmentations=int(cfg.get("augmentations", 1)))


    def train_settings(self, noise_multiplier: float) -> TrainSettings:
        """What local training needs for one round, with this round's noise multiplier."""
        return TrainSettings(local_epochs=self.local_epochs, batch_size=self.batch_size,
                             learning_rate=self.learning_rate, momentum=self.momentum, optimizer=self.optimizer,
                             dp=self.policy.dp, noise_multiplier=noise_multiplier, max_grad_norm=self.max_grad_norm,
                             grad_sample_mode=self.grad_sample_mode, weight_decay=self.weight_decay,
                             augmentations=self.augmentations)
