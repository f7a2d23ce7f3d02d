"""Privacy/utility sweeps: spec, execution, results and report; see docs/sweeps.md."""
