"""A flood of bogus logins cannot delay a real one without bound (PROTOCOL section 2).

Password checks run argon2id, two at a time. Before, every login waited its turn however long
the line: 200 bogus logins made a real one take 18 s. Now at most CHAT_AUTH_QUEUE logins or
registrations are in the hasher at once (hashing or waiting); one more is answered
`429 rate_limited` at once with `Retry-After`.
"""

from __future__ import annotations

import httpx
import pytest
import trio

from integration.client import PASSWORD, login, register

QUEUE = 4
BURST = 48


@pytest.fixture
def server_overrides():
    return {"auth_queue": QUEUE}


async def test_login_flood_gets_429_with_retry_after_and_a_real_login_still_works(server) -> None:
    await register(server.http_url, "alice")
    responses: list[httpx.Response] = []
    limits = httpx.Limits(max_connections=BURST, max_keepalive_connections=0)
    async with httpx.AsyncClient(base_url=server.http_url, timeout=60, limits=limits) as h:

        async def bogus(i: int) -> None:
            body = {"username": "alice" if i % 2 else f"nobody{i}", "password": f"wrong-password-{i}"}
            responses.append(await h.post("/api/login", json=body))

        with trio.fail_after(120):
            async with trio.open_nursery() as nursery:
                for i in range(BURST):
                    nursery.start_soon(bogus, i)
    statuses = [r.status_code for r in responses]
    assert set(statuses) <= {401, 429}, statuses
    refused = [r for r in responses if r.status_code == 429]
    assert refused, f"{BURST} concurrent logins with a queue of {QUEUE}: none was refused ({statuses})"
    for r in refused:
        assert r.json()["error"] == "rate_limited" and isinstance(r.json()["message"], str)
        retry_after = r.headers.get("retry-after")
        assert retry_after is not None and retry_after.isdigit() and int(retry_after) >= 1, r.headers
    # the queue drained: the real user gets in
    with trio.fail_after(60):
        r = await login(server.http_url, "alice", PASSWORD)
    assert r.status_code == 200, r.text


async def test_registration_flood_is_bounded_too(server) -> None:
    """Registrations share the queue; a refused one stored nothing, so the name is still free."""
    responses: dict[str, httpx.Response] = {}
    limits = httpx.Limits(max_connections=BURST, max_keepalive_connections=0)
    async with httpx.AsyncClient(base_url=server.http_url, timeout=60, limits=limits) as h:

        async def one(name: str) -> None:
            responses[name] = await h.post("/api/register", json={"username": name, "password": PASSWORD})

        with trio.fail_after(120):
            async with trio.open_nursery() as nursery:
                for i in range(BURST):
                    nursery.start_soon(one, f"user{i}")
    statuses = sorted(r.status_code for r in responses.values())
    assert set(statuses) <= {201, 429}, statuses
    assert 429 in statuses and 201 in statuses, statuses
    refused = next(name for name, r in responses.items() if r.status_code == 429)
    assert "retry-after" in responses[refused].headers
    with trio.fail_after(60):
        assert await register(server.http_url, refused)  # 201, or register() fails the test
