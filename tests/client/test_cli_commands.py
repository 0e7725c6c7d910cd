"""The CLI's client commands as subprocesses against a real server: output, exit codes,
the saved token, and `tail` across a graceful restart and a kill -9."""

from __future__ import annotations

import json
import os
import socket
import stat
import subprocess
import sys
from pathlib import Path

import trio
from proc import ServerProcess

from chat_actors.client import open_chat
from integration.client import PASSWORD, register

from .helpers import FAST, full_history
from .test_kill9 import kill_and_restart, same_ports

ROOT = Path(__file__).resolve().parents[2]


def child_env(tmp_path: Path, http_url: str, **extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("CHAT_")}
    env.update(PYTHONPATH=str(ROOT), XDG_CONFIG_HOME=str(tmp_path / "config"), CHAT_URL=http_url, **extra)
    return env


async def cli(env: dict[str, str], *args: str, stdin: bytes = b"") -> subprocess.CompletedProcess:
    with trio.fail_after(60):
        return await trio.run_process(
            [sys.executable, "-m", "chat_actors", *args], stdin=stdin, capture_stdout=True, capture_stderr=True,
            env=env, check=False,
        )


def text(result: subprocess.CompletedProcess) -> tuple[int, str, str]:
    return result.returncode, result.stdout.decode(), result.stderr.decode()


def one_clean_error_line(err: str) -> None:
    assert "Traceback" not in err and err.count("\n") == 1 and err.startswith("chat-actors: "), err


async def test_accounts_send_history_and_dm(server, tmp_path):
    env = child_env(tmp_path, server.http_url)
    password = (PASSWORD + "\n").encode()
    code, out, err = text(await cli(env, "register", "bobby", "--password-stdin", "--json", "--no-save", stdin=password))
    assert code == 0, err
    bob = json.loads(out)
    assert bob["user"] == "bobby" and bob["token"] and bob["saved_to"] is None
    code, out, err = text(await cli(env, "register", "alice", "--password-stdin", stdin=password))
    assert code == 0 and out.startswith("logged in as alice") and "saved to" in out, (out, err)
    saved = tmp_path / "config" / "chat-actors" / "credentials.json"
    assert stat.S_IMODE(saved.stat().st_mode) == 0o600
    assert json.loads(saved.read_text())[server.http_url]["user"] == "alice"

    code, out, err = text(await cli(env, "login", "alice", "--password-stdin", stdin=b"wrong password\n"))
    assert code == 3 and "unauthorized" in err
    one_clean_error_line(err)
    code, out, err = text(await cli(env, "login", "alice", "--password-stdin", stdin=password))
    assert code == 0, err

    code, out, err = text(await cli(env, "send", "general", "hello there"))
    assert (code, out) == (0, "sent to general as #1\n"), err
    code, out, err = text(await cli(env, "send", "general", "-", "--json", stdin="from stdin\n\u00e9\n".encode()))
    assert code == 0, err
    ack = json.loads(out)
    assert (ack["type"], ack["room"], ack["seq"]) == ("ack", "general", 2) and "ref" not in ack

    code, out, err = text(await cli(env, "history", "general", "--json"))
    assert code == 0, err
    messages = [json.loads(line) for line in out.splitlines()]
    assert [(m["seq"], m["from"], m["text"]) for m in messages] == [
        (1, "alice", "hello there"), (2, "alice", "from stdin\n\u00e9"),
    ]
    code, out, err = text(await cli(env, "history", "general", "--limit", "1"))
    assert code == 0 and out.count("\n") == 2 and "#2  alice: from stdin\n    \u00e9" in out, out  # continuation indented

    code, out, err = text(await cli(env, "dm", "bobby", "psst", "--json"))
    assert code == 0 and json.loads(out)["room"] == "dm:alice:bobby", err
    code, out, err = text(await cli(env, "history", "dm:alice:bobby", "--json", "--token", bob["token"]))
    assert [json.loads(line)["text"] for line in out.splitlines()] == ["psst"], err

    code, out, err = text(await cli(env, "tail", "general", "-n", "5", "--count", "2"))
    assert code == 0 and [line.split("  ", 2)[1] for line in out.splitlines() if "  #" in line] == ["#1", "#2"], out


async def test_control_characters_are_shown_not_obeyed(server, tmp_path):
    token = await server.user("alice")
    env = child_env(tmp_path, server.http_url, CHAT_TOKEN=token)
    assert (await cli(env, "send", "general", "\x1b[2J\x07 cleared?")).returncode == 0
    code, out, _ = text(await cli(env, "history", "general"))
    assert code == 0 and "\x1b" not in out and "\x07" not in out and "\\x1b[2J\\x07 cleared?" in out


async def test_expected_failures_exit_with_one_line_and_a_status(server, tmp_path):
    env = child_env(tmp_path, server.http_url)
    code, _, err = text(await cli(env, "send", "general", "hi"))
    assert code == 3 and "not logged in" in err and "chat-actors login" in err
    one_clean_error_line(err)
    code, _, err = text(await cli({**env, "CHAT_TOKEN": "garbage"}, "send", "general", "hi"))
    assert code == 3 and "unauthorized" in err
    one_clean_error_line(err)
    env["CHAT_TOKEN"] = await server.user("alice")
    code, _, err = text(await cli(env, "dm", "nobody", "hi"))
    assert code == 1 and "not_found" in err
    one_clean_error_line(err)
    code, _, err = text(await cli(env, "history", "no-such-room"))
    assert code == 1 and "not_found" in err
    with socket.socket() as unused:
        unused.bind(("127.0.0.1", 0))
        code, _, err = text(await cli(env, "send", "general", "hi", "--url", f"http://127.0.0.1:{unused.getsockname()[1]}"))
    assert code == 1 and "cannot reach" in err
    one_clean_error_line(err)
    code, _, err = text(await cli(env, "tail", "general", "--since", "-1"))
    assert code == 2 and "non-negative" in err


async def test_tail_survives_a_graceful_restart_and_a_kill_9(tmp_path):
    """`tail --json` as a subprocess while another process sends: across a restart (1001)
    and a kill -9 it prints every message once, in order, and exits after --count."""
    server = ServerProcess(tmp_path)
    await server.start()
    total = 60
    try:
        alice = await register(server.http_url, "alice")
        bob = await register(server.http_url, "bobby")
        env = child_env(tmp_path, server.http_url, CHAT_TOKEN=bob)
        tail = await trio.lowlevel.open_process(
            [sys.executable, "-m", "chat_actors", "tail", "general", "--since", "0", "--json", "--count", str(total)],
            stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=env,
        )
        lines: list[dict] = []
        try:
            async with trio.open_nursery() as nursery:
                nursery.start_soon(_read_lines, tail.stdout, lines)
                async with open_chat(server.ws_url, token=alice, backoff=FAST) as producer:
                    await producer.join("general")
                    for i in range(total):
                        await producer.send("general", f"m{i}", id=f"cli-{i}")
                        if i == 20:
                            await _until(lambda: len(lines) >= 15)  # the tail is streaming
                            await server.stop()  # graceful: 1001 to every client
                            server = ServerProcess(server.workdir, *same_ports(server))
                            await server.start()
                        elif i == 40:
                            server = await kill_and_restart(server)
                    history = await full_history(producer, "general")
                with trio.fail_after(60):
                    code = await tail.wait()
        finally:
            if tail.returncode is None:
                tail.kill()
        assert code == 0, (await tail.stderr.receive_some(65536)).decode()
        assert [m["seq"] for m in lines] == list(range(1, total + 1))
        assert [(m["seq"], m["id"], m["text"], m["ts"]) for m in lines] == [
            (m.seq, m.id, m.text, m.ts) for m in history
        ]
    finally:
        await server.stop()


async def _read_lines(stream, lines: list[dict]) -> None:
    buffer = b""
    async for chunk in stream:
        buffer += chunk
        *complete, buffer = buffer.split(b"\n")
        lines.extend(json.loads(line) for line in complete if line)


async def _until(predicate, timeout: float = 30.0) -> None:
    with trio.fail_after(timeout):
        while not predicate():
            await trio.sleep(0.02)

