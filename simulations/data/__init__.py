"""Datasets and their partitions into clients, offline and seeded; see docs/architecture.md."""
