"""Model tooling used by the CLI: the local demo model and (later) signing."""
