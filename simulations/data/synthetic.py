"""FedProx Synthetic(alpha, beta) (Li et al. 2020, "Federated Optimization in Heterogeneous Networks").

Each client k has its own softmax model W_k (60x10), b_k ~ N(u_k, 1) with u_k ~ N(0, alpha) (model
heterogeneity), and its own input distribution x ~ N(v_k, Sigma), Sigma_jj = j^-1.2, v_k elements ~ N(B_k, 1)
with B_k ~ N(0, beta) (data heterogeneity); y = argmax softmax(W_k x + b_k). Client sizes are
lognormal(4, 2) + 50 as in the paper's generator (``generate_niid.py``), capped so one client cannot
dwarf the rest. Like that generator, alpha and beta are used as standard deviations (the paper writes
N(0, alpha); the two readings agree at the usual alpha, beta in {0, 1}).

Client k's data depend only on (seed, k), not on how many clients there are, so growing a federation keeps
the existing clients' data.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

NUM_FEATURES = 60
NUM_CLASSES = 10
MIN_CLIENT_SIZE = 50
MAX_CLIENT_SIZE = 5000
TEST_FRACTION = 0.2


@dataclass(frozen=True, eq=False)
class SyntheticClient:
    """One client's generated samples, already split into its training pool and its held-out test part."""

    train_x: np.ndarray  # float32 (n_train, 60)
    train_y: np.ndarray  # int64 (n_train,)
    test_x: np.ndarray
    test_y: np.ndarray


def _size(rng: np.random.Generator) -> int:
    return int(min(int(rng.lognormal(4.0, 2.0)) + MIN_CLIENT_SIZE, MAX_CLIENT_SIZE))


def generate_client(seed: int, client: int, alpha: float, beta: float) -> SyntheticClient:
    """Client ``client``'s samples; the held-out TEST_FRACTION goes to the server's pooled test set."""
    n = _size(np.random.default_rng([seed, client, 0]))
    rng = np.random.default_rng([seed, client, 1])
    u = rng.normal(0.0, alpha)
    w = rng.normal(u, 1.0, (NUM_FEATURES, NUM_CLASSES))
    b = rng.normal(u, 1.0, NUM_CLASSES)
    big_b = rng.normal(0.0, beta)
    v = rng.normal(big_b, 1.0, NUM_FEATURES)
    std = np.arange(1, NUM_FEATURES + 1, dtype=np.float64) ** -0.6  # sqrt(j^-1.2)
    x = v + std * rng.standard_normal((n, NUM_FEATURES))
    y = np.argmax(x @ w + b, axis=1).astype(np.int64)  # softmax is monotone: argmax of the logits
    order = rng.permutation(n)
    n_test = int(round(n * TEST_FRACTION))
    test, train = order[:n_test], order[n_test:]
    x = x.astype(np.float32)
    return SyntheticClient(x[train], y[train], x[test], y[test])
