"""The typed run configuration: options, validation, presets; see docs/architecture.md."""
