"""The web chat through reloads, server restarts, lost frames, close codes and expired tokens:
nothing is lost, nothing shows twice, and the person always sees what is going on."""

from __future__ import annotations

import json
import re
import time

import jwt
from playwright.sync_api import expect

from .chat_page import WAIT_MS, ChatUser, WsTap
from .conftest import SECRET

OFFLINE = re.compile(r"^Offline · retrying in \d+ s$")


def _lobby(pages):
    alice = ChatUser(pages.open("alice"), "alice").register()
    bob = ChatUser(pages.open("bob"), "bob").register()
    alice.create_room("lobby")
    bob.join_from_browser("lobby")
    return alice, bob


def _contiguous(seqs: list[int]) -> bool:
    return bool(seqs) and seqs == list(range(seqs[0], seqs[0] + len(seqs)))


def test_reload_restores_the_conversation(pages):
    alice, bob = _lobby(pages)
    for text in ("one", "two", "three"):
        bob.send(text)
    alice.expect_message("three")
    before = alice.texts()

    alice.page.reload()
    alice.expect_live()  # still logged in: the token is kept for the tab
    alice.expect_in_room("lobby")
    alice.expect_message("three")
    assert alice.texts() == before
    bob.send("after the reload")
    alice.expect_message("after the reload")
    assert _contiguous(alice.seqs()), alice.seqs()


def test_server_restart_mid_conversation(pages, server, artifacts):
    alice, bob = _lobby(pages)
    alice.send("before the restart")
    bob.expect_message("before the restart")

    server.stop()  # every connection is closed with 1001
    conn = alice.page.locator("#conn")
    expect(conn).to_have_attribute("data-state", "offline", timeout=WAIT_MS)
    expect(alice.page.locator("#conn-text")).to_have_text(OFFLINE)
    expect(alice.page.locator("#conn-retry")).to_be_visible()
    alice.send("written while the server was down")
    pending = alice.expect_message("written while the server was down", status="pending")
    expect(pending.locator(".status")).to_contain_text("Sending…")
    artifacts(alice.page, "offline-pending")

    server.start()  # same ports, same database
    server.publish("lobby", "published while alice was away", "outage-1")
    alice.expect_live()
    bob.expect_live()
    alice.expect_message("written while the server was down", status="sent")
    bob.expect_message("written while the server was down")
    alice.expect_message("published while alice was away")
    bob.expect_message("published while alice was away")
    bob.send("back again")
    alice.expect_message("back again")

    token = json.loads(alice.page.evaluate("sessionStorage.getItem('chat-actors:session')"))["token"]
    stored = [m["text"] for m in server.messages("lobby", token, limit=50)["messages"]]
    assert stored.count("written while the server was down") == 1, stored
    for user in (alice, bob):
        assert _contiguous(user.seqs()), (user.name, user.seqs())
        assert user.texts().count("written while the server was down") == 1


def test_unacked_send_is_resent_with_the_same_id(pages, server):
    alice = ChatUser(pages.open("alice"), "alice")
    tap = WsTap(alice.page)
    alice.register()
    bob = ChatUser(pages.open("bob"), "bob").register()

    # the send never reaches the server: after the reconnect it goes again, same id
    tap.drop_next = "send"
    alice.send("first try lost")
    alice.expect_message("first try lost", status="sent")
    assert tap.dropped and tap.dropped[0]["text"] == "first try lost"
    assert tap.sent_ids().count(tap.dropped[0]["id"]) == 1  # the resend that got through

    # the send is stored but its ack is lost: the page learns the outcome after reconnecting
    tap.drop_next = "ack"
    alice.send("ack lost")
    alice.expect_message("ack lost", status="sent")
    assert tap.dropped[1]["type"] == "ack"
    assert tap.connections == 3

    for user in (alice, bob):
        user.expect_message("first try lost")
        user.expect_message("ack lost")
        assert user.texts().count("ack lost") == 1 and user.texts().count("first try lost") == 1
    token = json.loads(alice.page.evaluate("sessionStorage.getItem('chat-actors:session')"))["token"]
    stored = [m["text"] for m in server.messages("general", token, limit=50)["messages"]]
    assert stored == ["first try lost", "ack lost"], stored
    added = [a["status"] for a in alice.added() if a["text"] == "ack lost"]
    assert added[0] == "pending", added


def test_recovered_false_is_filled_from_history(pages, server):
    alice = ChatUser(pages.open("alice"), "alice")
    tap = WsTap(alice.page)
    alice.register()
    bob = ChatUser(pages.open("bob"), "bob").register()
    bob.send("seen live")
    alice.expect_message("seen live")
    last_seen = max(alice.seqs())

    # alice is offline while messages keep coming...
    tap.refuse = True
    tap.close_page_side(1011, "test: cut")
    expect(alice.page.locator("#conn")).to_have_attribute("data-state", "offline", timeout=WAIT_MS)
    for n in range(1, 8):
        server.publish("general", f"missed {n}", f"missed-{n}")
    # ...and on her return the server replays nothing and says recovered: false
    tap.forget_replay = {"general"}
    tap.refuse = False
    alice.page.get_by_role("button", name="Retry now").click()
    alice.expect_live()

    for n in range(1, 8):
        alice.expect_message(f"missed {n}")
    assert tap.hidden, "the tap hid the replay"
    joins = [f for f in tap.to_server if f.get("type") == "join" and f.get("room") == "general"]
    assert joins[-1]["since"] == last_seen
    pages_asked = [f for f in tap.to_server if f.get("type") == "history" and f.get("room") == "general"]
    assert pages_asked and pages_asked[-1]["after"] == last_seen
    assert _contiguous(alice.seqs()) and alice.texts()[-7:] == [f"missed {n}" for n in range(1, 8)]


def test_close_codes_as_a_user_expects(pages):
    alice = ChatUser(pages.open("alice"), "alice")
    tap = WsTap(alice.page)
    alice.register()
    conn, text = alice.page.locator("#conn"), alice.page.locator("#conn-text")

    # 4029: sending too fast for too long -> wait at least 10 s before coming back
    tap.close_page_side(4029, "rate limit")
    expect(conn).to_have_attribute("data-state", "offline", timeout=WAIT_MS)
    seconds = int(re.search(r"\d+", text.text_content()).group())
    assert seconds >= 9, text.text_content()
    expect(conn).to_have_attribute("title", "Too many messages in a row; waiting a little")
    alice.page.get_by_role("button", name="Retry now").click()  # the user need not wait
    alice.expect_live()

    # 4008: the connection fell behind -> straight back, resuming where it was
    tap.close_page_side(4008, "slow consumer")
    alice.expect_live()

    # 1001: the server is going away -> reconnect with backoff
    tap.close_page_side(1001, "shutdown")
    alice.expect_live()
    assert tap.connections == 4

    # 4001: unauthorized -> back to the login form, saying why
    tap.close_page_side(4001, "token expired")
    expect(alice.page.locator("#login-view")).to_be_visible(timeout=WAIT_MS)
    expect(alice.page.locator("#login-notice")).to_have_text("Your session has expired. Please log in again.")
    expect(alice.page.locator("#login-username")).to_have_value("alice")
    alice.login()


def _session(user: str, exp: int) -> str:
    now = int(time.time())
    token = jwt.encode({"sub": user, "iat": now, "exp": exp}, SECRET, algorithm="HS256")
    # the page's own idea of the expiry is later: only the server can say the token is over
    return json.dumps({"user": user, "token": token, "expires_at": (now + 3600) * 1000})


def test_expired_token_goes_back_to_login(pages):
    alice = ChatUser(pages.open("alice"), "alice").register()
    page = alice.page

    # a token that runs out while connected: the server closes with 4001
    page.evaluate("s => sessionStorage.setItem('chat-actors:session', s)", _session("alice", int(time.time()) + 3))
    page.reload()
    alice.expect_live()
    expect(page.locator("#login-view")).to_be_visible(timeout=WAIT_MS)
    expect(page.locator("#login-notice")).to_have_text("Your session has expired. Please log in again.")

    # a token already expired when the page loads: the upgrade is refused, the page finds out why
    page.evaluate("s => sessionStorage.setItem('chat-actors:session', s)", _session("alice", int(time.time()) - 60))
    page.reload()
    expect(page.locator("#login-view")).to_be_visible(timeout=WAIT_MS)
    expect(page.locator("#login-notice")).to_have_text("Your session has expired. Please log in again.")
    alice.login()
    alice.expect_in_room("general")
