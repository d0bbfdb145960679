"""The inference app: models, scheduling and generation behind a thin Dapr edge."""
