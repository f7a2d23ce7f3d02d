"""The deployment engine: real Flower processes, their supervision, and TLS material."""
