"""The archiver app: durable snapshots of sessions and an append-only audit archive."""
