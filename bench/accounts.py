"""Getting clients ready through the real interfaces: HTTP registration, then connect specs.

Registration goes through `POST /api/register`, so it pays argon2id (tens of ms per user on
one core); scenarios therefore give each user several connections (devices) instead of
registering one user per connection.
"""

from __future__ import annotations

import secrets
from concurrent.futures import ThreadPoolExecutor
from typing import Any
from urllib.parse import quote

import httpx

from bench.procs import Target

PASSWORD = "bench-password-1"


def register_users(target: Target, count: int, prefix: str = "u") -> list[tuple[str, str]]:
    """Register `count` fresh users; [(username, token)]."""
    assert target.http_url is not None
    tag = secrets.token_hex(3)
    names = [f"{prefix}{tag}{i}" for i in range(count)]
    with httpx.Client(base_url=target.http_url, timeout=60) as http:
        def one(name: str) -> tuple[str, str]:
            r = http.post("/api/register", json={"username": name, "password": PASSWORD})
            r.raise_for_status()
            return name, r.json()["token"]
        with ThreadPoolExecutor(8) as pool:
            return list(pool.map(one, names))


def ours_url(target: Target, token: str) -> str:
    return f"{target.ws_url}?token={quote(token)}"


def raw_url(target: Target, room: str) -> str:
    return f"{target.ws_url}/{room}"


def split(specs: list[dict[str, Any]], parts: int) -> list[list[dict[str, Any]]]:
    """Round-robin the clients over the generator processes."""
    return [specs[i::parts] for i in range(parts)]
