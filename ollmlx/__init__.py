"""ollmlx: Ollama's API and CLI, served with MLX."""

__version__ = "0.1.0"
