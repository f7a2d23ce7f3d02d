"""``dpfl predict RUN_DIR [--input test|FILE] [--out FILE.csv]``: the released model on inputs, as a quick check.

``--input test`` (the default) scores the run's own held-out test set, read exactly as the server read it, so
the accuracy printed is the run's reported test accuracy. ``--input FILE.npz`` (arrays ``x`` and optionally
``y``) holds *raw* inputs of a built-in dataset; the card's preprocessing is applied. For the other dataset
kinds, ``--input FILE`` is a file of the run's own format (csv, parquet, npz, ...) read with the run's public
schema, like ``test-data-path``. Predictions go to ``--out`` as CSV (index, predicted class).
"""

from __future__ import annotations

import argparse
from pathlib import Path

from dpfl.simulations.cli.common import console, error, fail


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("predict", help="the released model of a run on its test set or your inputs",
                       description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("run_dir", metavar="RUN_DIR")
    p.add_argument("--input", default="test", metavar="test|FILE",
                   help="test (the run's test set, default), raw inputs of a built-in dataset as .npz (x, y), or "
                        "a file of the run's own data format")
    p.add_argument("--out", default=None, metavar="FILE.csv", help="write one predicted class per input")
    p.set_defaults(func=cmd_predict)


def _inputs(card: dict, run_dir: Path, source: str) -> tuple[object, object]:
    """(x, y or None) as the model takes them; ValueError with a one-line reason."""
    import numpy as np
    import torch

    from dpfl.privacy.rundata import read_config, run_config_values
    from dpfl.simulations.data.clients import load_test_set

    cfg = run_config_values(read_config(run_dir) or {})
    if source == "test":
        x, y, _, _ = load_test_set(cfg)
        if int(y.shape[0]) == 0:
            raise ValueError("this run's server held no test records; pass --input FILE")
        if int(cfg.get("early-stopping-patience", 0) or 0) > 0:  # the server validated on part of them
            from dpfl.server.early_stopping import validation_split

            _, test = validation_split(int(y.shape[0]), float(cfg["server-validation-fraction"]))
            x, y = x[test], y[test]
        return x, y
    path = Path(source)
    if not path.exists():
        raise ValueError(f"--input {source}: no such file; give test or a file of inputs")
    prep = card.get("preprocessing") or {}
    if prep.get("tokenizer") == "hashing":  # text: the same fixed tokenizer the clients used
        from dpfl.simulations.data.text import encode

        text = path.read_text(encoding="utf-8", errors="replace")
        items = text.split("\n%\n") if "\n%\n" in text else text.splitlines()
        items = [t.strip() for t in items if t.strip()]
        if not items:
            raise ValueError(f"--input {source}: no text in it (one quotation per line)")
        return torch.tensor([encode(t, int(prep["sequence_length"])) for t in items]), None
    if "scale" in prep:  # a built-in dataset: raw arrays in an npz
        try:
            with np.load(path, allow_pickle=False) as data:
                raw = np.asarray(data["x"], dtype=np.float64)
                labels = np.asarray(data["y"], dtype=np.int64) if "y" in data else None
        except (OSError, ValueError, KeyError) as exc:
            raise ValueError(f"--input {source}: expected an .npz with an array x (and optionally y): {exc}") from None
        shape = tuple(prep["shape"])
        if raw.size % int(np.prod(shape)) != 0:
            raise ValueError(f"--input {source}: x has {raw.size} values, not a whole number of inputs of shape "
                             f"{shape}")
        x = ((raw * prep["scale"] - prep["mean"]) / prep["std"]).astype(np.float32).reshape(-1, *shape)
        return torch.from_numpy(x), None if labels is None else torch.from_numpy(labels)
    x, y, _, _ = load_test_set({**cfg, "test-data-path": str(path)})
    return x, y


def cmd_predict(args: argparse.Namespace) -> int:
    import torch

    from dpfl.simulations.data.datasets import DataError
    from dpfl.simulations.model_card import ModelCardError, load_model

    run = Path(args.run_dir)
    try:
        model, card = load_model(run)
        x, y = _inputs(card, run, args.input)
    except (ModelCardError, ValueError, DataError) as exc:
        return fail(str(exc))
    try:
        with torch.no_grad():
            predicted = torch.cat([model(x[i:i + 1000]).argmax(1) for i in range(0, int(x.shape[0]), 1000)])
    except RuntimeError as exc:
        return error(f"the model could not run on these inputs (shape {tuple(x.shape)[1:]}, the card says "
                     f"{tuple(card['input_shape'])}): {str(exc).splitlines()[0]}")
    console.print(f"{int(predicted.shape[0])} inputs predicted by {run / 'model.pt'} ({card['architecture']['spec']})")
    if y is not None and int(y.shape[0]) == int(predicted.shape[0]):
        accuracy = float((predicted == y).float().mean())
        console.print(f"accuracy {accuracy:.4f}" + (f" (the run reported {card['test_accuracy']:.4f})"
                                                   if args.input == "test" and card.get("test_accuracy") is not None
                                                   else ""))
    if args.out:
        out = Path(args.out)
        out.write_text("index,predicted\n" + "".join(f"{i},{int(c)}\n" for i, c in enumerate(predicted)))
        console.print(f"predictions: {out}")
    return 0
