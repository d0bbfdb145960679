"""The gateway app: the public OpenAI-compatible HTTP API in front of the mesh."""
