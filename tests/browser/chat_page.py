"""What a person does on the web chat, as Playwright steps (sync API), and what they see."""

from __future__ import annotations

import json
import re
from typing import Any

from playwright.sync_api import expect

WAIT_MS = 20_000
PASSWORD = "correct horse battery"


def wait_until(page: Any, condition: Any, what: str) -> None:
    """Wait (bounded) for `condition()`; waiting on the page lets Playwright's handlers run."""
    for _ in range(WAIT_MS // 100):
        if condition():
            return
        page.wait_for_timeout(100)
    raise AssertionError(f"timed out: {what}")


class ChatUser:
    """One person on one page."""

    def __init__(self, page: Any, name: str) -> None:
        self.page = page
        self.name = name

    # -- getting in --------------------------------------------------------------------------
    def register(self, password: str = PASSWORD) -> "ChatUser":
        page = self.page
        expect(page.locator("#login-view")).to_be_visible(timeout=WAIT_MS)
        page.get_by_role("button", name="Create an account").click()
        self._submit_login(password, "Create account")
        return self

    def login(self, password: str = PASSWORD) -> "ChatUser":
        expect(self.page.locator("#login-view")).to_be_visible(timeout=WAIT_MS)
        self._submit_login(password, "Log in")
        return self

    def _submit_login(self, password: str, button: str) -> None:
        view = self.page.locator("#login-view")
        view.get_by_label("Username").fill(self.name)
        view.get_by_label("Password").fill(password)
        view.get_by_role("button", name=button, exact=True).click()
        self.expect_live()

    def expect_live(self) -> None:
        """Connected, with a conversation open (the one of last time, or #general)."""
        expect(self.page.locator("#chat-view")).to_be_visible(timeout=WAIT_MS)
        expect(self.page.locator("#conn")).to_have_attribute("data-state", "live", timeout=WAIT_MS)
        expect(self.page.locator("#conversation")).to_be_visible(timeout=WAIT_MS)

    # -- rooms -------------------------------------------------------------------------------
    def room_button(self, room: str) -> Any:
        return self.page.locator(f"#sidebar button.room-link[data-room='{room}']")

    def open_room(self, room: str) -> None:
        self.room_button(room).click()
        self.expect_in_room(room)

    def expect_in_room(self, room: str) -> None:
        title = room.split(":")[-1] if not room.startswith("dm:") else None
        if title:
            expect(self.page.locator("#room-title")).to_have_text(title, timeout=WAIT_MS)
        expect(self.room_button(room)).to_have_attribute("aria-current", "page", timeout=WAIT_MS)

    def create_room(self, room: str, private: bool = False) -> None:
        page = self.page
        page.get_by_role("button", name="Join or create a room").click()
        dialog = page.locator("#browse-dialog")
        expect(dialog).to_be_visible()
        dialog.get_by_label("Create a room").fill(room)
        if private:
            dialog.get_by_label("Private: only people you add can join").check()
        dialog.get_by_role("button", name="Create", exact=True).click()
        expect(dialog).to_be_hidden(timeout=WAIT_MS)
        self.expect_in_room(room)

    def browse(self) -> Any:
        self.page.get_by_role("button", name="Join or create a room").click()
        dialog = self.page.locator("#browse-dialog")
        expect(dialog).to_be_visible()
        expect(dialog.locator("#browse-list")).not_to_contain_text("Loading rooms", timeout=WAIT_MS)
        return dialog

    def join_from_browser(self, room: str) -> None:
        dialog = self.browse()
        dialog.get_by_role("button", name=f"Join {room}", exact=True).click()
        expect(dialog).to_be_hidden(timeout=WAIT_MS)
        self.expect_in_room(room)

    # -- messages ----------------------------------------------------------------------------
    def type(self, text: str) -> None:
        """Type into the composer with the keyboard (Shift+Enter for line breaks)."""
        box = self.page.get_by_label("Message", exact=True)
        box.focus()
        for i, line in enumerate(text.split("\n")):
            if i:
                self.page.keyboard.press("Shift+Enter")
            self.page.keyboard.insert_text(line)

    def send(self, text: str) -> None:
        self.type(text)
        self.page.keyboard.press("Enter")

    def message(self, text: str) -> Any:
        """The message items whose text is exactly `text`."""
        exact = re.compile(rf"^\s*{re.escape(text)}\s*$")
        return self.page.locator("#message-list li.msg").filter(has=self.page.locator("p.text", has_text=exact))

    def expect_message(self, text: str, status: str | None = None) -> Any:
        item = self.message(text)
        expect(item).to_have_count(1, timeout=WAIT_MS)
        if status:
            expect(item).to_have_attribute("data-status", status, timeout=WAIT_MS)
        return item

    def seqs(self) -> list[int]:
        return [int(s) for s in self.page.locator("#message-list li.msg[data-seq]").evaluate_all(
            "els => els.map(e => e.dataset.seq)")]

    def texts(self) -> list[str]:
        return self.page.locator("#message-list li.msg .text").all_text_contents()

    def added(self) -> list[dict[str, str]]:
        """Every message element ever added to the page, in order: {status, text}."""
        return self.page.evaluate("window.__chatTest.added")

    def badge(self, room: str) -> Any:
        return self.room_button(room).locator(".badge")


class WsTap:
    """Sits between a page and the server's WebSocket (Playwright's `route_web_socket`).

    Frames pass through unchanged, and are recorded, until the test arms a fault: drop the
    next `send` on its way to the server, or the next `ack` on its way back, and cut the
    connection there (the page sees it close and reconnects through the tap again); or
    close the page's side with a chosen close code, as the server would.
    """

    def __init__(self, page: Any) -> None:
        self.to_server: list[dict[str, Any]] = []
        self.to_page: list[dict[str, Any]] = []
        self.connections = 0
        self.drop_next: str | None = None     # "send" or "ack"
        self.dropped: list[dict[str, Any]] = []
        self.refuse = False                    # close every new connection at once
        self.forget_replay: set[str] = set()   # next connection: these rooms answer recovered:false
        self.hidden: list[dict[str, Any]] = []
        page.route_web_socket(re.compile(r"/ws(\?.*)?$"), self._route)

    def _route(self, page_side: Any) -> None:
        if self.refuse:
            page_side.close(code=1011, reason="test: refused")
            return
        server_side = page_side.connect_to_server()
        self.connections += 1
        replaying, self.forget_replay = self.forget_replay, set()

        def upstream(message: Any) -> None:
            frame = _frame(message)
            if frame.get("type") == self.drop_next == "send":
                self._drop(frame, page_side, server_side)
                return
            self.to_server.append(frame)
            server_side.send(message)

        def downstream(message: Any) -> None:
            frame = _frame(message)
            if frame.get("type") == self.drop_next == "ack":
                self._drop(frame, page_side, server_side)
                return
            if frame.get("room") in replaying:
                # as if more were missed than the server replays: no replay, recovered false
                if frame["type"] == "message":
                    self.hidden.append(frame)
                    return
                if frame["type"] == "joined":
                    replaying.discard(frame["room"])
                    message = json.dumps({**frame, "recovered": False})
            self.to_page.append(frame)
            page_side.send(message)

        closed = []

        def close_both(code: int | None, reason: str | None) -> None:
            if not closed:
                closed.append(code)
                page_side.close(code=code, reason=reason)
                server_side.close()

        page_side.on_message(upstream)
        server_side.on_message(downstream)
        page_side.on_close(lambda code, reason: close_both(None, None))
        server_side.on_close(close_both)
        self._close = close_both

    def _drop(self, frame: dict[str, Any], page_side: Any, server_side: Any) -> None:
        self.drop_next = None
        self.dropped.append(frame)
        self._close(1011, "test: connection cut")

    def close_page_side(self, code: int, reason: str = "") -> None:
        """What the page sees when the server closes with `code`."""
        self._close(code, reason)

    def sent_ids(self, kind: str = "send") -> list[str]:
        return [f["id"] for f in self.to_server if f.get("type") == kind]


def _frame(message: Any) -> dict[str, Any]:
    try:
        frame = json.loads(message)
    except (TypeError, ValueError):
        return {}
    return frame if isinstance(frame, dict) else {}
