"""foreman: one queued, observable front for one Ollama server."""

__version__ = "0.1.0"
