"""Two people, alice and bob, each in their own browser context, chatting through the web page."""

from __future__ import annotations

import re

from playwright.sync_api import expect

from .chat_page import WAIT_MS, ChatUser, WsTap, wait_until

XSS = "<img src=x onerror=alert(1)>"


def test_register_create_room_and_talk(pages, artifacts):
    alice = ChatUser(pages.open("alice"), "alice").register()
    bob = ChatUser(pages.open("bob"), "bob").register()
    # a newcomer lands in #general
    alice.expect_in_room("general")
    bob.expect_in_room("general")

    alice.create_room("lobby")
    bob.join_from_browser("lobby")
    expect(alice.page.locator("#member-list")).to_contain_text("bob", timeout=WAIT_MS)  # presence

    # pending, then sent on the ack; the other side sees it once, with sender and time
    alice.send("hello bob")
    alice.expect_message("hello bob", status="sent")
    statuses = [a["status"] for a in alice.added() if a["text"] == "hello bob"]
    assert statuses[0] == "pending", statuses
    received = bob.expect_message("hello bob")
    expect(received.locator(".from")).to_have_text("alice")
    expect(received.locator("time")).to_have_attribute("datetime", re.compile(r"^\d{4}-\d\d-\d\dT"))

    # typing: sent on input, shown on the other side
    bob.type("typing something")
    expect(alice.page.locator("#typing")).to_have_text("bob is typing…", timeout=WAIT_MS)
    bob.page.keyboard.press("Enter")
    alice.expect_message("typing something")
    expect(alice.page.locator("#typing")).to_have_text("", timeout=WAIT_MS)  # a message ends it

    # read receipt: bob's page showed "hello bob" (and he answered), so alice sees it was seen
    expect(alice.message("hello bob").locator(".seen")).to_have_text("Seen by bob", timeout=WAIT_MS)

    # keyboard only: Shift+Enter is a new line inside one message, Enter sends
    bob.send("line one\nline two")
    item = alice.page.locator("#message-list li.msg").last
    expect(item.locator(".text")).to_have_text("line one\nline two", timeout=WAIT_MS)

    # unread counts: alice looks at #general while bob writes in #lobby
    alice.open_room("general")
    bob.send("are you there?")
    bob.send("hello?")
    expect(alice.badge("lobby")).to_have_text("2", timeout=WAIT_MS)
    expect(alice.page).to_have_title("(2) chat-actors")
    alice.open_room("lobby")
    expect(alice.badge("lobby")).to_have_count(0)
    marker = alice.page.locator("#message-list li.marker")
    expect(marker).to_have_text("New messages")
    # the marker sits right before the first unread message
    assert marker.evaluate("m => m.nextElementSibling.querySelector('.text').textContent") == "are you there?"
    # bob's page hears of alice's reading: "seen by alice" under his latest
    expect(bob.message("hello?").locator(".seen")).to_have_text("Seen by alice", timeout=WAIT_MS)

    # text is text: markup in a message is shown, never run
    bob.send(XSS)
    shown = alice.expect_message(XSS)
    expect(shown.locator(".text")).to_have_text(XSS)
    assert alice.page.locator("#message-list img").count() == 0
    assert bob.page.locator("#message-list img").count() == 0

    # a long unbroken message wraps inside the column (no sideways scrolling)
    bob.send("x" * 900)
    alice.expect_message("x" * 900)
    assert alice.page.evaluate("document.querySelector('#messages').scrollWidth <= document.querySelector('#messages').clientWidth")

    # every message arrived once, in seq order
    seqs = alice.seqs()
    assert seqs == sorted(set(seqs)), seqs
    artifacts(alice.page, "alice-lobby")
    artifacts(bob.page, "bob-lobby")


def test_direct_messages_and_other_devices(pages, artifacts):
    alice = ChatUser(pages.open("alice"), "alice")
    tap = WsTap(alice.page)  # to know when alice's first tab has heard something
    alice.register()
    bob = ChatUser(pages.open("bob"), "bob").register()

    # a DM to nobody is refused with a clear message
    alice.page.get_by_role("button", name="New direct message").click()
    dialog = alice.page.locator("#dm-dialog")
    dialog.get_by_label("Username").fill("nobody-here")
    dialog.get_by_role("button", name="Open").click()
    expect(dialog.locator("#dm-error")).to_have_text("There is no user named nobody-here.", timeout=WAIT_MS)

    dialog.get_by_label("Username").fill("bob")
    dialog.get_by_role("button", name="Open").click()
    expect(dialog).to_be_hidden(timeout=WAIT_MS)
    alice.expect_in_room("dm:alice:bob")
    expect(alice.page.locator("#room-title")).to_have_text("bob")
    alice.send("psst, bob")
    alice.expect_message("psst, bob", status="sent")

    # bob was not in that conversation: it appears in his list, unread
    expect(bob.badge("dm:alice:bob")).to_have_text("1", timeout=WAIT_MS)
    bob.open_room("dm:alice:bob")
    bob.expect_message("psst, bob")
    bob.send("yes?")
    alice.expect_message("yes?")

    # alice's second device (another tab: sessionStorage is per tab, so she logs in there too)
    second = ChatUser(pages.open("alice-2", context=alice.page.context), "alice").login()
    second.open_room("dm:alice:bob")
    second.expect_message("psst, bob")
    alice.send("sent from the first tab")
    mirrored = second.expect_message("sent from the first tab", status="sent")
    expect(mirrored.locator(".from")).to_have_text("alice")
    bob.expect_message("sent from the first tab")
    for user in (alice, second, bob):
        seqs = user.seqs()
        assert seqs == sorted(set(seqs)) and len(seqs) == 3, (user.name, seqs)

    # read on one device, read everywhere: the first tab's unread count follows the second's
    alice.open_room("general")
    bob.send("did you see this on your phone?")
    second.expect_message("did you see this on your phone?")
    wait_until(alice.page, lambda: any(
        f.get("type") == "read" and f.get("user") == "alice" and f.get("room") == "dm:alice:bob" and f.get("seq") == 4
        for f in tap.to_page), "the first tab hears the second tab's read")
    assert any(f.get("type") == "message" and f.get("seq") == 4 for f in tap.to_page)
    expect(alice.badge("dm:alice:bob")).to_have_count(0)
    artifacts(bob.page, "bob-dm")


def test_private_room_membership(pages):
    alice = ChatUser(pages.open("alice"), "alice").register()
    bob = ChatUser(pages.open("bob"), "bob").register()
    alice.create_room("secret", private=True)
    expect(alice.page.locator("#room-sub")).to_contain_text("Private room")
    alice.send("for members only")

    # bob does not see it, and cannot join it by name
    dialog = bob.browse()
    expect(dialog.locator("#browse-list")).not_to_contain_text("secret")
    dialog.get_by_label("Create a room").fill("secret")
    dialog.get_by_role("button", name="Create", exact=True).click()
    expect(bob.page.locator("#toast")).to_contain_text("#secret is private", timeout=WAIT_MS)
    dialog.get_by_role("button", name="Close").click()

    # the owner adds bob; bob finds it among the rooms he may join, and joins
    alice.page.get_by_role("button", name="Add member").click()
    add = alice.page.locator("#member-dialog")
    add.get_by_label("Username").fill("bob")
    add.get_by_role("button", name="Add", exact=True).click()
    expect(alice.page.locator("#toast")).to_contain_text("bob can now join #secret", timeout=WAIT_MS)
    bob.join_from_browser("secret")
    bob.expect_message("for members only")
    bob.send("thanks for the invite")
    alice.expect_message("thanks for the invite")

    # bob is not the owner: he cannot add others
    bob.page.get_by_role("button", name="Add member").click()
    add = bob.page.locator("#member-dialog")
    add.get_by_label("Username").fill("alice")
    add.get_by_role("button", name="Add", exact=True).click()
    expect(add.locator("#member-error")).to_have_text("Only the room’s owner can add members.", timeout=WAIT_MS)


def test_history_pages_load_on_scroll_up(pages, server, artifacts):
    for n in range(1, 131):
        server.publish("archive", f"archived message {n}", f"seed-{n}")
    alice = ChatUser(pages.open("alice", height=700), "alice").register()
    alice.join_from_browser("archive")
    alice.expect_message("archived message 130")
    expect(alice.message("archived message 1")).to_have_count(0)
    first = alice.seqs()[0]
    assert first > 1

    # scroll to the top until the very beginning shows
    scroller = alice.page.locator("#messages")
    for _ in range(20):
        if alice.page.locator("#older-status.start").count():
            break
        scroller.evaluate("el => { el.scrollTop = 0; }")
        alice.page.wait_for_timeout(300)
    expect(alice.page.locator("#older-status")).to_have_text("This is the very beginning of #archive.", timeout=WAIT_MS)
    assert alice.seqs() == list(range(1, 131))
    assert alice.texts() == [f"archived message {n}" for n in range(1, 131)]
    artifacts(alice.page, "archive-top")
