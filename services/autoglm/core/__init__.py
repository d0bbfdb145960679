"""Code shared by all three apps: settings, logging, errors, schemas and Dapr access."""
