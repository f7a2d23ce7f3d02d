"""The words client and server use for releases in Flower messages.

Both sides import these names from here (neither imports the other), so a renamed key cannot
silently split the server's record of a release from the client's.
"""

from __future__ import annotations

# Error codes carried by Flower ``Error`` replies (``Message(Error(code, reason), reply_to=...)``).
BUDGET_EXHAUSTED = 4001  # the client declined: this round's release would exceed its budget
LEDGER_CONFLICT = 4002  # the client's ledger copies disagree; it refuses to train
CLIENT_FAILED = 4003  # training raised; nothing was released

# Record keys in a train reply.
ARRAYS = "arrays"
METRICS = "metrics"
RELEASE = "release"  # ConfigRecord: client-id, mechanism, and the release parameters

# Keys in the train instruction's ConfigRecord ("config").
CFG_ROUND = "server-round"
CFG_DELTA = "delta"
CFG_RUN_PATH = "run-path"
