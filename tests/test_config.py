"""Config: defaults of PROTOCOL section 1, precedence flags > env > file > defaults, parsing."""

from __future__ import annotations

import attrs
import pytest

from chat_actors.config import ENV_VARS, FLAGS, HELP, Config, ConfigError, load_config


def write(tmp_path, text: str) -> str:
    path = tmp_path / "chat.toml"
    path.write_text(text, encoding="utf-8")
    return str(path)


def test_defaults_are_the_protocol_defaults():
    c = load_config({}, {}, None)
    assert c == Config()
    assert (c.ws_host, c.ws_port) == ("127.0.0.1", 8301)
    assert (c.http_host, c.http_port) == ("127.0.0.1", 3001)
    assert c.store == "sqlite:///data/chat.db"
    assert c.bus == "local://"
    assert c.data_dir == "data"
    assert c.jwt_secret is None
    assert c.heartbeat_s == 30
    assert c.max_frame_bytes == 65536
    assert c.max_text_chars == 4000
    assert c.rate_per_second == 20
    assert c.rate_burst == 40
    assert c.presence_grace_s == 5
    assert c.token_ttl_s == 86400
    assert c.send_queue_bytes == 1048576
    assert c.graceful_timeout_s == 10
    assert c.api_key is None
    assert c.allowed_origins == ()
    assert c.room_inbox_size == 1024
    assert c.room_idle_s == 30
    assert c.handshake_timeout_s == 10
    assert c.auth_timeout_s == 10
    assert (c.auth_queue, c.max_connections_per_user, c.max_rooms_per_user) == (32, 100, 1000)
    assert c.log_level == "INFO"


def test_every_field_has_env_var_flag_and_help():
    names = [a.name for a in attrs.fields(Config)]
    assert list(ENV_VARS) == names == list(FLAGS) == list(HELP)
    assert all(env.startswith("CHAT_") for env in ENV_VARS.values())
    assert all(flag.startswith("--") for flag in FLAGS.values())
    assert all(HELP[n] for n in names)
    assert len(set(ENV_VARS.values())) == len(names)


def test_env_names_of_the_interface_agreement():
    expected = {
        "ws_host": "CHAT_WS_HOST",
        "ws_port": "CHAT_WS_PORT",
        "http_host": "CHAT_HTTP_HOST",
        "http_port": "CHAT_HTTP_PORT",
        "store": "CHAT_STORE",
        "bus": "CHAT_BUS",
        "node_id": "CHAT_NODE_ID",
        "node_lease_s": "CHAT_NODE_LEASE",
        "data_dir": "CHAT_DATA_DIR",
        "jwt_secret": "CHAT_JWT_SECRET",
        "heartbeat_s": "CHAT_HEARTBEAT",
        "max_frame_bytes": "CHAT_MAX_FRAME_BYTES",
        "max_text_chars": "CHAT_MAX_TEXT_CHARS",
        "rate_per_second": "CHAT_RATE_PER_SECOND",
        "rate_burst": "CHAT_RATE_BURST",
        "presence_grace_s": "CHAT_PRESENCE_GRACE",
        "token_ttl_s": "CHAT_TOKEN_TTL",
        "send_queue_bytes": "CHAT_SEND_QUEUE_BYTES",
        "graceful_timeout_s": "CHAT_GRACEFUL_TIMEOUT",
        "api_key": "CHAT_API_KEY",
        "allowed_origins": "CHAT_ALLOWED_ORIGINS",
        "public_ws_url": "CHAT_PUBLIC_WS_URL",
        "room_inbox_size": "CHAT_ROOM_INBOX_SIZE",
        "room_idle_s": "CHAT_ROOM_IDLE",
        "log_level": "CHAT_LOG_LEVEL",
    }
    for field, env in expected.items():
        assert ENV_VARS[field] == env


def test_precedence_flags_over_env_over_file_over_defaults(tmp_path):
    path = write(
        tmp_path,
        'ws_port = 1111\nhttp_port = 2222\nheartbeat_s = 12\nstore = "memory://"\n',
    )
    env = {"CHAT_WS_PORT": "3333", "CHAT_HTTP_PORT": "4444"}
    flags = {"ws_port": "5555"}
    c = load_config(flags, env, path)
    assert c.ws_port == 5555  # flag beats env and file
    assert c.http_port == 4444  # env beats file
    assert c.heartbeat_s == 12.0  # file beats default
    assert c.store == "memory://"
    assert c.max_text_chars == 4000  # default
    assert load_config({}, env, path).ws_port == 3333
    assert load_config({}, {}, path).ws_port == 1111


def test_flags_that_are_none_do_not_count():
    c = load_config({"ws_port": None}, {"CHAT_WS_PORT": "9000"}, None)
    assert c.ws_port == 9000


def test_typed_flag_values_are_accepted():
    c = load_config(
        {"ws_port": 0, "heartbeat_s": 2, "allowed_origins": ["https://a.example"]},
        {},
        None,
    )
    assert c.ws_port == 0
    assert c.heartbeat_s == 2.0 and isinstance(c.heartbeat_s, float)
    assert c.allowed_origins == ("https://a.example",)


ENV_CASES = [
    ("CHAT_WS_HOST", "0.0.0.0", "ws_host", "0.0.0.0"),
    ("CHAT_WS_PORT", "0", "ws_port", 0),
    ("CHAT_HTTP_HOST", "::1", "http_host", "::1"),
    ("CHAT_HTTP_PORT", "65535", "http_port", 65535),
    (
        "CHAT_STORE",
        "sqlite:////var/lib/chat/chat.db",
        "store",
        "sqlite:////var/lib/chat/chat.db",
    ),
    ("CHAT_BUS", "redis://127.0.0.1:6379/0", "bus", "redis://127.0.0.1:6379/0"),
    ("CHAT_DATA_DIR", "/var/lib/chat", "data_dir", "/var/lib/chat"),
    (
        "CHAT_JWT_SECRET",
        "s3cret-s3cret-s3cret-s3cret-s3cret",
        "jwt_secret",
        "s3cret-s3cret-s3cret-s3cret-s3cret",
    ),
    ("CHAT_HEARTBEAT", "5", "heartbeat_s", 5.0),
    ("CHAT_HEARTBEAT", "0.5", "heartbeat_s", 0.5),
    ("CHAT_MAX_FRAME_BYTES", "1024", "max_frame_bytes", 1024),
    ("CHAT_MAX_TEXT_CHARS", "10", "max_text_chars", 10),
    ("CHAT_RATE_PER_SECOND", "2.5", "rate_per_second", 2.5),
    ("CHAT_RATE_BURST", "3", "rate_burst", 3),
    ("CHAT_PRESENCE_GRACE", "0", "presence_grace_s", 0.0),
    ("CHAT_PRESENCE_GRACE", "0.25", "presence_grace_s", 0.25),
    ("CHAT_TOKEN_TTL", "60", "token_ttl_s", 60.0),
    ("CHAT_SEND_QUEUE_BYTES", "4096", "send_queue_bytes", 4096),
    ("CHAT_GRACEFUL_TIMEOUT", "1.5", "graceful_timeout_s", 1.5),
    ("CHAT_API_KEY", "key-123", "api_key", "key-123"),
    ("CHAT_API_KEY", "", "api_key", None),
    (
        "CHAT_ALLOWED_ORIGINS",
        "https://chat.example.com",
        "allowed_origins",
        ("https://chat.example.com",),
    ),
    ("CHAT_ALLOWED_ORIGINS", "", "allowed_origins", ()),
    ("CHAT_PUBLIC_WS_URL", "wss://chat.example.com/ws", "public_ws_url", "wss://chat.example.com/ws"),
    ("CHAT_PUBLIC_WS_URL", "", "public_ws_url", None),
    ("CHAT_ROOM_INBOX_SIZE", "16", "room_inbox_size", 16),
    ("CHAT_ROOM_IDLE", "0.1", "room_idle_s", 0.1),
    ("CHAT_HANDSHAKE_TIMEOUT", "2", "handshake_timeout_s", 2.0),
    ("CHAT_AUTH_TIMEOUT", "3", "auth_timeout_s", 3.0),
    ("CHAT_AUTH_QUEUE", "4", "auth_queue", 4),
    ("CHAT_MAX_CONNECTIONS_PER_USER", "7", "max_connections_per_user", 7),
    ("CHAT_MAX_ROOMS_PER_USER", "50", "max_rooms_per_user", 50),
    ("CHAT_NODE_ID", "eu-1.a", "node_id", "eu-1.a"),
    ("CHAT_NODE_LEASE", "2.5", "node_lease_s", 2.5),
    ("CHAT_LOG_LEVEL", "debug", "log_level", "DEBUG"),
    ("CHAT_LOG_LEVEL", "WARNING", "log_level", "WARNING"),
]


@pytest.mark.parametrize(("env", "text", "field", "value"), ENV_CASES)
def test_each_env_var_is_parsed(env, text, field, value):
    c = load_config({}, {env: text}, None)
    assert getattr(c, field) == value
    assert type(getattr(c, field)) is type(value)


def test_every_env_var_is_covered_by_a_parse_case():
    assert {case[0] for case in ENV_CASES} == set(ENV_VARS.values())


def test_allowed_origins_comma_separated_with_whitespace():
    c = load_config(
        {},
        {"CHAT_ALLOWED_ORIGINS": " https://a.example , http://b.example:8080,,null "},
        None,
    )
    assert c.allowed_origins == ("https://a.example", "http://b.example:8080", "null")


def test_allowed_origins_in_file_as_array_or_string(tmp_path):
    path = write(
        tmp_path, 'allowed_origins = ["https://a.example", "https://b.example"]\n'
    )
    assert load_config({}, {}, path).allowed_origins == (
        "https://a.example",
        "https://b.example",
    )
    path = write(tmp_path, 'allowed_origins = "https://a.example, https://b.example"\n')
    assert load_config({}, {}, path).allowed_origins == (
        "https://a.example",
        "https://b.example",
    )


def test_empty_env_value_unsets_an_optional_value_from_the_file(tmp_path):
    path = write(
        tmp_path,
        'api_key = "from-file"\njwt_secret = "file-secret-file-secret-file-secret"\n',
    )
    assert load_config({}, {}, path).api_key == "from-file"
    c = load_config({}, {"CHAT_API_KEY": "", "CHAT_JWT_SECRET": ""}, path)
    assert c.api_key is None and c.jwt_secret is None


def test_file_with_every_field(tmp_path):
    path = write(
        tmp_path,
        """
ws_host = "127.0.0.2"
ws_port = 0
http_host = "127.0.0.3"
http_port = 0
store = "memory://"
bus = "local://"
data_dir = "state"
jwt_secret = "abcdefghijabcdefghijabcdefghij12"
heartbeat_s = 0.5
max_frame_bytes = 2048
max_text_chars = 100
rate_per_second = 5
rate_burst = 10
presence_grace_s = 0
token_ttl_s = 3600
send_queue_bytes = 65536
graceful_timeout_s = 2
api_key = "k"
allowed_origins = ["https://x.example"]
room_inbox_size = 8
room_idle_s = 1
handshake_timeout_s = 3
auth_timeout_s = 4
log_level = "warning"
""",
    )
    c = load_config({}, {}, path)
    assert c.ws_host == "127.0.0.2" and c.http_host == "127.0.0.3"
    assert c.ws_port == 0 and c.http_port == 0
    assert c.data_dir == "state"
    assert (
        c.heartbeat_s == 0.5
        and c.rate_per_second == 5.0
        and isinstance(c.rate_per_second, float)
    )
    assert c.presence_grace_s == 0.0 and c.room_idle_s == 1.0
    assert c.log_level == "WARNING"
    assert c.allowed_origins == ("https://x.example",)


@pytest.mark.parametrize(
    ("env", "needle"),
    [
        ({"CHAT_WS_PORT": "70000"}, "CHAT_WS_PORT"),
        ({"CHAT_WS_PORT": "-1"}, "between 0 and 65535"),
        ({"CHAT_HTTP_PORT": "http"}, "expected an integer"),
        ({"CHAT_WS_PORT": ""}, "expected an integer"),
        ({"CHAT_WS_PORT": "80.5"}, "expected an integer"),
        ({"CHAT_HEARTBEAT": "0"}, "greater than 0"),
        ({"CHAT_HEARTBEAT": "-1"}, "greater than 0"),
        ({"CHAT_HEARTBEAT": "fast"}, "expected a number"),
        ({"CHAT_HEARTBEAT": "nan"}, "finite"),
        ({"CHAT_TOKEN_TTL": "inf"}, "finite"),
        ({"CHAT_RATE_PER_SECOND": "0"}, "greater than 0"),
        ({"CHAT_RATE_BURST": "0"}, "positive"),
        ({"CHAT_MAX_FRAME_BYTES": "0"}, "positive"),
        ({"CHAT_MAX_TEXT_CHARS": "-5"}, "positive"),
        ({"CHAT_SEND_QUEUE_BYTES": "0"}, "positive"),
        ({"CHAT_ROOM_INBOX_SIZE": "0"}, "positive"),
        ({"CHAT_PRESENCE_GRACE": "-0.1"}, "0 or greater"),
        ({"CHAT_GRACEFUL_TIMEOUT": "-1"}, "0 or greater"),
        ({"CHAT_WS_HOST": ""}, "must not be empty"),
        ({"CHAT_STORE": "chat.db"}, "must be a URL"),
        ({"CHAT_BUS": ""}, "CHAT_BUS"),
        ({"CHAT_NODE_ID": "node one"}, "1-64 characters"),
        ({"CHAT_NODE_LEASE": "0"}, "greater than 0"),
        ({"CHAT_LOG_LEVEL": "loud"}, "DEBUG, INFO"),
        ({"CHAT_ALLOWED_ORIGINS": "chat.example.com"}, "not an origin"),
        ({"CHAT_ALLOWED_ORIGINS": "https://chat.example.com/"}, "trailing slash"),
        ({"CHAT_PUBLIC_WS_URL": "https://chat.example.com/ws"}, "ws:// or wss://"),
    ],
)
def test_invalid_env_values_raise_config_error(env, needle):
    with pytest.raises(ConfigError) as info:
        load_config({}, env, None)
    assert needle in str(info.value)


def test_error_names_the_flag():
    with pytest.raises(ConfigError, match="--ws-port"):
        load_config({"ws_port": "99999"}, {}, None)


def test_error_never_shows_a_secret(tmp_path):
    path = write(tmp_path, "jwt_secret = 12345\n")
    with pytest.raises(ConfigError) as info:
        load_config({}, {}, path)
    assert "12345" not in str(info.value) and "jwt_secret" in str(info.value)


@pytest.mark.parametrize(
    ("text", "needle"),
    [
        ('ws_port = "8301"\n', "must be an integer"),
        ("ws_port = true\n", "must be an integer"),
        ("heartbeat_s = 0\n", "greater than 0"),
        ("heartbeat = 30\n", "did you mean 'heartbeat_s'"),
        ("colour = 1\n", "unknown key 'colour'"),
        ("[server]\nws_port = 1\n", "flat"),
        ("ws_port = \n", "not valid TOML"),
        ("allowed_origins = 5\n", "array of origins"),
    ],
)
def test_invalid_file_raises_config_error(tmp_path, text, needle):
    path = write(tmp_path, text)
    with pytest.raises(ConfigError) as info:
        load_config({}, {}, path)
    assert needle in str(info.value)


def test_missing_file_raises_config_error(tmp_path):
    with pytest.raises(ConfigError, match="not found"):
        load_config({}, {}, str(tmp_path / "nope.toml"))


def test_unknown_flag_key_raises_config_error():
    with pytest.raises(ConfigError, match="unknown option"):
        load_config({"wsport": "1"}, {}, None)


def test_direct_construction_is_validated_too():
    with pytest.raises(ConfigError, match="ws_port"):
        Config(ws_port=70000)
    with pytest.raises(ConfigError, match="heartbeat_s"):
        Config(heartbeat_s=0)
    with pytest.raises(ConfigError, match="max_frame_bytes"):
        Config(max_frame_bytes=True)
    assert Config(allowed_origins=["https://a.example"]).allowed_origins == (
        "https://a.example",
    )


def test_config_is_frozen_and_hides_secrets():
    c = Config(
        jwt_secret="top-secret-value",
        api_key="key-value",
        store="postgresql://u:pw@db/chat",
    )
    with pytest.raises(attrs.exceptions.FrozenInstanceError):
        c.ws_port = 1  # type: ignore[misc]
    text = repr(c)
    assert (
        "top-secret-value" not in text
        and "key-value" not in text
        and ":pw@" not in text
    )
    assert "postgresql://u:***@db/chat" in text
