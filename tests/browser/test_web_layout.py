"""The page itself: its security headers as the browser receives them, a 360 px wide screen,
labelled controls, and the screenshot of the chat view the docs show."""

from __future__ import annotations

import os
from pathlib import Path

from playwright.sync_api import expect

from .chat_page import WAIT_MS, ChatUser

#: set to a path (e.g. docs/web-chat.png) to refresh the README's picture from this run
DOCS_SHOT = os.environ.get("CHAT_DOCS_SCREENSHOT")


def test_page_arrives_with_a_strict_csp(pages, server):
    page = pages.open("alice")
    response = page.goto(server.http_url + "/")
    assert response is not None and response.status == 200
    csp = response.headers["content-security-policy"]
    directives = dict(d.strip().split(" ", 1) for d in csp.split(";"))
    assert directives["script-src"] == "'self'" and directives["style-src"] == "'self'"
    assert directives["connect-src"] == f"'self' ws://127.0.0.1:{server.ws_port}"
    assert directives["frame-ancestors"] == "'none'"
    assert "unsafe-inline" not in csp and "unsafe-eval" not in csp
    assert response.headers["x-content-type-options"] == "nosniff"
    assert response.headers["cache-control"] == "no-cache"
    # the page's script and stylesheet came from versioned, long-cached URLs
    script = page.locator("script[type=module]").get_attribute("src")
    assert script.startswith("/assets/") and script.endswith("/app.js")
    asset = page.request.get(server.http_url + script)
    assert "immutable" in asset.headers["cache-control"]
    # the chat runs under that policy (the fixture fails the test on any violation)
    ChatUser(page, "alice").register()
    ChatUser(page, "alice").send("under a strict policy")
    ChatUser(page, "alice").expect_message("under a strict policy", status="sent")


def test_every_control_has_a_label(pages):
    page = pages.open("alice")
    ChatUser(page, "alice").register()
    unlabelled = page.evaluate("""() => {
        const name = (el) => (el.labels && el.labels.length) || el.getAttribute('aria-label')
            || el.textContent.trim();
        return [...document.querySelectorAll('button, input, textarea, select')]
            .filter((el) => !name(el)).map((el) => el.outerHTML.slice(0, 80));
    }""")
    assert unlabelled == []


def test_readable_on_a_360px_screen(pages, artifacts):
    alice = ChatUser(pages.open("alice", width=360, height=740), "alice").register()
    bob = ChatUser(pages.open("bob"), "bob").register()
    page = alice.page
    bob.send("Hi! Everything fits on a small screen, long lines included: " + "wrap " * 30)
    alice.expect_message("Hi! Everything fits on a small screen, long lines included: " + "wrap " * 29 + "wrap")
    alice.send("Looks good from here")
    alice.expect_message("Looks good from here", status="sent")

    # nothing is wider than the screen; the connection state is still in sight
    assert page.evaluate("document.documentElement.scrollWidth") <= 360
    expect(page.locator("#conn-mini")).to_be_visible()
    expect(page.locator("#conn-mini")).to_contain_text("Live")
    expect(page.locator("#sidebar")).not_to_be_in_viewport()
    artifacts(page, "chat-360")

    # the conversations list opens from the menu, with the keyboard alone
    page.get_by_role("button", name="Show conversations").focus()
    page.keyboard.press("Enter")
    expect(page.locator("#sidebar")).to_be_in_viewport(timeout=WAIT_MS)
    artifacts(page, "sidebar-360")
    page.keyboard.press("Escape")
    expect(page.locator("#sidebar")).not_to_be_in_viewport(timeout=WAIT_MS)


def test_chat_view_screenshot(pages, artifacts):
    """A conversation as a newcomer sees it: the picture in the README."""
    alice = ChatUser(pages.open("alice", width=1280, height=760), "alice").register()
    bob = ChatUser(pages.open("bob"), "bob").register()
    carol = ChatUser(pages.open("carol"), "carol").register()
    alice.create_room("design-review")
    bob.join_from_browser("design-review")
    carol.join_from_browser("design-review")
    alice.send("Morning! The new room list is up on staging, have a look when you can.")
    bob.send("Looks great. Unread counts update live now, even across tabs.")
    carol.send("Restarted the server twice during the demo: nothing lost, nothing doubled.")
    alice.expect_message("Restarted the server twice during the demo: nothing lost, nothing doubled.")

    alice.open_room("general")  # meanwhile, in the room she left and in a direct message
    bob.send("One more thing: messages written offline wait as pending, then go out with the same id.")
    carol.send("And the page reconnects by itself, with a countdown while it waits.")
    bob.page.get_by_role("button", name="New direct message").click()
    bob.page.locator("#dm-dialog").get_by_label("Username").fill("alice")
    bob.page.locator("#dm-dialog").get_by_role("button", name="Open").click()
    bob.expect_in_room("dm:alice:bob")
    bob.send("Got a minute after lunch?")
    expect(alice.badge("design-review")).to_have_text("2", timeout=WAIT_MS)
    expect(alice.badge("dm:alice:bob")).to_have_text("1", timeout=WAIT_MS)

    alice.open_room("design-review")
    expect(alice.page.locator("#message-list li.marker")).to_be_visible()
    expect(alice.message("Morning! The new room list is up on staging, have a look when you can.")
           .locator(".seen")).to_have_text("Seen by bob and carol", timeout=WAIT_MS)
    carol.open_room("design-review")
    carol.type("Shipping it")
    expect(alice.page.locator("#typing")).to_have_text("carol is typing…", timeout=WAIT_MS)
    shot = artifacts(alice.page, "chat-view")
    if DOCS_SHOT:
        Path(DOCS_SHOT).write_bytes(shot.read_bytes())
