"""PROTOCOL section 2: the three ways to authenticate, every refusal, token expiry, origins."""

from __future__ import annotations

import time

import jwt
import pytest
import trio

from .client import unsigned_token, upgrade_status


# --------------------------------------------------------------------------- the three ways


async def test_auth_bearer_header(server):
    token = await server.user("alice")
    async with server.connect(token, auth="header") as c:
        assert c.welcome["user"] == "alice"


@pytest.mark.parametrize("scheme", ["bearer", "BEARER", "BeArEr"])
async def test_auth_bearer_scheme_case_insensitive(server, scheme):
    token = await server.user("alice")
    async with server.connect(None, auth="none", welcome=False, headers=[("Authorization", f"{scheme} {token}")]) as c:
        await c.read_welcome()
        assert c.welcome["user"] == "alice"


async def test_auth_query_token(server):
    token = await server.user("alice")
    async with server.connect(token, auth="query") as c:
        assert c.welcome["user"] == "alice"


async def test_auth_first_frame(server):
    token = await server.user("alice")
    async with server.connect(token, auth="frame") as c:
        assert c.welcome["user"] == "alice"


async def test_auth_header_wins_over_query(server):
    """First match wins: the header's user, not the query's."""
    alice = await server.user("alice")
    bob = await server.user("bob")
    async with server.connect(alice, auth="header", query=f"token={bob}") as c:
        assert c.welcome["user"] == "alice"


async def test_auth_login_token_works(server):
    from .client import login

    await server.user("alice")
    r = await login(server.http_url, "alice")
    assert r.status_code == 200
    async with server.connect(r.json()["token"]) as c:
        assert c.welcome["user"] == "alice"


# --------------------------------------------------------------------------- 401 on the upgrade


async def test_auth_bad_header_token_401(server):
    await server.user("alice")
    assert await upgrade_status(server.ws_url, "not-a-jwt", auth="header") == 401


async def test_auth_bad_query_token_401(server):
    await server.user("alice")
    assert await upgrade_status(server.ws_url, "not-a-jwt", auth="query") == 401


async def test_auth_bad_header_token_401_even_with_valid_query_token(server):
    token = await server.user("alice")
    status = await upgrade_status(
        server.ws_url, None, headers=[("Authorization", "Bearer garbage")], query=f"token={token}"
    )
    assert status == 401


@pytest.mark.parametrize(
    "value",
    ["Basic YWxpY2U6cGFzc3dvcmQ=", "Token {token}", "{token}", "Bearer{token}", "Digest x=1"],
)
async def test_auth_non_bearer_authorization_401_even_with_valid_query_token(server, value):
    token = await server.user("alice")
    status = await upgrade_status(
        server.ws_url,
        None,
        headers=[("Authorization", value.format(token=token))],
        query=f"token={token}",
    )
    assert status == 401


@pytest.mark.parametrize("value", ["Bearer", "bearer"])
async def test_auth_empty_bearer_401(server, value):
    token = await server.user("alice")
    assert await upgrade_status(server.ws_url, None, headers=[("Authorization", value)]) == 401
    status = await upgrade_status(
        server.ws_url, None, headers=[("Authorization", value)], query=f"token={token}"
    )
    assert status == 401


async def test_auth_empty_query_token_401(server):
    await server.user("alice")
    assert await upgrade_status(server.ws_url, None, query="token=") == 401


async def test_auth_unregistered_user_rejected(server):
    await server.user("alice")
    ghost = server.token("ghost")
    assert await upgrade_status(server.ws_url, ghost, auth="header") == 401
    assert await upgrade_status(server.ws_url, ghost, auth="query") == 401
    async with server.connect(ghost, auth="frame", welcome=False) as c:
        assert await c.expect_close() == 4001


async def test_auth_alg_none_token_rejected(server):
    await server.user("alice")
    token = unsigned_token("alice")
    assert await upgrade_status(server.ws_url, token, auth="header") == 401
    assert await upgrade_status(server.ws_url, token, auth="query") == 401


@pytest.mark.parametrize("alg", ["HS384", "HS512"])
async def test_auth_other_algorithm_rejected(server, alg):
    await server.user("alice")
    token = server.token("alice", alg=alg)
    assert await upgrade_status(server.ws_url, token) == 401


async def test_auth_wrong_signature_rejected(server):
    await server.user("alice")
    token = jwt.encode(
        {"sub": "alice", "iat": int(time.time()), "exp": int(time.time()) + 3600},
        "some-other-secret-of-sufficient-length",
        algorithm="HS256",
    )
    assert await upgrade_status(server.ws_url, token) == 401


async def test_auth_token_without_exp_rejected(server):
    await server.user("alice")
    assert await upgrade_status(server.ws_url, server.token("alice", ttl_s=None)) == 401


async def test_auth_expired_token_rejected(server):
    await server.user("alice")
    token = server.token("alice", ttl_s=-60, iat=int(time.time()) - 120)
    assert await upgrade_status(server.ws_url, token, auth="header") == 401
    assert await upgrade_status(server.ws_url, token, auth="query") == 401
    async with server.connect(token, auth="frame", welcome=False) as c:
        assert await c.expect_close() == 4001


async def test_auth_nbf_in_future_rejected(server):
    await server.user("alice")
    token = server.token("alice", nbf=int(time.time()) + 3600)
    assert await upgrade_status(server.ws_url, token) == 401


# --------------------------------------------------------------------------- 4001 on first-frame auth


async def test_auth_first_frame_bad_token_4001(server):
    await server.user("alice")
    async with server.connect(None, auth="none", welcome=False) as c:
        await c.send({"type": "auth", "token": "garbage"})
        assert await c.expect_close() == 4001
        assert not any(e["type"] == "welcome" for e in c.buffer)


@pytest.mark.parametrize(
    "frame",
    ['{"type":"ping"}', '{"type":"join","room":"general"}', "not json", '{"type":"auth"}', '{"type":"auth","token":5}'],
)
async def test_auth_first_frame_not_auth_4001(server, frame):
    await server.user("alice")
    async with server.connect(None, auth="none", welcome=False) as c:
        await c.send(frame)
        assert await c.expect_close() == 4001
        assert not any(e["type"] in ("welcome", "pong", "joined") for e in c.buffer)


async def test_auth_first_frame_binary_4001(server):
    await server.user("alice")
    async with server.connect(None, auth="none", welcome=False) as c:
        await c.ws.send_message(b'{"type":"ping"}')
        assert await c.expect_close() == 4001


class TestAuthTimeout:
    @pytest.fixture
    def server_overrides(self):
        return {"auth_timeout_s": 0.5}

    async def test_auth_no_first_frame_in_time_4001(self, server):
        async with server.connect(None, auth="none", welcome=False) as c:
            assert await c.expect_close() == 4001

    async def test_auth_first_frame_in_time_accepted(self, server):
        token = await server.user("alice")
        async with server.connect(token, auth="frame") as c:
            assert c.welcome["user"] == "alice"
            # the auth deadline no longer applies once authenticated
            await trio.sleep(1.0)
            await c.ping()


# --------------------------------------------------------------------------- expiry while connected


class TestTokenExpiry:
    @pytest.fixture
    def server_overrides(self):
        return {"heartbeat_s": 0.3, "token_ttl_s": 2}

    async def test_token_expiry_while_connected_4001(self, server):
        await server.user("alice")
        token = server.token("alice", ttl_s=2)
        async with server.connect(token) as c:
            await c.join("general")
            assert await c.expect_close(timeout=15) == 4001

    async def test_register_token_carries_configured_ttl(self, server):
        from .client import register_response

        r = await register_response(server.http_url, "alice")
        body = r.json()
        claims = jwt.decode(body["token"], server.secret, algorithms=["HS256"])
        assert claims["exp"] - claims["iat"] == pytest.approx(2, abs=1)
        assert abs(body["expires_at"] - claims["exp"] * 1000) < 1000

    async def test_registered_token_expires_while_connected_4001(self, server):
        token = await server.user("alice")
        try:
            async with server.connect(token) as c:
                assert await c.expect_close(timeout=15) == 4001
        except Exception as exc:  # the token may expire before the upgrade on a loaded machine
            if "401" not in repr(exc):
                raise


# --------------------------------------------------------------------------- origins


class TestOrigins:
    @pytest.fixture
    def server_overrides(self):
        return {"allowed_origins": ("https://chat.example.com", "http://localhost:3001")}

    @pytest.mark.parametrize(
        "origin",
        [
            "https://evil.example.com",
            "http://chat.example.com",
            "https://chat.example.com:8443",
            "https://chat.example.com.evil.com",
            "null",
            "http://localhost:3002",
        ],
    )
    async def test_origin_not_allowed_403(self, server, origin):
        token = await server.user("alice")
        assert await upgrade_status(server.ws_url, token, headers=[("Origin", origin)]) == 403

    @pytest.mark.parametrize("origin", ["https://chat.example.com", "http://localhost:3001"])
    async def test_origin_allowed(self, server, origin):
        token = await server.user("alice")
        async with server.connect(token, headers=[("Origin", origin)]) as c:
            assert c.welcome["user"] == "alice"

    async def test_origin_absent_allowed(self, server):
        token = await server.user("alice")
        async with server.connect(token) as c:
            assert c.welcome["user"] == "alice"

    async def test_origin_allowed_with_query_token(self, server):
        token = await server.user("alice")
        async with server.connect(token, auth="query", headers=[("Origin", "https://chat.example.com")]) as c:
            assert c.welcome["user"] == "alice"


async def test_any_origin_allowed_when_unconfigured(server):
    token = await server.user("alice")
    async with server.connect(token, headers=[("Origin", "https://anything.example.org")]) as c:
        assert c.welcome["user"] == "alice"


async def test_auth_empty_authorization_header_401_even_with_valid_query_token(server):
    token = await server.user("alice")
    status = await upgrade_status(server.ws_url, None, headers=[("Authorization", "")], query=f"token={token}")
    assert status == 401


async def test_auth_username_case_matters_for_sub(server):
    """`sub` must name a registered user exactly: "Alice" is not "alice"."""
    await server.user("alice")
    assert await upgrade_status(server.ws_url, server.token("Alice")) == 401
