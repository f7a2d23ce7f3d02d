"""How fast is the accounting for a large, heterogeneous federation?

1,000 clients whose dataset sizes come from a Dirichlet(0.5) split of 60,000 records (at least 10
each), batch 64, one local epoch, sigma 1.0: so q = 64 / n and steps = ceil(n / 64) differ from client
to client. Every client takes part in every round. Timed from cold caches:

  (a) the per-round epsilon table, every client x every round, with RDP   (target <= 10 s)
  (b) the final tight (PLD) epsilon of every client                        (target <= 60 s)
  (c) optionally (--prv) the final PRV epsilon of every client              (no target)

    python bench/accounting.py [--clients 1000 --rounds 100 --json bench/results/accounting.json]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from dpfl.privacy import (
    DpSgdRelease,
    clear_caches,
    epsilon,
    epsilon_per_release,
    steps_per_round,
)

ROOT = Path(__file__).resolve().parents[1]


TARGETS = {"rdp_table_s": 10.0, "pld_final_s": 60.0}
DELTA = 1e-5
RECORDS, MIN_RECORDS, ALPHA = 60_000, 10, 0.5
BATCH, EPOCHS, SIGMA = 64, 1, 1.0


def client_sizes(clients: int, seed: int) -> np.ndarray:
    """Dataset sizes of a Dirichlet(alpha) split of RECORDS records, at least MIN_RECORDS each."""
    rng = np.random.default_rng(seed)
    shares = rng.dirichlet(np.full(clients, ALPHA))
    return np.maximum(rng.multinomial(RECORDS, shares), MIN_RECORDS)


def ledgers_for(sizes: Sequence[int], rounds: int) -> list[list[DpSgdRelease]]:
    """Each client's ledger after `rounds` rounds: one DP-SGD release per round."""
    out = []
    for n in sizes:
        q, steps = steps_per_round(int(n), BATCH, EPOCHS)
        out.append([DpSgdRelease(SIGMA, q, steps, r) for r in range(1, rounds + 1)])
    return out


def timed(label: str, ledgers: list[list[DpSgdRelease]], work: Callable[[list[DpSgdRelease]], Any],
          ) -> tuple[float, list[Any]]:
    """Run `work` on every ledger from cold caches, with a progress line; (seconds, results)."""
    clear_caches()
    results: list[Any] = []
    start = time.perf_counter()
    tty = sys.stdout.isatty()
    every = max(1, len(ledgers) // (20 if tty else 4))
    for i, ledger in enumerate(ledgers, start=1):
        results.append(work(ledger))
        if i % every == 0 or i == len(ledgers):
            line = f"  {label}: {i}/{len(ledgers)} clients, {time.perf_counter() - start:6.1f} s"
            print(f"\r{line}" if tty else line, end="" if tty else "\n", flush=True)
    seconds = time.perf_counter() - start
    if tty:
        print()
    return seconds, results


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--clients", type=int, default=1000)
    parser.add_argument("--rounds", type=int, default=100)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--prv", action="store_true", help="also time the final PRV epsilon of every client")
    parser.add_argument("--json", type=Path, default=ROOT / "bench" / "results" / "accounting.json")
    args = parser.parse_args(argv)

    sizes = client_sizes(args.clients, args.seed)
    ledgers = ledgers_for(sizes, args.rounds)
    distinct = len({tuple(r.key for r in ledger) for ledger in ledgers})
    n_full = int(sum(1 for n in sizes if n <= BATCH))
    print(f"{args.clients} clients x {args.rounds} rounds, sizes {sizes.min()}..{sizes.max()} "
          f"(median {int(np.median(sizes))}), {distinct} distinct ledgers ({n_full} clients have q = 1), "
          f"{os.cpu_count()} cores")

    rdp_s, tables = timed("(a) per-round RDP table", ledgers,
                          lambda led: epsilon_per_release(led, DELTA, "rdp"))
    pld_s, finals = timed("(b) final PLD epsilon", ledgers, lambda led: epsilon(led, DELTA, "pld"))
    result: dict[str, Any] = {
        "clients": args.clients, "rounds": args.rounds, "seed": args.seed, "delta": DELTA,
        "records": RECORDS, "dirichlet_alpha": ALPHA, "min_records": MIN_RECORDS, "batch_size": BATCH,
        "local_epochs": EPOCHS, "noise_multiplier": SIGMA, "distinct_ledgers": distinct,
        "clients_with_q_1": n_full,
        "rdp_table_s": round(rdp_s, 3), "rdp_table_cells": args.clients * args.rounds,
        "pld_final_s": round(pld_s, 3), "targets": TARGETS,
        "met": {"rdp_table_s": rdp_s <= TARGETS["rdp_table_s"],
                "pld_final_s": pld_s <= TARGETS["pld_final_s"]},
        "pld_final_epsilon": {"min": min(finals), "median": float(np.median(finals)), "max": max(finals)},
        "rdp_final_epsilon": {"min": min(t[-1] for t in tables), "max": max(t[-1] for t in tables)},
        "machine": {"cpus": os.cpu_count(), "python": platform.python_version(),
                    "platform": platform.platform()},
    }
    if args.prv:
        prv_s, prv = timed("(c) final PRV epsilon", ledgers, lambda led: epsilon(led, DELTA, "prv"))
        result.update(prv_final_s=round(prv_s, 3),
                      prv_final_epsilon={"min": min(prv), "median": float(np.median(prv)), "max": max(prv)})

    print(f"(a) per-round RDP table, {args.clients} x {args.rounds}: {rdp_s:.2f} s "
          f"(target <= {TARGETS['rdp_table_s']:g} s: {'met' if result['met']['rdp_table_s'] else 'MISSED'})")
    print(f"(b) final PLD epsilon of every client: {pld_s:.2f} s "
          f"(target <= {TARGETS['pld_final_s']:g} s: {'met' if result['met']['pld_final_s'] else 'MISSED'})")
    if args.prv:
        print(f"(c) final PRV epsilon of every client: {result['prv_final_s']:.2f} s (no target)")
    eps = result["pld_final_epsilon"]
    print(f"    final PLD epsilon at delta {DELTA:g}: min {eps['min']:.3f}, median {eps['median']:.3f}, "
          f"max {eps['max']:.3f}")
    args.json.parent.mkdir(parents=True, exist_ok=True)
    args.json.write_text(json.dumps(result, indent=2) + "\n")
    print(f"wrote {args.json}")
    return 0 if all(result["met"].values()) else 1


if __name__ == "__main__":
    raise SystemExit(main())
