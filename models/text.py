"""A text classifier DP-SGD can train: embedding, Opacus' ``DPLSTM`` and a linear head.

``nn.LSTM`` keeps its gates' weights in fused tensors that per-sample gradient hooks cannot see; Opacus' ``DPLSTM``
is the same recurrence written with ``RNNLinear`` layers it has hooks for, so each example's gradient is exact
(tests/test_text.py compares it with a per-example loop). Inputs are token ids (``VOCABULARY_SIZE`` of them, 0
pads); a sequence's representation is the mean of the LSTM's outputs over its real tokens, so neither padding nor
another example of the batch changes it.
"""

from __future__ import annotations

import torch
from opacus.layers import DPLSTM
from torch import nn

HASH_BUCKETS = 1024  # the hashing tokenizer's buckets (simulations/data/text.py): ids 1..HASH_BUCKETS, 0 pads
VOCABULARY_SIZE = HASH_BUCKETS + 1
EMBEDDING_DIM = 16
HIDDEN_SIZE = 32


class TextLSTM(nn.Module):
    """Embedding -> DPLSTM -> mean over real tokens -> linear. ``input_shape`` is (sequence length,)."""

    def __init__(self, input_shape: tuple[int, ...], num_classes: int) -> None:
        super().__init__()
        self.embedding = nn.Embedding(VOCABULARY_SIZE, EMBEDDING_DIM)
        self.lstm = DPLSTM(EMBEDDING_DIM, HIDDEN_SIZE, batch_first=True)
        self.head = nn.Linear(HIDDEN_SIZE, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        ids = x.long().clamp(0, VOCABULARY_SIZE - 1)  # ids arrive as integers; a float probe is cast, never fails
        out, _ = self.lstm(self.embedding(ids))
        mask = (ids > 0).unsqueeze(-1).to(out.dtype)
        pooled = (out * mask).sum(1) / mask.sum(1).clamp(min=1.0)
        return self.head(pooled)
