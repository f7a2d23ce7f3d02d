"""The model a run releases, as something a user can load: ``model.pt`` (weights only) and ``model.json``.

``model.json`` is never a pickle: it names the architecture (zoo name or import path, and whether Opacus' fix
was applied), the input shape and classes, how raw inputs are preprocessed, the privacy guarantee the weights
were trained under (from summary.json: unit, epsilon, delta, accountant, relation, NOT PRIVATE) and the SHA-256 of
``model.pt``. Loading is three lines (README): ``json.load``, ``dpfl.models.build_model``,
``load_state_dict(torch.load(..., weights_only=True))``; ``load_model`` does exactly that and checks the hash.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any

import torch
from torch import nn

from dpfl.models import build_model
from dpfl.privacy.rundata import read_config, read_summary, run_config_values

CARD_FILE, WEIGHTS_FILE, CARD_FORMAT = "model.json", "model.pt", 1


class ModelCardError(ValueError):
    """A run directory's model cannot be loaded; the message names the file and the fix."""


def _sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def build_card(run_dir: Path) -> dict[str, Any]:
    """model.json's content for a finished run directory (config.json, summary.json, model.pt)."""
    from dpfl.simulations.data.datasets import raw_preprocessing

    config, summary = read_config(run_dir) or {}, read_summary(run_dir) or {}
    cfg = run_config_values(config)
    model_inputs = (config.get("inputs") or {}).get("model") or {}
    data_inputs = (config.get("inputs") or {}).get("dataset") or {}
    from dpfl.simulations.data.clients import load_test_set

    _, _, shape, classes = load_test_set(cfg)
    labels = [s.strip() for s in str(cfg.get("labels", "") or "").split(",") if s.strip()]
    unit = str(cfg.get("privacy-unit", "record"))
    guarantee: dict[str, Any] = {
        "not_private": bool(summary.get("not_private")), "privacy_unit": unit,
        "record_level": None if not cfg.get("dp", True) else {
            "epsilon": summary.get("epsilon_max"), "delta": summary.get("delta"),
            "accountant": summary.get("accountant"), "neighbouring": summary.get("neighbouring")},
        "user_level": None if unit != "client" else {
            "epsilon": summary.get("user_epsilon"), "delta": summary.get("user_delta"),
            "accountant": summary.get("user_accountant"), "neighbouring": summary.get("user_neighbouring")},
        "statement": summary.get("privacy_statement") or config.get("privacy-statement") or [],
    }
    return {
        "format": CARD_FORMAT, "weights": WEIGHTS_FILE, "weights_sha256": _sha256(run_dir / WEIGHTS_FILE),
        "architecture": {"spec": str(cfg["model"]), "class": model_inputs.get("class"),
                         "parameters": model_inputs.get("parameters"), "fix_model": bool(cfg.get("fix-model"))},
        "input_shape": list(shape), "num_classes": int(classes), "classes": labels or list(range(int(classes))),
        "preprocessing": raw_preprocessing(str(cfg["dataset"])) or {
            "dataset": str(cfg["dataset"]), "data_schema": cfg.get("data-schema") or None,
            "note": "inputs in the run's own data format, read by dpfl's loader of that kind with the run's public "
                    "schema (labels, encodings, scaling): `dpfl predict RUN --input FILE`"},
        "dataset": {"kind": data_inputs.get("kind", cfg["dataset"]), "source": data_inputs.get("source")},
        "test_accuracy": summary.get("final_accuracy"), "rounds": summary.get("rounds_completed"),
        "guarantee": guarantee,
        "dpfl": (config.get("environment") or {}).get("dpfl"),
    }


def write_card(run_dir: str | Path) -> Path | None:
    """Write model.json beside model.pt (atomically); None when the run saved no model."""
    run = Path(run_dir)
    if not (run / WEIGHTS_FILE).is_file():
        return None
    target, tmp = run / CARD_FILE, run / f".{CARD_FILE}.tmp"
    tmp.write_text(json.dumps(build_card(run), indent=2, default=str) + "\n", encoding="utf-8")
    tmp.replace(target)
    return target


def load_model(run_dir: str | Path) -> tuple[nn.Module, dict[str, Any]]:
    """(the released model in eval mode, its card) from a run directory; ModelCardError names what is wrong."""
    run = Path(run_dir)
    try:
        card = json.loads((run / CARD_FILE).read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        raise ModelCardError(f"{run / CARD_FILE} cannot be read ({exc}); pass a finished run directory "
                             "(runs/<run-id>)") from None
    if not isinstance(card, dict) or card.get("format") != CARD_FORMAT:
        raise ModelCardError(f"{run / CARD_FILE} is not a dpfl model card of format {CARD_FORMAT}")
    weights = run / str(card.get("weights", WEIGHTS_FILE))
    if not weights.is_file() or _sha256(weights) != card.get("weights_sha256"):
        raise ModelCardError(f"{weights} is missing or is not the file {CARD_FILE} describes (SHA-256 differs)")
    arch = card["architecture"]
    model = build_model(str(arch["spec"]), tuple(card["input_shape"]), int(card["num_classes"]),
                        fix=bool(arch.get("fix_model")))
    model.load_state_dict(torch.load(weights, weights_only=True))
    return model.eval(), card
