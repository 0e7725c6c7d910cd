"""Records are frozen, slotted values with a distinct wire tag each."""

from __future__ import annotations

import typing

import attrs
import pytest

from chat_actors import records
from chat_actors.errors import ErrorCode
from chat_actors.records import (
    COMMAND_TYPES,
    EVENT_TYPES,
    ErrorEvent,
    HistoryPage,
    Joined,
    Message,
    PresenceList,
    PresenceMember,
    PresenceQuery,
    RoomEntry,
    Send,
    Welcome,
    WelcomeLimits,
)

ALL_CLASSES = [getattr(records, name) for name in records.__all__ if attrs.has(getattr(records, name, None))]


@pytest.mark.parametrize("cls", ALL_CLASSES, ids=lambda c: c.__name__)
def test_frozen_and_slotted(cls: type) -> None:
    params = attrs.fields(cls)
    assert hasattr(cls, "__slots__")
    instance = _example(cls)
    assert not hasattr(instance, "__dict__")
    name = params[0].name if params else "anything"
    with pytest.raises((attrs.exceptions.FrozenInstanceError, AttributeError)):
        setattr(instance, name, None)


def _example(cls: type) -> object:
    samples = {
        "Auth": lambda: cls("t"), "Join": lambda: cls("g"), "Leave": lambda: cls("g"),
        "Send": lambda: cls("g", "1", "x"), "Dm": lambda: cls("bob", "1", "x"), "History": lambda: cls("g"),
        "Typing": lambda: cls("g"), "Read": lambda: cls("g", 1), "PresenceQuery": lambda: cls("g"),
        "Ping": lambda: cls(), "WelcomeLimits": lambda: cls(1, 2, 3.0, 4), "RoomEntry": lambda: cls("g", 1, 0),
        "Welcome": lambda: cls("a", "s", "v", 30, WelcomeLimits(1, 2, 3, 4), ()), "Synced": lambda: cls(),
        "Joined": lambda: cls("g", 0, (), True), "Left": lambda: cls("g"), "Ack": lambda: cls("1", "g", 1, 2),
        "Message": lambda: cls("g", 1, "1", "a", "x", None, 2), "HistoryPage": lambda: cls("g", (), False),
        "TypingEvent": lambda: cls("g", "a"), "ReadEvent": lambda: cls("g", "a", 1),
        "PresenceEvent": lambda: cls("g", "a", "online"), "PresenceMember": lambda: cls("a", 1),
        "PresenceList": lambda: cls("g", ()), "Pong": lambda: cls(1), "ErrorEvent": lambda: cls("internal", "x"),
    }
    return samples[cls.__name__]()


def test_wire_tags() -> None:
    assert set(COMMAND_TYPES) == {"auth", "join", "leave", "send", "dm", "history", "typing", "read", "presence", "ping"}
    assert set(EVENT_TYPES) == {
        "welcome", "synced", "joined", "left", "ack", "message", "history", "typing", "read",
        "presence", "presence_list", "pong", "error",
    }
    assert COMMAND_TYPES["presence"] is PresenceQuery and EVENT_TYPES["history"] is HistoryPage
    assert set(typing.get_args(records.Command)) == set(COMMAND_TYPES.values())
    assert set(typing.get_args(records.Event)) == set(EVENT_TYPES.values())
    for cls in COMMAND_TYPES.values():  # every command carries an optional ref, last
        assert attrs.fields(cls)[-1].name == "ref" and attrs.fields(cls)[-1].default is None
    assert "TYPE" not in attrs.fields_dict(Send)  # a class variable, not a field


def test_values_compare_and_hash() -> None:
    assert Send("g", "1", "x") == Send(room="g", id="1", text="x", meta=None, ref=None)
    assert hash(Send("g", "1", "x", ref=3)) == hash(Send("g", "1", "x", ref=3))
    assert Message("g", 1, "1", "a", "x", None, 2).sender == "a"


def test_sequences_become_tuples() -> None:
    assert Joined("g", 1, ["a", "b"], True).members == ("a", "b")
    assert PresenceList("g", [PresenceMember("a", 1)]).members == (PresenceMember("a", 1),)
    assert HistoryPage("g", [], False).messages == ()
    welcome = Welcome("a", "s", "v", 30.0, WelcomeLimits(1, 2, 20.0, 4), [RoomEntry("g", 1, 0)])
    assert welcome.rooms == (RoomEntry("g", 1, 0),)
    hash(welcome)


def test_integral_floats_become_ints_and_codes_plain_strings() -> None:
    welcome = Welcome("a", "s", "v", 30.0, WelcomeLimits(1, 2, 20.0, 4), ())
    assert type(welcome.heartbeat) is int and type(welcome.limits.rate_per_second) is int
    assert Welcome("a", "s", "v", 0.5, WelcomeLimits(1, 2, 2.5, 4), ()).heartbeat == 0.5
    error = ErrorEvent(ErrorCode.NOT_JOINED, "join first")
    assert type(error.code) is str and error.code == "not_joined"
