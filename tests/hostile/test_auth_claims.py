"""Tokens with odd time claims are refused everywhere (PROTOCOL section 2).

pyjwt coerces `exp`/`nbf`/`iat` with int() and takes integers of any size, so `exp=10**400`
authenticated HTTP calls (and on WebSocket gave a welcome, then close 1011 on an OverflowError)
and `exp="..."` passed as a number. Every such token is now 401 on HTTP and refused at the
upgrade on WebSocket, like any other bad token.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import time

import pytest

from integration.client import auth, http, upgrade_status


def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def signed(secret: str, payload_json: str) -> str:
    """HS256 over exactly `payload_json` (pyjwt's encoder would not write 1e400 or 10**400)."""
    header = _b64(json.dumps({"alg": "HS256", "typ": "JWT"}).encode())
    body = _b64(payload_json.encode())
    sig = _b64(hmac.new(secret.encode(), f"{header}.{body}".encode(), hashlib.sha256).digest())
    return f"{header}.{body}.{sig}"


NOW = int(time.time())
FAR = NOW + 3600
ODD_CLAIMS = {
    "exp-10^400": f'"exp":{10**400},"iat":{NOW}',
    "exp-2^53": f'"exp":{2**53},"iat":{NOW}',
    "exp-string": f'"exp":"{FAR}","iat":{NOW}',
    "exp-float": f'"exp":{FAR}.0,"iat":{NOW}',
    "iat-10^400": f'"exp":{FAR},"iat":{10**400}',
    "iat-string": f'"exp":{FAR},"iat":"{NOW}"',
    "nbf-string": f'"exp":{FAR},"iat":{NOW},"nbf":"{NOW - 10}"',
    "nbf-fraction": f'"exp":{FAR},"iat":{NOW},"nbf":{NOW - 10}.5',
}


@pytest.mark.parametrize("claims", list(ODD_CLAIMS.values()), ids=list(ODD_CLAIMS))
async def test_http_refuses_tokens_with_odd_time_claims(server, claims: str) -> None:
    await server.user("alice")
    token = signed(server.secret, '{"sub":"alice",%s}' % claims)
    async with http(server.http_url) as h:
        r = await h.get("/api/rooms", headers=auth(token))
        assert r.status_code == 401, (r.status_code, r.text)
        assert r.json()["error"] == "unauthorized"
        r = await h.post("/api/rooms/general/messages", json={"id": "m1", "text": "x"}, headers=auth(token))
        assert r.status_code == 401, (r.status_code, r.text)


@pytest.mark.parametrize("claims", [ODD_CLAIMS["exp-10^400"], ODD_CLAIMS["exp-string"]], ids=["exp-10^400", "exp-string"])
async def test_websocket_upgrade_refuses_tokens_with_odd_time_claims(server, claims: str) -> None:
    await server.user("alice")
    token = signed(server.secret, '{"sub":"alice",%s}' % claims)
    assert await upgrade_status(server.ws_url, token) == 401


async def test_the_same_claims_as_integers_are_fine(server) -> None:
    await server.user("alice")
    token = signed(server.secret, '{"sub":"alice","exp":%d,"iat":%d,"nbf":%d}' % (FAR, NOW, NOW - 10))
    async with http(server.http_url) as h:
        r = await h.get("/api/rooms", headers=auth(token))
    assert r.status_code == 200, r.text
    assert await upgrade_status(server.ws_url, token) == 101
