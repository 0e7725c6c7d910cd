"""Ambiguous or odd credentials on HTTP (PROTOCOL sections 2 and 8).

Two `Authorization` headers used to mean "the first one wins"; which one a proxy or a client
library meant is a guess, so it is 401. A supplied `X-Api-Key` must be right whatever bearer
comes with it; it is compared in constant time on bytes (a latin-1 byte in the header must be
a 401, not the TypeError `hmac.compare_digest` raises for non-ASCII str).
"""

from __future__ import annotations

import httpx
import pytest

from integration.client import TIMEOUT

API_KEY = "k3y-for-tests-0123456789"


def client(http_url: str) -> httpx.AsyncClient:
    return httpx.AsyncClient(base_url=http_url, timeout=TIMEOUT)


async def test_two_authorization_headers_are_401(server) -> None:
    good = await server.user("alice")
    async with client(server.http_url) as h:
        for headers in (
            [("Authorization", f"Bearer {good}"), ("Authorization", "Bearer garbage")],
            [("Authorization", "Bearer garbage"), ("Authorization", f"Bearer {good}")],
            [("Authorization", f"Bearer {good}"), ("Authorization", f"Bearer {good}")],
        ):
            r = await h.get("/api/rooms", headers=headers)
            assert r.status_code == 401, (headers[0][1][:12], r.text)
            assert r.json()["error"] == "unauthorized"
        r = await h.get("/api/rooms", headers=[("Authorization", f"Bearer {good}")])
        assert r.status_code == 200


class TestApiKey:
    @pytest.fixture
    def server_overrides(self):
        return {"api_key": API_KEY}

    async def test_two_api_key_headers_are_401(self, server) -> None:
        async with client(server.http_url) as h:
            r = await h.post("/api/rooms/general/messages", json={"id": "1", "text": "x"},
                             headers=[("X-Api-Key", API_KEY), ("X-Api-Key", API_KEY)])
        assert r.status_code == 401 and r.json()["error"] == "unauthorized", r.text

    @pytest.mark.parametrize("key", [b"wrong", b"", API_KEY.encode() + b"\xe9", b"\xff" * 24, API_KEY[:-1].encode()])
    async def test_wrong_key_is_401_never_500(self, server, key: bytes) -> None:
        good = await server.user("alice")
        async with client(server.http_url) as h:
            for bearer in ([], [(b"Authorization", f"Bearer {good}".encode())]):
                r = await h.post("/api/rooms/general/messages", json={"id": "1", "text": "x"},
                                 headers=[(b"X-Api-Key", key), *bearer])
                assert r.status_code == 401, (key, r.status_code, r.text)
                assert r.json()["error"] == "unauthorized"

    async def test_right_key_publishes_as_system_whatever_the_bearer(self, server) -> None:
        good = await server.user("alice")
        async with client(server.http_url) as h:
            for i, bearer in enumerate(("garbage", good)):
                r = await h.post("/api/rooms/general/messages", json={"id": f"s{i}", "text": "x"},
                                 headers={"X-Api-Key": API_KEY, "Authorization": f"Bearer {bearer}"})
                assert r.status_code == 201, r.text
            page = await h.get("/api/rooms/general/messages", headers={"Authorization": f"Bearer {good}"})
        assert [m["from"] for m in page.json()["messages"]] == ["system", "system"]


async def test_any_key_is_401_when_none_is_configured(server) -> None:
    async with client(server.http_url) as h:
        r = await h.post("/api/rooms/general/messages", json={"id": "1", "text": "x"},
                         headers=[(b"X-Api-Key", b"\xe9t\xe9")])
    assert r.status_code == 401 and r.json()["error"] == "unauthorized", r.text
