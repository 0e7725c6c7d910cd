"""PROTOCOL sections 2 and 8: accounts, rooms, members, messages, presence, health, metrics,
the web client, and the error body/status of every code."""

from __future__ import annotations

import time

import jwt
import pytest

from .client import PASSWORD, auth, connect, http, now_ms, register, register_response
from .deployments import metrics_total

API_KEY = "k3y-for-tests-0123456789"


def _is_error(r, status: int, code: str) -> None:
    assert r.status_code == status, (r.status_code, r.text)
    body = r.json()
    assert body["error"] == code and isinstance(body["message"], str), body
    assert set(body) == {"error", "message"}, body


# --------------------------------------------------------------------------- register / login


async def test_register_201_body(server):
    r = await register_response(server.http_url, "alice")
    assert r.status_code == 201, r.text
    body = r.json()
    assert set(body) == {"user", "token", "expires_at"}
    assert body["user"] == "alice"
    assert isinstance(body["expires_at"], int) and not isinstance(body["expires_at"], bool)
    # default lifetime 24 h
    assert abs(body["expires_at"] - (now_ms() + 86_400_000)) < 120_000
    claims = jwt.decode(body["token"], server.secret, algorithms=["HS256"])
    assert claims["sub"] == "alice" and "iat" in claims and "exp" in claims
    assert jwt.get_unverified_header(body["token"])["alg"] == "HS256"


async def test_register_taken_409(server):
    await register(server.http_url, "alice")
    r = await register_response(server.http_url, "alice", "another-password")
    _is_error(r, 409, "conflict")


async def test_register_username_case_sensitive(server):
    await register(server.http_url, "alice")
    r = await register_response(server.http_url, "Alice")
    assert r.status_code == 201 and r.json()["user"] == "Alice"


@pytest.mark.parametrize(
    "username",
    ["ab", "a" * 33, "bad name", "bad/name", "", "ünï", "a:b", "a@b", "system", "System", "SYSTEM", "sYsTeM"],
)
async def test_register_invalid_username_400(server, username):
    r = await register_response(server.http_url, username)
    _is_error(r, 400, "bad_request")


@pytest.mark.parametrize("username", ["abc", "a" * 32, "A.b-c_9", "systems", "my-system"])
async def test_register_valid_usernames(server, username):
    r = await register_response(server.http_url, username)
    assert r.status_code == 201, (username, r.text)


@pytest.mark.parametrize("password, ok", [("x" * 7, False), ("x" * 8, True), ("x" * 256, True), ("x" * 257, False)])
async def test_register_password_length(server, password, ok):
    r = await register_response(server.http_url, "alice", password)
    if ok:
        assert r.status_code == 201, r.text
    else:
        _is_error(r, 400, "bad_request")


@pytest.mark.parametrize(
    "body",
    [{"username": "alice"}, {"password": PASSWORD}, {"username": 5, "password": PASSWORD}, {"username": "alice", "password": 12345678}, [], "x"],
)
async def test_register_malformed_body_400(server, body):
    async with http(server.http_url) as h:
        r = await h.post("/api/register", json=body)
    _is_error(r, 400, "bad_request")


async def test_register_not_json_400(server):
    async with http(server.http_url) as h:
        r = await h.post("/api/register", content=b"username=alice", headers={"Content-Type": "application/json"})
    _is_error(r, 400, "bad_request")


async def test_login_200_same_body(server):
    await register(server.http_url, "alice")
    async with http(server.http_url) as h:
        r = await h.post("/api/login", json={"username": "alice", "password": PASSWORD})
    assert r.status_code == 200, r.text
    body = r.json()
    assert set(body) == {"user", "token", "expires_at"} and body["user"] == "alice"
    assert isinstance(body["expires_at"], int)
    async with server.connect(body["token"]) as c:
        assert c.welcome["user"] == "alice"


@pytest.mark.parametrize("username, password", [("alice", "wrong-password"), ("nobody", PASSWORD), ("Alice", PASSWORD)])
async def test_login_bad_credentials_401(server, username, password):
    await register(server.http_url, "alice")
    async with http(server.http_url) as h:
        r = await h.post("/api/login", json={"username": username, "password": password})
    _is_error(r, 401, "unauthorized")


# --------------------------------------------------------------------------- auth on endpoints


PROTECTED = [
    ("GET", "/api/rooms", None),
    ("POST", "/api/rooms", {"name": "x1"}),
    ("POST", "/api/rooms/general/members", {"user": "alice"}),
    ("GET", "/api/rooms/general/messages", None),
    ("POST", "/api/rooms/general/messages", {"id": "1", "text": "x"}),
    ("GET", "/api/rooms/general/presence", None),
]


@pytest.mark.parametrize("method, path, body", PROTECTED, ids=[f"{m} {p}" for m, p, _ in PROTECTED])
@pytest.mark.parametrize(
    "headers",
    [{}, {"Authorization": "Bearer garbage"}, {"Authorization": "Basic YWxpY2U6eA=="}, {"Authorization": "Bearer"}],
    ids=["none", "bad-token", "basic", "empty"],
)
async def test_missing_or_invalid_bearer_401(server, method, path, body, headers):
    await register(server.http_url, "alice")
    async with http(server.http_url) as h:
        r = await h.request(method, path, json=body, headers=headers)
    _is_error(r, 401, "unauthorized")


async def test_expired_bearer_401(server):
    await register(server.http_url, "alice")
    token = server.token("alice", ttl_s=-60, iat=int(time.time()) - 120)
    async with http(server.http_url) as h:
        r = await h.get("/api/rooms", headers=auth(token))
    _is_error(r, 401, "unauthorized")


# --------------------------------------------------------------------------- rooms


async def test_create_room_201(server):
    alice = await register(server.http_url, "alice")
    async with http(server.http_url) as h:
        r = await h.post("/api/rooms", json={"name": "pub"}, headers=auth(alice))
        assert r.status_code == 201, r.text
        assert r.json() == {"name": "pub", "private": False, "owner": "alice", "seq": 0}
        r = await h.post("/api/rooms", json={"name": "priv", "private": True}, headers=auth(alice))
        assert r.status_code == 201
        assert r.json() == {"name": "priv", "private": True, "owner": "alice", "seq": 0}
        r = await h.post("/api/rooms", json={"name": "pub2", "private": False}, headers=auth(alice))
        assert r.status_code == 201 and r.json()["private"] is False


async def test_create_room_exists_409(server):
    alice = await register(server.http_url, "alice")
    async with http(server.http_url) as h:
        assert (await h.post("/api/rooms", json={"name": "pub"}, headers=auth(alice))).status_code == 201
        _is_error(await h.post("/api/rooms", json={"name": "pub"}, headers=auth(alice)), 409, "conflict")
        _is_error(
            await h.post("/api/rooms", json={"name": "pub", "private": True}, headers=auth(alice)), 409, "conflict"
        )
    # a room created by `join` exists too
    async with server.connect(alice) as c:
        await c.join("joined-room")
    async with http(server.http_url) as h:
        _is_error(await h.post("/api/rooms", json={"name": "joined-room"}, headers=auth(alice)), 409, "conflict")


@pytest.mark.parametrize(
    "body",
    [{"name": "bad room"}, {"name": ""}, {"name": "r" * 65}, {"name": 5}, {}, {"name": "ok", "private": "yes"}],
)
async def test_create_room_invalid_400(server, body):
    alice = await register(server.http_url, "alice")
    async with http(server.http_url) as h:
        r = await h.post("/api/rooms", json=body, headers=auth(alice))
    _is_error(r, 400, "bad_request")


async def test_list_rooms(server):
    alice = await register(server.http_url, "alice")
    bob = await register(server.http_url, "bob")
    carol = await register(server.http_url, "carol")
    async with http(server.http_url) as h:
        assert (await h.post("/api/rooms", json={"name": "apriv", "private": True}, headers=auth(alice))).status_code == 201
        assert (await h.post("/api/rooms", json={"name": "pub"}, headers=auth(carol))).status_code == 201
    async with server.connect(alice) as a, server.connect(bob) as b:
        await a.join("general")
        await b.join("general")
        await a.send_message("general", "one")
        await a.send_message("general", "two")
        await a.dm("bob", "hi")
    async with http(server.http_url) as h:
        r = await h.get("/api/rooms", headers=auth(alice))
        assert r.status_code == 200
        body = r.json()
        assert set(body) == {"rooms"}
        rooms = {x["name"]: x for x in body["rooms"]}
        for x in body["rooms"]:
            assert set(x) == {"name", "private", "seq", "members"}, x
        assert rooms["general"] == {"name": "general", "private": False, "seq": 2, "members": 2}
        assert rooms["pub"] == {"name": "pub", "private": False, "seq": 0, "members": 1}  # owner counts
        assert rooms["apriv"] == {"name": "apriv", "private": True, "seq": 0, "members": 1}
        assert rooms["dm:alice:bob"]["seq"] == 1
        names_c = {x["name"] for x in (await h.get("/api/rooms", headers=auth(carol))).json()["rooms"]}
        assert {"general", "pub"} <= names_c
        assert "apriv" not in names_c and "dm:alice:bob" not in names_c


async def test_add_member_204_403_404(server):
    alice = await register(server.http_url, "alice")
    bob = await register(server.http_url, "bob")
    await register(server.http_url, "carol")
    async with http(server.http_url) as h:
        assert (await h.post("/api/rooms", json={"name": "p", "private": True}, headers=auth(alice))).status_code == 201
        r = await h.post("/api/rooms/p/members", json={"user": "bob"}, headers=auth(alice))
        assert r.status_code == 204
        _is_error(await h.post("/api/rooms/p/members", json={"user": "carol"}, headers=auth(bob)), 403, "forbidden")
        _is_error(await h.post("/api/rooms/p/members", json={"user": "nobody"}, headers=auth(alice)), 404, "not_found")
        _is_error(await h.post("/api/rooms/p/members", json={}, headers=auth(alice)), 400, "bad_request")


# --------------------------------------------------------------------------- messages


async def test_get_messages_same_body_as_history(server):
    alice = await register(server.http_url, "alice")
    async with server.connect(alice) as a:
        await a.join("general")
        for i in range(5):
            await a.send_message("general", f"t{i}", meta={"i": i} if i % 2 else None)
        ws_page = await a.history("general", before=5, limit=2)
    async with http(server.http_url) as h:
        r = await h.get("/api/rooms/general/messages", params={"before": 5, "limit": 2}, headers=auth(alice))
    assert r.status_code == 200
    body = r.json()
    assert body["messages"] == ws_page["messages"] and body["more"] == ws_page["more"] is True
    assert body["room"] == "general"
    assert set(body) - {"type"} == {"room", "messages", "more"}


async def test_get_messages_public_room_without_join(server):
    alice = await register(server.http_url, "alice")
    bob = await register(server.http_url, "bob")
    async with server.connect(alice) as a:
        await a.join("general")
        await a.send_message("general", "t")
    async with http(server.http_url) as h:
        r = await h.get("/api/rooms/general/messages", headers=auth(bob))
    assert r.status_code == 200 and [m["text"] for m in r.json()["messages"]] == ["t"]


async def test_post_message_201_then_same_id_200(server):
    alice = await register(server.http_url, "alice")
    bob = await register(server.http_url, "bob")
    async with server.connect(bob) as b:
        await b.join("general")
        async with http(server.http_url) as h:
            r = await h.post("/api/rooms/general/messages", json={"id": "h1", "text": "over http"}, headers=auth(alice))
            assert r.status_code == 201, r.text
            body = r.json()
            assert set(body) == {"seq", "ts"} and body["seq"] == 1 and isinstance(body["ts"], int)
            msg = await b.expect("message")
            assert msg == {
                "type": "message", "room": "general", "seq": 1, "id": "h1",
                "from": "alice", "text": "over http", "ts": body["ts"],
            }
            again = await h.post("/api/rooms/general/messages", json={"id": "h1", "text": "over http"}, headers=auth(alice))
            assert again.status_code == 200 and again.json() == body
            await b.assert_silent(0.5)
            r = await h.post(
                "/api/rooms/general/messages", json={"id": "h2", "text": "m", "meta": {"x": 1}}, headers=auth(alice)
            )
            assert r.status_code == 201 and r.json()["seq"] == 2
            assert (await b.expect("message"))["meta"] == {"x": 1}


async def test_post_message_same_id_as_ws_send_is_duplicate(server):
    alice = await register(server.http_url, "alice")
    async with server.connect(alice) as a:
        await a.join("general")
        ack = await a.send_message("general", "ws", id="both")
    async with http(server.http_url) as h:
        r = await h.post("/api/rooms/general/messages", json={"id": "both", "text": "ws"}, headers=auth(alice))
    assert r.status_code == 200 and r.json() == {"seq": ack["seq"], "ts": ack["ts"]}


async def test_post_message_creates_public_room(server):
    alice = await register(server.http_url, "alice")
    async with http(server.http_url) as h:
        r = await h.post("/api/rooms/brandnew/messages", json={"id": "1", "text": "first"}, headers=auth(alice))
        assert r.status_code == 201 and r.json()["seq"] == 1
        rooms = {x["name"]: x for x in (await h.get("/api/rooms", headers=auth(alice))).json()["rooms"]}
        assert rooms["brandnew"]["private"] is False and rooms["brandnew"]["seq"] == 1


async def test_post_message_moves_sender_cursor(server):
    alice = await register(server.http_url, "alice")
    async with server.connect(alice) as a:
        await a.join("general")
    async with http(server.http_url) as h:
        r = await h.post("/api/rooms/general/messages", json={"id": "1", "text": "x"}, headers=auth(alice))
        assert r.status_code == 201
    async with server.connect(alice) as a:
        assert {"room": "general", "seq": 1, "read": 1} in a.welcome["rooms"]


@pytest.mark.parametrize(
    "body, status, code",
    [
        ({"text": "no id"}, 400, "bad_request"),
        ({"id": "1"}, 400, "bad_request"),
        ({"id": "1", "text": ""}, 400, "bad_request"),
        ({"id": "", "text": "x"}, 400, "bad_request"),
        ({"id": "x" * 65, "text": "x"}, 400, "bad_request"),
        ({"id": "1", "text": "x", "meta": [1]}, 400, "bad_request"),
        ({"id": "1", "text": "x" * 4001}, 413, "too_large"),
        ({"id": "1", "text": "x", "meta": {"k": "v" * 1100}}, 413, "too_large"),
    ],
)
async def test_post_message_invalid(server, body, status, code):
    alice = await register(server.http_url, "alice")
    async with http(server.http_url) as h:
        r = await h.post("/api/rooms/general/messages", json=body, headers=auth(alice))
    _is_error(r, status, code)


async def test_post_message_bad_room_name_400(server):
    alice = await register(server.http_url, "alice")
    async with http(server.http_url) as h:
        r = await h.post("/api/rooms/bad%20room/messages", json={"id": "1", "text": "x"}, headers=auth(alice))
    _is_error(r, 400, "bad_request")


class TestApiKey:
    @pytest.fixture
    def server_overrides(self):
        return {"api_key": API_KEY, "rate_per_second": 1, "rate_burst": 2}

    async def test_post_message_as_system_with_api_key(self, server):
        bob = await register(server.http_url, "bob")
        async with server.connect(bob) as b:
            await b.join("general")
            async with http(server.http_url) as h:
                r = await h.post("/api/rooms/general/messages", json={"id": "s1", "text": "maintenance"},
                                 headers={"X-Api-Key": API_KEY})
                assert r.status_code == 201, r.text
            msg = await b.expect("message")
            assert msg["from"] == "system" and msg["text"] == "maintenance" and msg["seq"] == r.json()["seq"]

    async def test_api_key_with_bearer_publishes_as_system(self, server):
        alice = await register(server.http_url, "alice")
        async with http(server.http_url) as h:
            r = await h.post("/api/rooms/general/messages", json={"id": "s1", "text": "x"},
                             headers={"X-Api-Key": API_KEY, **auth(alice)})
            assert r.status_code == 201
            page = (await h.get("/api/rooms/general/messages", headers=auth(alice))).json()
        assert page["messages"][0]["from"] == "system"

    async def test_wrong_api_key_401_even_with_bearer(self, server):
        alice = await register(server.http_url, "alice")
        async with http(server.http_url) as h:
            r = await h.post("/api/rooms/general/messages", json={"id": "1", "text": "x"},
                             headers={"X-Api-Key": "wrong", **auth(alice)})
            _is_error(r, 401, "unauthorized")
            r = await h.post("/api/rooms/general/messages", json={"id": "1", "text": "x"},
                             headers={"X-Api-Key": "wrong"})
            _is_error(r, 401, "unauthorized")
            page = (await h.get("/api/rooms/general/messages", headers=auth(alice)))
            assert page.status_code in (200, 404)
            if page.status_code == 200:
                assert page.json()["messages"] == []

    async def test_api_key_publishes_not_rate_limited(self, server):
        async with http(server.http_url) as h:
            for i in range(8):
                r = await h.post("/api/rooms/general/messages", json={"id": f"s{i}", "text": "x"},
                                 headers={"X-Api-Key": API_KEY})
                assert r.status_code == 201, (i, r.text)

    async def test_user_publishes_rate_limited_429(self, server):
        alice = await register(server.http_url, "alice")
        statuses = []
        async with http(server.http_url) as h:
            for i in range(6):
                r = await h.post("/api/rooms/general/messages", json={"id": f"u{i}", "text": "x"}, headers=auth(alice))
                statuses.append(r.status_code)
                if r.status_code == 429:
                    _is_error(r, 429, "rate_limited")
            assert statuses[:2] == [201, 201]
            assert 429 in statuses
            stored = (await h.get("/api/rooms/general/messages", headers=auth(alice))).json()["messages"]
        assert len(stored) == statuses.count(201)

    async def test_api_key_does_not_authenticate_other_endpoints_as_user(self, server):
        """Only publishing takes the key; the user endpoints still want a bearer."""
        async with http(server.http_url) as h:
            r = await h.get("/api/rooms", headers={"X-Api-Key": API_KEY})
        assert r.status_code == 401


async def test_api_key_unset_no_key_accepted(server):
    alice = await register(server.http_url, "alice")
    async with http(server.http_url) as h:
        r = await h.post("/api/rooms/general/messages", json={"id": "1", "text": "x"}, headers={"X-Api-Key": "anything"})
        _is_error(r, 401, "unauthorized")
        r = await h.post("/api/rooms/general/messages", json={"id": "1", "text": "x"},
                         headers={"X-Api-Key": "anything", **auth(alice)})
        _is_error(r, 401, "unauthorized")


# --------------------------------------------------------------------------- presence


async def test_presence_endpoint(server):
    alice = await register(server.http_url, "alice")
    bob = await register(server.http_url, "bob")
    async with server.connect(alice) as a1, server.connect(alice) as a2:
        await a1.join("general")
        await a2.join("general")
        async with http(server.http_url) as h:
            r = await h.get("/api/rooms/general/presence", headers=auth(bob))
        assert r.status_code == 200
        assert r.json()["members"] == [{"user": "alice", "connections": 2}]


# --------------------------------------------------------------------------- ops endpoints


async def test_healthz(server):
    async with http(server.http_url) as h:
        r = await h.get("/healthz")
    assert r.status_code == 200 and r.json() == {"status": "ok"}


async def test_info_tells_a_browser_where_to_connect(server):
    """GET /api/info (no auth): the server name, a ws_url a client can really open, the limits."""
    node = server.nodes[0]      # the URL names the WebSocket port of the node that answers
    async with http(node.http_url) as h:
        r = await h.get("/api/info")
    assert r.status_code == 200, r.text
    body = r.json()
    assert set(body) == {"server", "ws_url", "limits"}
    assert body["server"].startswith("chat-actors/")
    assert body["limits"] == {"max_frame_bytes": 65536, "max_text_chars": 4000,
                              "rate_per_second": 20, "rate_burst": 40}
    # built from the Host the request used and the WebSocket listener's real port
    assert body["ws_url"] == node.ws_url
    alice = await register(server.http_url, "alice")
    async with connect(body["ws_url"], alice) as conn:
        assert conn.welcome["server"] == body["server"]


@pytest.mark.parametrize(
    ("host", "expected_host"),
    [("localhost:3001", "localhost"), ("[::1]:3001", "[::1]"), ("chat.example.com", "chat.example.com"),
     ("bad host/<x>", "127.0.0.1")],
)
async def test_info_ws_url_follows_the_request_host(server, host, expected_host):
    node = server.nodes[0]
    port = node.ws_url.rsplit(":", 1)[1].split("/")[0]
    async with http(node.http_url) as h:
        r = await h.get("/api/info", headers={"Host": host})
    assert r.status_code == 200, r.text
    assert r.json()["ws_url"] == f"ws://{expected_host}:{port}/ws"


class TestPublicWsUrl:
    @pytest.fixture
    def server_overrides(self):
        return {"public_ws_url": "wss://chat.example.com/ws"}

    async def test_info_gives_the_configured_url(self, server):
        async with http(server.http_url) as h:
            r = await h.get("/api/info", headers={"Host": "elsewhere:1"})
        assert r.json()["ws_url"] == "wss://chat.example.com/ws"


async def test_readyz(server):
    async with http(server.http_url) as h:
        r = await h.get("/readyz")
    assert r.status_code == 200
    assert r.json() == {"status": "ok", "store": "ok", "bus": "ok"}


METRIC_FAMILIES = {
    "chat_connections": "gauge",
    "chat_rooms_active": "gauge",
    "chat_messages_in": "counter",
    "chat_deliveries_out": "counter",
    "chat_evictions": "counter",
    "chat_errors": "counter",
    "chat_store_batch_size": "histogram",
    "chat_store_batch_seconds": "histogram",
    "chat_room_inbox_depth_max": "gauge",
    "chat_room_inbox_depth_total": "gauge",
}


async def test_metrics_prometheus_text(server):
    alice = await register(server.http_url, "alice")
    bob = await register(server.http_url, "bob")
    async with server.connect(alice) as a, server.connect(bob) as b:
        await a.join("general")
        await b.join("general")
        for i in range(3):
            await a.send_message("general", f"m{i}")
        await b.messages("general", 3)
        await a.send("garbage")
        await a.expect("error")
        async with http(server.http_url) as h:
            r = await h.get("/metrics")
        values = await metrics_total(server)    # per process: a cluster's nodes add up
    assert r.status_code == 200
    assert r.headers["content-type"].startswith("text/plain")
    text = r.text
    types = {}
    for line in text.splitlines():
        if line.startswith("# TYPE "):
            _, _, name, kind = line.split(" ", 3)
            types[name] = kind
            if kind == "counter" and name.endswith("_total"):
                types[name[: -len("_total")]] = kind
    for name, kind in METRIC_FAMILIES.items():
        assert types.get(name) == kind, (name, types.get(name))
    assert values["chat_connections"] == 2
    assert values["chat_messages_in_total"] == 3
    assert values["chat_deliveries_out_total"] >= 3
    assert values['chat_errors_total{code="bad_request"}'] >= 1
    assert values["chat_store_batch_size_count"] >= 1
    assert values["chat_rooms_active"] >= 1


async def test_web_client_served(server):
    async with http(server.http_url) as h:
        r = await h.get("/")
    assert r.status_code == 200
    assert r.headers["content-type"].startswith("text/html")
    assert "<html" in r.text.lower()


async def test_error_statuses_per_code(server):
    """bad_request 400, unauthorized 401, forbidden 403, not_found 404, conflict 409,
    too_large 413 (rate_limited 429 in TestApiKey)."""
    alice = await register(server.http_url, "alice")
    bob = await register(server.http_url, "bob")
    async with http(server.http_url) as h:
        _is_error(await h.post("/api/rooms", json={"name": "bad room"}, headers=auth(alice)), 400, "bad_request")
        _is_error(await h.get("/api/rooms"), 401, "unauthorized")
        assert (await h.post("/api/rooms", json={"name": "p", "private": True}, headers=auth(alice))).status_code == 201
        _is_error(await h.get("/api/rooms/p/messages", headers=auth(bob)), 403, "forbidden")
        _is_error(await h.post("/api/rooms/p/members", json={"user": "zed"}, headers=auth(alice)), 404, "not_found")
        _is_error(await h.post("/api/rooms", json={"name": "p"}, headers=auth(alice)), 409, "conflict")
        _is_error(
            await h.post("/api/rooms/p/messages", json={"id": "1", "text": "x" * 4001}, headers=auth(alice)),
            413, "too_large",
        )


async def test_unknown_path_404_json_error(server):
    async with http(server.http_url) as h:
        r = await h.get("/api/nothing-here")
    _is_error(r, 404, "not_found")


async def test_oversized_body_413(server):
    alice = await register(server.http_url, "alice")
    async with http(server.http_url) as h:
        r = await h.post(
            "/api/rooms/general/messages", json={"id": "1", "text": "x", "pad": "y" * 200_000}, headers=auth(alice)
        )
    _is_error(r, 413, "too_large")
