"""Run Flower's accounted user-level DP strategy (central_dp_app.py) on dpfl's in-process grid.

    python bench/peers/flower_central_dp/run.py --config CONFIG.json --out FILE.json

CONFIG.json is a dpfl run config (the keys dpfl's data loaders read: dataset, partition, num-clients, seed,
model, batch-size, ...) plus ``user-noise-multiplier``, ``user-clip-norm``, ``user-delta``; the same grid dpfl
simulate uses (two worker processes, each client's context kept by the driver), so only the mechanism differs.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))  # central_dp_app, also in the worker processes forked from this one

from central_dp_app import server_app  # noqa: E402
from flwr.app import Context, RecordDict  # noqa: E402

from dpfl.simulations.config import resolve  # noqa: E402
from dpfl.simulations.engines.inprocess import InProcessGrid  # noqa: E402

EXTRA = ("timing-file",)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--config", required=True)
    parser.add_argument("--out", required=True)
    parser.add_argument("--workers", type=int, default=2)
    args = parser.parse_args()
    raw = json.loads(Path(args.config).read_text())
    cfg = {**resolve({k: v for k, v in raw.items() if k not in EXTRA}).as_dict(), "timing-file": args.out}
    with InProcessGrid(client_app_ref="central_dp_app:client_app", run_config=cfg,
                       num_nodes=int(cfg["num-clients"]), workers=args.workers) as grid:
        grid.warm_up()
        server_app(grid, Context(run_id=1, node_id=1, node_config={}, state=RecordDict(), run_config=cfg))


if __name__ == "__main__":
    main()
