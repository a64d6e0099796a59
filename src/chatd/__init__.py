"""chatd: a self-hosted chat-completion server."""

__version__ = "0.1.0"
