"""peer_app: sample-level DP-SGD with Opacus in Flower, written in the style of Flower's Opacus example."""
