"""dpfl ClientApp: local DP-SGD training with Opacus and a durable per-client privacy ledger."""
