"""The `chat-actors` command: help, configuration errors, signals and exit codes.

In-process tests swap `chat_actors.server` for a small fake so they exercise the CLI alone;
the subprocess tests at the end run the real server.
"""

from __future__ import annotations

import errno
import importlib
import io
import logging
import os
import signal
import socket
import subprocess
import sys
import types
from pathlib import Path
from typing import Any

import pytest
import trio
import trio.testing

from chat_actors import __version__, cli
from chat_actors.config import ENV_VARS, FLAGS
from chat_actors.logging_setup import LOG_FORMAT, configure_logging, reset_logging

ROOT = Path(__file__).resolve().parent.parent


@pytest.fixture(autouse=True)
def no_global_logging(monkeypatch):
    """main() configures process-wide logging; keep it out of the rest of the suite."""
    levels: list[str] = []
    monkeypatch.setattr(cli, "configure_logging", levels.append)
    for env in list(ENV_VARS.values()) + [cli.CONFIG_ENV]:
        monkeypatch.delenv(env, raising=False)
    return levels


def help_text(argv: list[str], capsys) -> str:
    with pytest.raises(SystemExit) as info:
        cli.main(argv)
    assert info.value.code == 0
    return capsys.readouterr().out


@pytest.mark.parametrize("argv", [["--help"], ["serve", "--help"]])
def test_help_mentions_every_option_and_env_var(argv, capsys):
    text = help_text(argv, capsys)
    for name, flag in FLAGS.items():
        assert flag in text, flag
        assert ENV_VARS[name] in text, ENV_VARS[name]
    assert "--config" in text and "CHAT_CONFIG" in text


def test_serve_help_shows_defaults(capsys):
    text = " ".join(help_text(["serve", "--help"], capsys).split())
    for snippet in [
        "default 8301",
        "default 3001",
        "default 127.0.0.1",
        "default sqlite:///data/chat.db",
        "default 30]",
        "default 65536",
        "default 4000",
        "default 20]",
        "default 40]",
        "default 5]",
        "default 86400",
        "default 1048576",
        "default 10]",
        "default unset",
        "default INFO",
    ]:
        assert snippet in text, snippet


def test_version_flag(capsys):
    assert help_text(["--version"], capsys).strip() == f"chat-actors {__version__}"


def test_no_command_prints_usage_and_returns_2(capsys):
    assert cli.main([]) == 2
    assert "serve" in capsys.readouterr().err


def test_unknown_flag_is_a_usage_error(capsys):
    with pytest.raises(SystemExit) as info:
        cli.main(["serve", "--no-such-flag"])
    assert info.value.code == 2


@pytest.mark.parametrize(
    ("argv", "env", "needle"),
    [
        (["serve", "--ws-port", "70000"], {}, "--ws-port"),
        (["serve", "--heartbeat", "soon"], {}, "expected a number"),
        (["serve"], {"CHAT_RATE_PER_SECOND": "0"}, "CHAT_RATE_PER_SECOND"),
        (["serve", "--config", "/nonexistent/chat.toml"], {}, "not found"),
        (["serve"], {"CHAT_CONFIG": "/nonexistent/env.toml"}, "env.toml"),
    ],
)
def test_config_error_returns_2_without_traceback(
    argv, env, needle, monkeypatch, capsys
):
    for key, value in env.items():
        monkeypatch.setenv(key, value)
    assert cli.main(argv) == 2
    err = capsys.readouterr().err
    assert err.startswith("chat-actors: configuration error:")
    assert needle in err
    assert "Traceback" not in err
    assert err.count("\n") == 1


def test_config_file_and_flags_reach_the_server(
    tmp_path, monkeypatch, no_global_logging
):
    path = tmp_path / "chat.toml"
    path.write_text('ws_port = 1234\nheartbeat_s = 7\nlog_level = "debug"\n')
    monkeypatch.setenv("CHAT_HTTP_PORT", "4321")
    seen: list[Any] = []

    async def serve(config, *, task_status):
        seen.append(config)
        task_status.started(FakeRunning())

    install_fake_server(monkeypatch, serve)
    assert (
        cli.main(
            ["serve", "--config", str(path), "--ws-port", "0", "--store", "memory://"]
        )
        == 0
    )
    (config,) = seen
    assert (
        config.ws_port == 0 and config.http_port == 4321 and config.heartbeat_s == 7.0
    )
    assert config.store == "memory://" and config.max_text_chars == 4000
    assert no_global_logging == ["DEBUG"]


# --- signals and exit codes, with a fake server -------------------------------------------


class FakeRunning:
    def __init__(self) -> None:
        self.shutdown = trio.Event()
        self.requests = 0

    def request_shutdown(self) -> None:
        self.requests += 1
        self.shutdown.set()


def install_fake_server(monkeypatch, serve) -> None:
    module = types.ModuleType("chat_actors.server")
    module.serve = serve  # type: ignore[attr-defined]
    monkeypatch.setitem(sys.modules, "chat_actors.server", module)


async def raise_signal_when_idle(signum: int) -> None:
    """Deliver `signum` once every other task is blocked (the CLI is then waiting for it)."""
    await trio.testing.wait_all_tasks_blocked()
    os.kill(os.getpid(), signum)


def serve_args(tmp_path) -> list[str]:
    return [
        "serve",
        "--store",
        "memory://",
        "--data-dir",
        str(tmp_path),
        "--ws-port",
        "0",
        "--http-port",
        "0",
    ]


@pytest.mark.parametrize("signum", [signal.SIGTERM, signal.SIGINT])
def test_first_signal_requests_a_graceful_shutdown(signum, tmp_path, monkeypatch):
    running = FakeRunning()

    async def serve(config, *, task_status):
        task_status.started(running)
        await raise_signal_when_idle(signum)
        await running.shutdown.wait()

    install_fake_server(monkeypatch, serve)
    assert cli.main(serve_args(tmp_path)) == 0
    assert running.requests == 1


def test_second_signal_stops_at_once(tmp_path, monkeypatch):
    running = FakeRunning()
    cancelled: list[bool] = []

    async def serve(config, *, task_status):
        task_status.started(running)
        await raise_signal_when_idle(signal.SIGTERM)
        await running.shutdown.wait()
        # a slow graceful stop: the second signal must cut it short
        await raise_signal_when_idle(signal.SIGTERM)
        try:
            await trio.sleep_forever()
        except trio.Cancelled:
            cancelled.append(True)
            raise

    install_fake_server(monkeypatch, serve)
    assert cli.main(serve_args(tmp_path)) == 128 + signal.SIGTERM
    assert running.requests == 1
    assert cancelled == [True]


def test_signal_before_startup_finished_stops_at_once(tmp_path, monkeypatch):
    async def serve(config, *, task_status):
        await raise_signal_when_idle(signal.SIGINT)
        await trio.sleep_forever()

    install_fake_server(monkeypatch, serve)
    assert cli.main(serve_args(tmp_path)) == 128 + signal.SIGINT


def test_server_returning_on_its_own_exits_0(tmp_path, monkeypatch):
    async def serve(config, *, task_status):
        task_status.started(FakeRunning())

    install_fake_server(monkeypatch, serve)
    assert cli.main(serve_args(tmp_path)) == 0


def test_port_in_use_at_startup_is_one_clear_line(tmp_path, monkeypatch, capsys):
    async def serve(config, *, task_status):
        raise OSError(errno.EADDRINUSE, os.strerror(errno.EADDRINUSE))

    install_fake_server(monkeypatch, serve)
    assert cli.main(serve_args(tmp_path)) == 1
    err = capsys.readouterr().err
    assert err.startswith("chat-actors: cannot start:")
    assert os.strerror(errno.EADDRINUSE) in err and "ws 127.0.0.1:0" in err
    assert "Traceback" not in err and err.count("\n") == 1


def test_startup_failure_inside_nurseries_is_unwrapped(tmp_path, monkeypatch, capsys):
    async def serve(config, *, task_status):
        async with trio.open_nursery() as nursery:
            nursery.start_soon(trio.sleep_forever)
            raise OSError(errno.EADDRINUSE, os.strerror(errno.EADDRINUSE))

    install_fake_server(monkeypatch, serve)
    assert cli.main(serve_args(tmp_path)) == 1
    err = capsys.readouterr().err
    assert "cannot start" in err and "Traceback" not in err


def test_crash_after_startup_returns_1_and_logs(tmp_path, monkeypatch, caplog):
    async def serve(config, *, task_status):
        task_status.started(FakeRunning())
        raise RuntimeError("boom")

    install_fake_server(monkeypatch, serve)
    with caplog.at_level(logging.CRITICAL, logger="chat_actors.cli"):
        assert cli.main(serve_args(tmp_path)) == 1
    assert any(r.levelno == logging.CRITICAL and r.exc_info for r in caplog.records)


def test_configure_logging_format_and_idempotence():
    stream = io.StringIO()
    try:
        configure_logging("warning", stream)
        configure_logging("WARNING", stream)
        logging.getLogger("chat_actors.test").warning("hello %s", "there")
        logging.getLogger("chat_actors.test").info("not shown")
    finally:
        reset_logging()
        logging.getLogger().setLevel(logging.WARNING)
    lines = stream.getvalue().splitlines()
    assert len(lines) == 1
    assert lines[0].endswith(" WARNING chat_actors.test: hello there")
    assert LOG_FORMAT == "%(asctime)s %(levelname)s %(name)s: %(message)s"


# --- subprocesses ---------------------------------------------------------------------------


def child_env(**extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("CHAT_")}
    env["PYTHONPATH"] = str(ROOT)
    env.update(extra)
    return env


def test_python_m_version():
    out = subprocess.run(
        [sys.executable, "-m", "chat_actors", "--version"],
        check=False,
        capture_output=True,
        text=True,
        env=child_env(),
        cwd=ROOT,
        timeout=60,
    )
    assert out.returncode == 0
    assert out.stdout.strip() == f"chat-actors {__version__}"


def test_python_m_config_error_exit_2(tmp_path):
    out = subprocess.run(
        [sys.executable, "-m", "chat_actors", "serve"],
        check=False,
        capture_output=True,
        text=True,
        env=child_env(CHAT_WS_PORT="nope"),
        cwd=tmp_path,
        timeout=60,
    )
    assert out.returncode == 2
    assert "CHAT_WS_PORT" in out.stderr and "Traceback" not in out.stderr


@pytest.fixture
def real_server() -> None:
    """Skip the end-to-end tests while the server's modules cannot be imported yet."""
    for module in ("chat_actors.server", "chat_actors.store.sqlite"):
        try:
            importlib.import_module(module)
        except ImportError as exc:
            pytest.skip(f"{module} is not importable: {exc}")


def start_server(tmp_path, *extra: str) -> subprocess.Popen:
    return subprocess.Popen(
        [
            sys.executable,
            "-m",
            "chat_actors",
            "serve",
            "--ws-port",
            "0",
            "--http-port",
            "0",
            "--store",
            "sqlite:///chat.db",
            "--data-dir",
            "state",
            *extra,
        ],
        stderr=subprocess.PIPE,
        stdout=subprocess.DEVNULL,
        text=True,
        env=child_env(),
        cwd=tmp_path,
    )


@pytest.mark.parametrize("signum", [signal.SIGTERM, signal.SIGINT])
def test_serve_subprocess_stops_gracefully_on_signal(tmp_path, signum, real_server):
    proc = start_server(tmp_path)
    seen: list[str] = []
    try:
        assert proc.stderr is not None
        for line in proc.stderr:
            seen.append(line)
            if "chat-actors listening ws=ws://127.0.0.1:" in line:
                break
        else:
            pytest.fail("server exited before listening:\n" + "".join(seen))
        proc.send_signal(signum)
        _, rest = proc.communicate(timeout=60)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    log = "".join(seen) + rest
    assert proc.returncode == 0, log
    assert " http=http://127.0.0.1:" in log
    assert "generated a new JWT secret" in log and "CHAT_JWT_SECRET" in log
    assert (tmp_path / "state" / "jwt_secret").exists()
    assert "Traceback" not in log


def test_serve_subprocess_port_in_use_exit_1(tmp_path, real_server):
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = busy.getsockname()[1]
        proc = start_server(tmp_path, "--ws-port", str(port))
        _, err = proc.communicate(timeout=60)
    assert proc.returncode == 1, err
    lines = [line for line in err.splitlines() if "cannot start" in line]
    assert len(lines) == 1 and str(port) in lines[0], err
    assert "Traceback" not in err
