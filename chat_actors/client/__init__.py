"""The chat_actors client library: a trio-native chat connection that keeps the server's promises.

    from chat_actors.client import open_chat, login

    creds = await login("http://127.0.0.1:3001", "alice", password)
    async with open_chat("ws://127.0.0.1:8301/ws", token=creds.token) as chat:
        await chat.join("general")
        ack = await chat.send("general", "hello")           # returns after the durable ack
        page = await chat.history("general", limit=50)
        async for event in chat.events():                   # chat_actors.records events
            ...

Everything importable from here is the public surface; the modules behind it are not.
See docs/client.md for the guarantees (reconnect, resume, retried sends, gap-free and
duplicate-free room streams) and the buffer policy.
"""

from chat_actors.records import (
    Ack,
    ErrorEvent,
    Event,
    HistoryPage,
    Joined,
    Left,
    Message,
    PresenceEvent,
    PresenceList,
    PresenceMember,
    ReadEvent,
    RoomEntry,
    TypingEvent,
    Welcome,
    WelcomeLimits,
)

from .api import (
    Credentials,
    Published,
    RoomInfo,
    ServerInfo,
    add_member,
    create_room,
    login,
    new_message_id,
    publish,
    register,
    server_info,
)
from .backoff import Backoff
from .chat import Chat, open_chat
from .errors import (
    BadRequest,
    ChatClosed,
    ChatError,
    Conflict,
    ConnectionFailed,
    Forbidden,
    Internal,
    NotFound,
    NotJoined,
    RateLimited,
    TooLarge,
    Unauthorized,
    Unavailable,
)
from .options import ChatOptions, ChatStatistics

__all__ = [
    # the connection
    "open_chat", "Chat", "ChatOptions", "ChatStatistics", "Backoff",
    # HTTP helpers
    "register", "login", "server_info", "publish", "create_room", "add_member", "new_message_id",
    "Credentials", "ServerInfo", "Published", "RoomInfo",
    # errors
    "ChatError", "BadRequest", "Unauthorized", "Forbidden", "NotFound", "NotJoined", "Conflict", "TooLarge",
    "RateLimited", "Unavailable", "Internal", "ConnectionFailed", "ChatClosed",
    # the records events and replies arrive as
    "Event", "Message", "Ack", "Joined", "Left", "HistoryPage", "PresenceList", "PresenceMember", "TypingEvent",
    "ReadEvent", "PresenceEvent", "ErrorEvent", "Welcome", "WelcomeLimits", "RoomEntry",
]
