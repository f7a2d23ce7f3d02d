"""Session-wide test settings."""

from __future__ import annotations

import os
import tempfile

# Hermetic partition cache: tests neither read nor fill the user's ~/.cache/dpfl. Set at import time so
# that subprocesses started by tests (dpfl launch, Ray workers) inherit it.
os.environ.setdefault("DPFL_CACHE_DIR", tempfile.mkdtemp(prefix="dpfl-test-cache-"))
