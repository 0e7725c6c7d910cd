"""auth: argon2id hashing, HS256 tokens and every rejection of PROTOCOL section 2, the secret file."""

from __future__ import annotations

import base64
import json
import logging
import os
import stat
import threading
import time

import jwt
import pytest
import trio
import trio.testing
from hypothesis import given, settings
from hypothesis import strategies as st

from chat_actors.auth import (
    USERNAME_RE,
    Claims,
    HasherBusy,
    PasswordHasher,
    TokenIssuer,
    is_valid_username,
    load_or_create_secret,
    validate_password,
    validate_username,
)
from chat_actors.config import Config, ConfigError
from chat_actors.errors import ErrorCode, ProtocolError, Unauthorized

SECRET = "test-secret-0123456789-abcdefghijklmnop-0123456789-abcdefghijklmnop"  # >= 64 bytes: HS512 too


def cheap_hasher() -> PasswordHasher:
    return PasswordHasher(time_cost=1, memory_cost_kib=1024, parallelism=1)


def now_s() -> int:
    return int(time.time())


def b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode("ascii")


def crafted(header: dict, payload: dict, signature: bytes = b"\x00" * 32) -> str:
    """A token with any header, bypassing pyjwt's encoder (for alg=none and friends)."""
    return ".".join(
        [
            b64(json.dumps(header).encode()),
            b64(json.dumps(payload).encode()),
            b64(signature),
        ]
    )


def valid_payload(**overrides) -> dict:
    payload = {"sub": "alice", "iat": now_s(), "exp": now_s() + 3600}
    payload.update(overrides)
    return {k: v for k, v in payload.items() if v is not None}


# --- passwords -------------------------------------------------------------------------


async def test_hash_verify_round_trip_and_wrong_password():
    hasher = cheap_hasher()
    encoded = await hasher.hash("correct horse battery")
    assert encoded.startswith("$argon2id$")
    assert await hasher.verify(encoded, "correct horse battery") is True
    assert await hasher.verify(encoded, "correct horse batterz") is False
    assert await hasher.verify(encoded, "") is False


async def test_default_parameters_are_argon2id_rfc9106_low_memory():
    hasher = PasswordHasher()
    encoded = await hasher.hash("password123")
    assert encoded.startswith("$argon2id$v=19$m=65536,t=3,p=4$")
    assert await hasher.verify(encoded, "password123")
    assert not hasher.needs_rehash(encoded)
    assert cheap_hasher().needs_rehash(encoded)


async def test_same_password_hashes_differently():
    hasher = cheap_hasher()
    assert await hasher.hash("password123") != await hasher.hash("password123")


async def test_verify_never_raises_for_bad_input():
    hasher = cheap_hasher()
    assert await hasher.verify("not a hash", "password123") is False
    assert (
        await hasher.verify("$argon2id$v=19$m=1024,t=1,p=1$garbage", "password123")
        is False
    )
    assert await hasher.verify(None, "password123") is False  # unknown user, same cost
    encoded = await hasher.hash("password123")
    assert await hasher.verify(encoded, "x" * 10_000) is False
    assert await hasher.verify(encoded, "\ud800lone surrogate") is False


async def test_many_concurrent_hashes_complete_behind_the_limiter():
    hasher = PasswordHasher(
        time_cost=1, memory_cost_kib=1024, parallelism=1, max_concurrent=2
    )
    results: list[bool] = []

    async def login(i: int) -> None:
        encoded = await hasher.hash(f"password-{i}")
        results.append(await hasher.verify(encoded, f"password-{i}"))

    async with trio.open_nursery() as nursery:
        for i in range(20):
            nursery.start_soon(login, i)
    assert results == [True] * 20


async def test_cancelled_before_start_raises_cancelled():
    hasher = cheap_hasher()
    with trio.CancelScope() as scope:
        scope.cancel()
        await hasher.hash("password123")
    assert scope.cancelled_caught


# --- the hasher's queue bound (CHAT_AUTH_QUEUE) ---------------------------------------


async def test_queue_admits_queue_size_calls_and_refuses_the_rest_at_once():
    """10 calls start together: `queue_size` are admitted (hashing or waiting for a thread),
    the others are refused before any hash runs, with a Retry-After estimate of >= 1 s."""
    hasher = PasswordHasher(
        time_cost=1, memory_cost_kib=1024, parallelism=1, max_concurrent=1, queue_size=3
    )
    outcomes: list[object] = []

    async def one(i: int) -> None:
        try:
            outcomes.append(await hasher.verify(None, f"password-{i}"))
        except HasherBusy as exc:
            assert exc.code is ErrorCode.RATE_LIMITED
            outcomes.append(exc.retry_after_s)

    async with trio.open_nursery() as nursery:
        for i in range(10):
            nursery.start_soon(one, i)
    assert outcomes.count(False) == 3  # the admitted ones ran (and failed to match)
    refused = [o for o in outcomes if o is not False]
    assert len(refused) == 7
    assert all(type(r) is int and r >= 1 for r in refused), refused
    assert hasher.admitted == 0
    assert await hasher.verify(await hasher.hash("password123"), "password123")


async def test_hash_and_verify_share_the_queue():
    hasher = PasswordHasher(
        time_cost=1, memory_cost_kib=1024, parallelism=1, max_concurrent=2, queue_size=2
    )
    encoded = await hasher.hash("password123")
    results: list[str] = []

    async def hash_one() -> None:
        try:
            await hasher.hash("password123")
            results.append("hashed")
        except HasherBusy:
            results.append("busy")

    async def verify_one() -> None:
        try:
            await hasher.verify(encoded, "password123")
            results.append("verified")
        except HasherBusy:
            results.append("busy")

    async with trio.open_nursery() as nursery:
        nursery.start_soon(hash_one)
        nursery.start_soon(verify_one)
        nursery.start_soon(hash_one)
        nursery.start_soon(verify_one)
    assert results.count("busy") == 2


class _BlockingArgon:
    """Stands in for argon2 so a hash stays "running" until the test says (no timing)."""

    def __init__(self) -> None:
        self.release = threading.Event()

    def hash(self, password: str) -> str:
        assert self.release.wait(30)
        return "$argon2id$stand-in"


async def test_cancelled_calls_free_their_place_in_the_queue():
    hasher = PasswordHasher(max_concurrent=1, queue_size=2)
    blocking = hasher._hasher = _BlockingArgon()  # type: ignore[assignment]
    async with trio.open_nursery() as nursery:
        for i in range(2):  # one hashing in its thread, one waiting for the limiter
            nursery.start_soon(hasher.hash, f"password-{i}")
        await trio.testing.wait_all_tasks_blocked()
        assert hasher.admitted == 2
        with pytest.raises(HasherBusy) as info:
            await hasher.hash("one-too-many")
        assert info.value.retry_after_s >= 1
        nursery.cancel_scope.cancel()  # the waiter leaves at once, the running hash when done
        blocking.release.set()
    assert hasher.admitted == 0
    assert await hasher.hash("password123") == "$argon2id$stand-in"


async def test_calls_needing_no_hash_are_never_refused():
    hasher = PasswordHasher(max_concurrent=1, queue_size=1)
    blocking = hasher._hasher = _BlockingArgon()  # type: ignore[assignment]
    async with trio.open_nursery() as nursery:
        nursery.start_soon(hasher.hash, "password-x")
        await trio.testing.wait_all_tasks_blocked()
        assert hasher.admitted == 1
        assert await hasher.verify("$argon2id$x", "x" * 10_000) is False  # over-long: no hash
        assert await hasher.verify("$argon2id$x", "\ud800") is False  # not text: no hash
        blocking.release.set()


def test_queue_parameters_must_be_positive():
    with pytest.raises(ValueError):
        PasswordHasher(queue_size=0)
    with pytest.raises(ValueError):
        PasswordHasher(max_concurrent=0)


# --- usernames and passwords -------------------------------------------------------------


@pytest.mark.parametrize(
    "name", ["abc", "alice", "a.b-c_1", "A" * 32, "Bob", "systemd", "my.system"]
)
def test_valid_usernames(name):
    validate_username(name)
    assert is_valid_username(name)
    assert USERNAME_RE.match(name)


@pytest.mark.parametrize(
    "name",
    ["ab", "A" * 33, "", "al ice", "alice\n", "ålice", "al:ice", "al/ice", "dm:a:b"],
)
def test_invalid_usernames(name):
    with pytest.raises(ProtocolError) as info:
        validate_username(name)
    assert info.value.code is ErrorCode.BAD_REQUEST
    assert "3 to 32" in info.value.message
    assert not is_valid_username(name)


@pytest.mark.parametrize("name", ["system", "System", "SYSTEM", "sYsTeM"])
def test_system_is_reserved_in_any_case(name):
    with pytest.raises(ProtocolError, match="reserved"):
        validate_username(name)
    assert not is_valid_username(name)


def test_username_must_be_a_string():
    with pytest.raises(ProtocolError, match="string"):
        validate_username(123)


@pytest.mark.parametrize("pw", ["12345678", "x" * 256, "pässwörd", "🔑" * 8])
def test_valid_passwords(pw):
    validate_password(pw)


@pytest.mark.parametrize("pw", ["1234567", "", "x" * 257])
def test_password_length_bounds(pw):
    with pytest.raises(ProtocolError, match="8 to 256"):
        validate_password(pw)


def test_password_must_be_text():
    with pytest.raises(ProtocolError, match="string"):
        validate_password(None)
    with pytest.raises(ProtocolError, match="Unicode"):
        validate_password("\ud800" * 8)


# --- tokens ------------------------------------------------------------------------------


def test_token_round_trip():
    issuer = TokenIssuer(SECRET, ttl_s=86400)
    now_ms = int(time.time() * 1000)
    token, expires_at = issuer.issue("alice", now_ms=now_ms)
    claims = issuer.decode(token)
    assert claims == Claims(user="alice", exp_ms=expires_at)
    assert now_ms + 86400_000 - 1000 < expires_at <= now_ms + 86400_000
    assert expires_at % 1000 == 0
    payload = jwt.decode(token, SECRET, algorithms=["HS256"])
    assert payload["sub"] == "alice"
    assert payload["exp"] * 1000 == expires_at
    assert payload["iat"] == now_ms // 1000
    assert jwt.get_unverified_header(token)["alg"] == "HS256"


def test_issue_without_now_uses_the_clock():
    issuer = TokenIssuer(SECRET, ttl_s=60)
    before = int(time.time() * 1000)
    _, expires_at = issuer.issue("alice")
    assert before + 59_000 <= expires_at <= int(time.time() * 1000) + 60_000


def test_token_from_another_secret_shares_nothing():
    a = TokenIssuer(SECRET, 60)
    b = TokenIssuer(SECRET + "-other", 60)
    token, _ = a.issue("alice")
    with pytest.raises(Unauthorized, match="signature"):
        b.decode(token)


def assert_rejected(token, needle: str) -> None:
    issuer = TokenIssuer(SECRET, 3600)
    with pytest.raises(Unauthorized) as info:
        issuer.decode(token)
    assert info.value.code is ErrorCode.UNAUTHORIZED
    assert needle in info.value.message, info.value.message


def test_alg_none_is_rejected():
    assert_rejected(
        crafted({"alg": "none", "typ": "JWT"}, valid_payload(), b""), "algorithm"
    )
    assert_rejected(crafted({"alg": "None"}, valid_payload(), b""), "algorithm")


def test_missing_alg_is_rejected():
    assert_rejected(crafted({"typ": "JWT"}, valid_payload()), "algorithm")


def test_hs512_with_the_right_secret_is_rejected():
    token = jwt.encode(valid_payload(), SECRET, algorithm="HS512")
    assert_rejected(token, "algorithm")


@pytest.mark.parametrize("alg", ["RS256", "ES256", "PS256", "HS384", "EdDSA"])
def test_other_algorithms_are_rejected(alg):
    assert_rejected(
        crafted({"alg": alg, "typ": "JWT"}, valid_payload(), b"\x01" * 64), "algorithm"
    )


def test_wrong_signature_is_rejected():
    token = jwt.encode(
        valid_payload(), "another-secret-0123456789-abcdefghij", algorithm="HS256"
    )
    assert_rejected(token, "signature")


def test_tampered_payload_is_rejected():
    token = jwt.encode(valid_payload(), SECRET, algorithm="HS256")
    header, _, signature = token.split(".")
    forged = b64(json.dumps(valid_payload(sub="mallory")).encode())
    assert_rejected(f"{header}.{forged}.{signature}", "signature")


def test_missing_exp_is_rejected():
    token = jwt.encode(valid_payload(exp=None), SECRET, algorithm="HS256")
    assert_rejected(token, "'exp'")


def test_missing_sub_and_iat_are_rejected():
    assert_rejected(
        jwt.encode(valid_payload(sub=None), SECRET, algorithm="HS256"), "'sub'"
    )
    assert_rejected(
        jwt.encode(valid_payload(iat=None), SECRET, algorithm="HS256"), "'iat'"
    )


def test_expired_token_is_rejected():
    issuer = TokenIssuer(SECRET, 3600)
    token, _ = issuer.issue("alice", now_ms=(now_s() - 7200) * 1000)
    assert_rejected(token, "expired")


def test_expired_by_one_second_is_rejected():
    token = jwt.encode(valid_payload(exp=now_s() - 1), SECRET, algorithm="HS256")
    assert_rejected(token, "expired")


def test_nbf_in_the_future_is_rejected():
    token = jwt.encode(valid_payload(nbf=now_s() + 600), SECRET, algorithm="HS256")
    assert_rejected(token, "nbf")


def test_nbf_in_the_past_is_honoured():
    issuer = TokenIssuer(SECRET, 3600)
    token = jwt.encode(valid_payload(nbf=now_s() - 10), SECRET, algorithm="HS256")
    assert issuer.decode(token).user == "alice"


@pytest.mark.parametrize(
    "token",
    [
        "",
        "garbage",
        "a.b",
        "a.b.c",
        "...",
        "eyJhbGciOiJIUzI1NiJ9.e30",
        "\x00\xff",
        "é.é.é",
    ],
)
def test_garbage_is_rejected(token):
    assert_rejected(token, "malformed")


def test_non_object_header_or_payload_is_rejected():
    assert_rejected(b64(b"[1]") + "." + b64(b"{}") + "." + b64(b"x"), "malformed")
    token = jwt.encode(valid_payload(), SECRET, algorithm="HS256")
    header = token.split(".")[0]
    import hashlib
    import hmac

    body = b64(b"[1,2]")
    sig = b64(
        hmac.new(SECRET.encode(), f"{header}.{body}".encode(), hashlib.sha256).digest()
    )
    assert_rejected(f"{header}.{body}.{sig}", "malformed")


def test_non_string_token_is_rejected():
    assert_rejected(None, "malformed")
    assert_rejected(b"bytes", "malformed")


def test_bad_claim_types_are_rejected():
    assert_rejected(
        jwt.encode(valid_payload(exp="soon"), SECRET, algorithm="HS256"), "malformed"
    )
    assert_rejected(
        jwt.encode(valid_payload(iat="now"), SECRET, algorithm="HS256"), "malformed"
    )
    assert_rejected(
        jwt.encode(valid_payload(sub=42), SECRET, algorithm="HS256"), "invalid token"
    )
    assert_rejected(
        jwt.encode(valid_payload(sub="system"), SECRET, algorithm="HS256"), "subject"
    )
    assert_rejected(
        jwt.encode(valid_payload(sub="a b"), SECRET, algorithm="HS256"), "subject"
    )


def signed_raw(payload_json: str, secret: str = SECRET) -> str:
    """An HS256 token whose payload is exactly `payload_json` (numbers pyjwt could not write)."""
    import hashlib
    import hmac

    header = b64(json.dumps({"alg": "HS256", "typ": "JWT"}).encode())
    body = b64(payload_json.encode())
    sig = b64(hmac.new(secret.encode(), f"{header}.{body}".encode(), hashlib.sha256).digest())
    return f"{header}.{body}.{sig}"


FAR = now_s() + 3600


@pytest.mark.parametrize(
    "claims",
    [
        f'"exp":{10**400},"iat":{now_s()}',
        f'"exp":{"9" * 5000},"iat":{now_s()}',
        f'"exp":1e400,"iat":{now_s()}',
        f'"exp":{2**53},"iat":{now_s()}',
        f'"exp":"{FAR}","iat":{now_s()}',
        f'"exp":{FAR}.0,"iat":{now_s()}',
        f'"exp":{FAR}.5,"iat":{now_s()}',
        f'"exp":true,"iat":{now_s()}',
        f'"exp":{FAR},"iat":"{now_s()}"',
        f'"exp":{FAR},"iat":{now_s()}.5',
        f'"exp":{FAR},"iat":{-(2**53)}',
        f'"exp":{FAR},"iat":{10**400}',
        f'"exp":{FAR},"iat":{now_s()},"nbf":"0"',
        f'"exp":{FAR},"iat":{now_s()},"nbf":1.5',
        f'"exp":{FAR},"iat":{now_s()},"nbf":{-(10**400)}',
        f'"exp":{FAR},"iat":{now_s()},"nbf":false',
        f'"exp":{FAR},"iat":{now_s()},"nbf":null',
    ],
    ids=[
        "exp-10^400", "exp-5000-digits", "exp-1e400", "exp-2^53", "exp-string", "exp-float",
        "exp-fraction", "exp-bool", "iat-string", "iat-fraction", "iat-minus-2^53", "iat-10^400",
        "nbf-string", "nbf-fraction", "nbf-minus-10^400", "nbf-bool", "nbf-null",
    ],
)
def test_time_claims_must_be_safe_json_integers(claims):
    """PROTOCOL section 2: an exp, nbf or iat that is not a JSON integer within +-(2**53-1)."""
    assert_rejected(signed_raw('{"sub":"alice",%s}' % claims), "")  # refused, whatever the wording


def test_time_claims_at_the_edge_of_the_range_are_accepted():
    issuer = TokenIssuer(SECRET, 3600)
    claims = issuer.decode(signed_raw(
        '{"sub":"alice","exp":%d,"iat":%d,"nbf":%d}' % (2**53 - 1, -(2**53 - 1), now_s() - 5)
    ))
    assert claims == Claims(user="alice", exp_ms=(2**53 - 1) * 1000)


@settings(max_examples=300, deadline=None)
@given(
    st.one_of(
        st.text(), st.text(alphabet="abcdefghijklmnopqrstuvwxyz.-_ABC0123456789=")
    )
)
def test_any_text_is_claims_or_unauthorized(text):
    issuer = TokenIssuer(SECRET, 3600)
    try:
        issuer.decode(text)
    except Unauthorized:
        pass


def test_short_secret_warns_once_at_construction(caplog, recwarn):
    with caplog.at_level(logging.WARNING, logger="chat_actors.auth"):
        issuer = TokenIssuer("short", 60)
        token, _ = issuer.issue("alice")
        assert issuer.decode(token).user == "alice"
    assert (
        len([r for r in caplog.records if "shorter than 32 bytes" in r.getMessage()])
        == 1
    )
    assert not [
        w for w in recwarn if issubclass(w.category, jwt.InsecureKeyLengthWarning)
    ]


def test_issuer_rejects_unusable_arguments():
    with pytest.raises(ValueError):
        TokenIssuer("", 60)
    with pytest.raises(ValueError):
        TokenIssuer(SECRET, 0)


# --- the signing secret ------------------------------------------------------------------


def secret_warnings(caplog) -> list[logging.LogRecord]:
    return [
        r
        for r in caplog.records
        if r.levelno == logging.WARNING
        and "generated a new JWT secret" in r.getMessage()
    ]


def test_secret_generated_once_with_mode_0600_and_reused(tmp_path, caplog):
    data_dir = tmp_path / "nested" / "data"
    config = Config(data_dir=str(data_dir))
    with caplog.at_level(logging.WARNING, logger="chat_actors.auth"):
        first = load_or_create_secret(config)
        second = load_or_create_secret(config)
    path = data_dir / "jwt_secret"
    assert first == second
    assert len(first) >= 43  # 32 random bytes, URL-safe base64
    assert path.read_text().strip() == first
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    warned = secret_warnings(caplog)
    assert len(warned) == 1
    message = warned[0].getMessage()
    assert (
        str(path) in message and "CHAT_JWT_SECRET" in message and first not in message
    )
    assert sorted(p.name for p in data_dir.iterdir()) == [
        "jwt_secret"
    ]  # no temp files left


def test_generated_secret_signs_tokens(tmp_path):
    secret = load_or_create_secret(Config(data_dir=str(tmp_path)))
    issuer = TokenIssuer(secret, 60)
    token, _ = issuer.issue("alice")
    assert (
        TokenIssuer(load_or_create_secret(Config(data_dir=str(tmp_path))), 60)
        .decode(token)
        .user
        == "alice"
    )


def test_configured_secret_wins(tmp_path, caplog):
    (tmp_path / "jwt_secret").write_text("from-file\n")
    config = Config(
        data_dir=str(tmp_path / "other"), jwt_secret="from-env-0123456789-0123456789-01"
    )
    with caplog.at_level(logging.WARNING, logger="chat_actors.auth"):
        assert load_or_create_secret(config) == "from-env-0123456789-0123456789-01"
    assert not (tmp_path / "other").exists()
    assert not secret_warnings(caplog)
    config = Config(
        data_dir=str(tmp_path), jwt_secret="from-env-0123456789-0123456789-01"
    )
    assert load_or_create_secret(config) == "from-env-0123456789-0123456789-01"


def test_existing_secret_file_is_used(tmp_path, caplog):
    path = tmp_path / "jwt_secret"
    path.write_text("kept-secret\n")
    os.chmod(path, 0o600)
    with caplog.at_level(logging.WARNING, logger="chat_actors.auth"):
        assert load_or_create_secret(Config(data_dir=str(tmp_path))) == "kept-secret"
    assert not caplog.records


def test_world_readable_secret_file_warns(tmp_path, caplog):
    path = tmp_path / "jwt_secret"
    path.write_text("kept-secret\n")
    os.chmod(path, 0o644)
    with caplog.at_level(logging.WARNING, logger="chat_actors.auth"):
        assert load_or_create_secret(Config(data_dir=str(tmp_path))) == "kept-secret"
    assert any("chmod 600" in r.getMessage() for r in caplog.records)


def test_empty_secret_file_is_a_config_error(tmp_path):
    (tmp_path / "jwt_secret").write_text("\n")
    with pytest.raises(ConfigError, match="empty"):
        load_or_create_secret(Config(data_dir=str(tmp_path)))


def test_unwritable_data_dir_is_a_config_error(tmp_path):
    blocker = tmp_path / "file"
    blocker.write_text("not a directory")
    with pytest.raises(ConfigError, match="CHAT_JWT_SECRET"):
        load_or_create_secret(Config(data_dir=str(blocker / "data")))
