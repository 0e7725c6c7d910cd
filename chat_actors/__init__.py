"""chat_actors: a real-time chat server built on Trio structured concurrency.

The public surface is small on purpose: the configuration record, the composition root
and the CLI entry point. Everything else is an implementation detail of the server.
"""

__version__ = "0.1.0"

__all__ = ["__version__"]
