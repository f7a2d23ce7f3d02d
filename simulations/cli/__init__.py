"""The ``dpfl`` command line: one module per command group; see docs/architecture.md."""
