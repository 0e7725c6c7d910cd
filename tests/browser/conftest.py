"""Real headless Chromium (Debian's `chromium`) driven by Playwright against a real server.

Playwright's Python API runs on asyncio (no trio support), so these tests are plain
synchronous tests on Playwright's sync API, and the server is a subprocess of their own
(`python -m chat_actors serve`) that a test can stop and start again on the same ports.
Playwright never downloads a browser here: it launches `/usr/bin/chromium` (or
`CHAT_CHROMIUM`). Without it (or without the playwright package) the tests skip, unless
`CHAT_REQUIRE_SERVICES=1`, where they fail, as for PostgreSQL and Redis.

Every page records what must never happen (a JavaScript error, a CSP violation, a dialog
such as an injected `alert`), and the page fixture fails the test if any did. Screenshots go
to `CHAT_TEST_ARTIFACTS` (or `browser-artifacts/` under pytest's temporary directory).
"""

from __future__ import annotations

import json
import os
import re
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path
from typing import Any, Callable, Iterator

import pytest

from services import unavailable

CHROMIUM = os.environ.get("CHAT_CHROMIUM", "/usr/bin/chromium")
CHROMIUM_ARGS = [
    "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
    "--disable-background-networking", "--disable-component-update", "--disable-sync",
]
SECRET = "browser-test-secret-0123456789abcdef0123"
API_KEY = "browser-test-api-key"
PASSWORD = "correct horse battery"
WAIT_MS = 20_000            # generous bound for anything the page must show
LISTENING = re.compile(r"chat-actors listening ws=(ws://\S+) http=(http://\S+)")

# What the page reports to the test: errors, CSP violations, dialogs, and every message
# element as it is added (to see a send start as pending before it turns into sent).
RECORDER = """
window.__chatTest = { violations: [], added: [] };
document.addEventListener('securitypolicyviolation', (e) => {
  window.__chatTest.violations.push(`${e.violatedDirective} blocked ${e.blockedURI}`);
});
new MutationObserver((records) => {
  for (const record of records) for (const node of record.addedNodes) {
    if (node.nodeType === 1 && node.matches('li.msg')) {
      window.__chatTest.added.push({ status: node.dataset.status, text: node.querySelector('.text')?.textContent });
    }
  }
}).observe(document, { childList: true, subtree: true });
"""


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class ServerProcess:
    """`chat-actors serve` on fixed ports (chosen once), so a restart comes back on the same ones."""

    def __init__(self, workdir: Path, *extra: str) -> None:
        self.workdir = workdir
        self.ws_port, self.http_port = _free_port(), _free_port()
        self.extra = extra
        self.proc: subprocess.Popen[bytes] | None = None
        self.http_url = f"http://127.0.0.1:{self.http_port}"
        self.starts = 0

    def start(self) -> None:
        self.starts += 1
        log_path = self.workdir / f"server-{self.starts}.log"
        cmd = [
            sys.executable, "-m", "chat_actors", "serve",
            "--ws-port", str(self.ws_port), "--http-port", str(self.http_port),
            "--store", f"sqlite:///{self.workdir}/chat.db", "--data-dir", str(self.workdir),
            "--jwt-secret", SECRET, "--api-key", API_KEY, "--presence-grace", "1",
            "--graceful-timeout", "2", *self.extra,
        ]
        with open(log_path, "wb") as log:
            self.proc = subprocess.Popen(cmd, cwd=self.workdir, stdout=log, stderr=subprocess.STDOUT)
        deadline = time.monotonic() + 30
        while not LISTENING.search(log_path.read_text(errors="replace")):
            if self.proc.poll() is not None:
                raise RuntimeError(f"server exited: {log_path.read_text(errors='replace')}")
            if time.monotonic() > deadline:
                raise TimeoutError(f"server did not listen: {log_path.read_text(errors='replace')}")
            time.sleep(0.05)

    def stop(self) -> None:
        """SIGTERM: the server closes every WebSocket with 1001 and exits."""
        if self.proc is None or self.proc.poll() is not None:
            return
        self.proc.send_signal(signal.SIGTERM)
        try:
            self.proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()

    # -- the HTTP API, for setting things up behind the pages' backs -------------------------
    def api(self, method: str, path: str, body: Any = None, headers: dict[str, str] | None = None) -> Any:
        data = None if body is None else json.dumps(body).encode()
        request = urllib.request.Request(self.http_url + path, data=data, method=method,
                                         headers={"Content-Type": "application/json", **(headers or {})})
        with urllib.request.urlopen(request, timeout=10) as response:
            raw = response.read()
        return json.loads(raw) if raw else None

    def publish(self, room: str, text: str, msg_id: str) -> dict[str, Any]:
        """An `X-Api-Key` publish as `system` (not rate-limited)."""
        return self.api("POST", f"/api/rooms/{room}/messages", {"id": msg_id, "text": text}, {"X-Api-Key": API_KEY})

    def messages(self, room: str, token: str, **query: int) -> dict[str, Any]:
        qs = "&".join(f"{k}={v}" for k, v in query.items())
        return self.api("GET", f"/api/rooms/{room}/messages?{qs}", headers={"Authorization": f"Bearer {token}"})


@pytest.fixture(scope="module")
def playwright_api() -> Iterator[Any]:
    try:
        from playwright.sync_api import sync_playwright
    except ImportError as exc:
        unavailable("Playwright (pip install -e '.[test]')", exc)
    if not os.access(CHROMIUM, os.X_OK):
        unavailable(f"Chromium at {CHROMIUM} (apt-get install chromium)", "not installed")
    with sync_playwright() as api:
        yield api


@pytest.fixture(scope="module")
def browser(playwright_api: Any) -> Iterator[Any]:
    browser = playwright_api.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
    yield browser
    browser.close()


@pytest.fixture
def server(tmp_path: Path) -> Iterator[ServerProcess]:
    proc = ServerProcess(tmp_path)
    proc.start()
    yield proc
    proc.stop()


@pytest.fixture
def artifacts(tmp_path_factory: pytest.TempPathFactory, request: pytest.FixtureRequest) -> Callable[[Any, str], Path]:
    """`shoot(page, name)` saves a screenshot as a test artifact and returns its path."""
    root = os.environ.get("CHAT_TEST_ARTIFACTS")
    base = Path(root) if root else tmp_path_factory.getbasetemp() / "browser-artifacts"
    folder = base / request.node.name
    folder.mkdir(parents=True, exist_ok=True)

    def shoot(page: Any, name: str, **kwargs: Any) -> Path:
        path = folder / f"{name}.png"
        page.screenshot(path=str(path), animations="disabled", **kwargs)
        return path

    return shoot


class Pages:
    """Opens pages (one browser context each, like separate people) and checks them at the end."""

    def __init__(self, browser: Any, server: ServerProcess) -> None:
        self.browser = browser
        self.server = server
        self.opened: list[tuple[str, Any, dict[str, list[str]]]] = []

    def open(self, label: str, width: int = 1280, height: int = 800, context: Any = None) -> Any:
        context = context or self.browser.new_context(viewport={"width": width, "height": height})
        context.add_init_script(RECORDER)
        page = context.new_page()
        seen: dict[str, list[str]] = {"errors": [], "dialogs": [], "console": []}
        page.on("pageerror", lambda exc: seen["errors"].append(str(exc)))
        page.on("console", lambda msg: seen["console"].append(f"{msg.type}: {msg.text}")
                if msg.type in ("error", "warning") else None)

        def on_dialog(dialog: Any) -> None:
            seen["dialogs"].append(f"{dialog.type}: {dialog.message}")
            dialog.dismiss()

        page.on("dialog", on_dialog)
        self.opened.append((label, page, seen))
        page.goto(self.server.http_url + "/")
        return page

    def check(self) -> None:
        problems = []
        for label, page, seen in self.opened:
            try:
                violations = page.evaluate("window.__chatTest ? window.__chatTest.violations : []")
            except Exception:  # the page or its context is gone: what it recorded still counts
                violations = []
            csp_console = [line for line in seen["console"]
                           if "Content Security Policy" in line or "Trusted Type" in line]
            for kind, found in (("page errors", seen["errors"]), ("dialogs", seen["dialogs"]),
                                ("CSP violations", violations + csp_console)):
                if found:
                    problems.append(f"{label}: {kind}: {found}")
        assert not problems, "\n".join(problems)


@pytest.fixture
def pages(browser: Any, server: ServerProcess) -> Iterator[Pages]:
    opened = Pages(browser, server)
    yield opened
    try:
        opened.check()
    finally:
        for _, page, _ in opened.opened:
            page.context.close()
