"""Where `chat-actors login` keeps tokens: one private JSON file, one entry per server.

`$XDG_CONFIG_HOME/chat-actors/credentials.json` (`~/.config/chat-actors/credentials.json`
when the variable is unset or not absolute, as the XDG spec says), mode 0600 in a 0700
directory, written atomically (a temporary file renamed over the old one), keyed by the
server's HTTP base URL so logins to several servers do not overwrite each other:

    {"http://127.0.0.1:3001": {"user": "alice", "token": "...", "expires_at": 1767225600000}}
"""

from __future__ import annotations

import json
import os
from pathlib import Path

from .api import Credentials

__all__ = ["credentials_path", "load", "save"]

FILE_NAME = "credentials.json"


def credentials_path() -> Path:
    base = os.environ.get("XDG_CONFIG_HOME", "")
    root = Path(base) if base and os.path.isabs(base) else Path.home() / ".config"
    return root / "chat-actors" / FILE_NAME


def _read(path: Path) -> dict[str, dict]:
    try:
        data = json.loads(path.read_text("utf-8"))
    except (OSError, ValueError):
        return {}
    return data if isinstance(data, dict) else {}


def load(base_url: str) -> Credentials | None:
    """The saved credentials for the server at `base_url`, if any."""
    entry = _read(credentials_path()).get(base_url)
    try:
        return Credentials(user=entry["user"], token=entry["token"], expires_at=int(entry["expires_at"]))  # type: ignore[index]
    except (TypeError, KeyError, ValueError):
        return None


def save(base_url: str, credentials: Credentials) -> Path:
    """Store `credentials` for `base_url` (other servers' entries are kept); the file's path."""
    path = credentials_path()
    path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
    data = _read(path)
    data[base_url] = {"user": credentials.user, "token": credentials.token, "expires_at": credentials.expires_at}
    temporary = path.with_name(f".{FILE_NAME}.{os.getpid()}")
    fd = os.open(temporary, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as handle:
            json.dump(data, handle, indent=1, sort_keys=True)
        os.chmod(temporary, 0o600)  # an old leftover of the same name may have kept wider bits
        os.replace(temporary, path)
    except BaseException:
        temporary.unlink(missing_ok=True)
        raise
    return path
