"""AutoGLM Mesh: self-hosted LLM serving for GLM-family models as three Dapr apps."""

__version__ = "0.1.0"
