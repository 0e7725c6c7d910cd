"""A server process of the test's own, for hostile inputs whose effect is memory or a crash.

In-process servers share the test's memory, so memory limits are asserted on a separate
`python -m chat_actors serve` whose peak RSS we can read (VmHWM) and reset (clear_refs 5).
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path
from typing import Sequence

import trio

LISTENING = re.compile(r"chat-actors listening ws=(ws://\S+) http=(http://\S+)")
SECRET = "hostile-test-secret-0123456789abcdef"


def _status_kib(pid: int, field: str) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1])
    raise KeyError(field)


class ServerProcess:
    """One server subprocess; its log goes to a file polled for the listening line."""

    def __init__(self, workdir: Path, *args: str) -> None:
        self.workdir = workdir
        self.args: Sequence[str] = args
        self.log_path = workdir / f"server-{os.urandom(3).hex()}.log"
        self.proc: trio.Process | None = None
        self.ws_url = self.http_url = ""
        self.secret = SECRET

    async def start(self) -> None:
        log = open(self.log_path, "wb")
        cmd = [
            sys.executable, "-m", "chat_actors", "serve", "--ws-port", "0", "--http-port", "0",
            "--store", f"sqlite:///{self.workdir}/chat.db", "--data-dir", str(self.workdir),
            "--jwt-secret", SECRET, "--graceful-timeout", "3", *self.args,
        ]
        self.proc = await trio.lowlevel.open_process(cmd, cwd=self.workdir, stdout=log, stderr=subprocess.STDOUT)
        log.close()
        with trio.fail_after(30):
            while True:
                match = LISTENING.search(self.log_path.read_text(errors="replace"))
                if match:
                    self.ws_url, self.http_url = match.group(1), match.group(2)
                    return
                assert self.proc.poll() is None, self.log_path.read_text()
                await trio.sleep(0.05)

    @property
    def pid(self) -> int:
        assert self.proc is not None
        return self.proc.pid

    def rss_kib(self) -> int:
        """Resident memory now."""
        return _status_kib(self.pid, "VmRSS")

    def peak_kib(self) -> int:
        """Highest resident memory since start or since the last `reset_peak()`."""
        return _status_kib(self.pid, "VmHWM")

    def reset_peak(self) -> None:
        """Start a new peak measurement from the current RSS (Linux clear_refs 5)."""
        Path(f"/proc/{self.pid}/clear_refs").write_text("5")

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")

    def alive(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    async def stop(self) -> int:
        """SIGTERM and wait (kill after 30 s); the exit code."""
        assert self.proc is not None
        if self.proc.poll() is None:
            self.proc.terminate()
        with trio.move_on_after(30):
            return await self.proc.wait()
        self.proc.kill()
        return await self.proc.wait()


async def start_server(workdir: Path, *args: str) -> ServerProcess:
    server = ServerProcess(workdir, *args)
    await server.start()
    return server
