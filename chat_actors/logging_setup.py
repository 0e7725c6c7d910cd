"""Process-wide logging for `chat-actors serve`: one stderr handler, one line per record.

Only the CLI calls this; library code just uses `logging.getLogger(__name__)`, so embedding
applications and tests keep control of their own logging.
"""

from __future__ import annotations

import logging
import sys
from typing import TextIO

__all__ = ["LOG_FORMAT", "configure_logging", "reset_logging"]

LOG_FORMAT = "%(asctime)s %(levelname)s %(name)s: %(message)s"

_handler: logging.Handler | None = None


def configure_logging(level: str, stream: TextIO | None = None) -> None:
    """Send records at `level` and above to `stream` (stderr by default).

    Idempotent: calling it again replaces the handler it installed before instead of adding a
    second one, and handlers installed by others (pytest's, an embedding app's) are left alone.
    """
    global _handler
    root = logging.getLogger()
    if _handler is not None:
        root.removeHandler(_handler)
    _handler = logging.StreamHandler(stream if stream is not None else sys.stderr)
    _handler.setFormatter(logging.Formatter(LOG_FORMAT))
    root.addHandler(_handler)
    root.setLevel(level.upper())


def reset_logging() -> None:
    """Remove the handler `configure_logging` installed (for embedding and tests)."""
    global _handler
    if _handler is not None:
        logging.getLogger().removeHandler(_handler)
        _handler = None
