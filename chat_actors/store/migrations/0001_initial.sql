-- Initial schema. Rooms get an integer id so that the hot tables (messages, members,
-- cursors) key on a small integer instead of repeating the room name in every row and index.

CREATE TABLE users (
    username      TEXT PRIMARY KEY,
    password_hash TEXT NOT NULL,
    created_ts    INTEGER NOT NULL
) WITHOUT ROWID;

-- kind 'direct' rooms are named dm:<a>:<b> and keep a and b in dm_a / dm_b, so "the dm
-- rooms of a user" is an index lookup, not a LIKE over names.
CREATE TABLE rooms (
    id         INTEGER PRIMARY KEY,
    name       TEXT NOT NULL UNIQUE,
    kind       TEXT NOT NULL CHECK (kind IN ('public', 'private', 'direct')),
    owner      TEXT,
    last_seq   INTEGER NOT NULL DEFAULT 0 CHECK (last_seq >= 0),
    created_ts INTEGER NOT NULL,
    dm_a       TEXT,
    dm_b       TEXT,
    CHECK ((kind = 'direct') = (dm_a IS NOT NULL AND dm_b IS NOT NULL))
);
CREATE INDEX rooms_by_kind ON rooms (kind);
CREATE INDEX rooms_by_owner ON rooms (owner) WHERE owner IS NOT NULL;
CREATE INDEX rooms_by_dm_a ON rooms (dm_a) WHERE dm_a IS NOT NULL;
CREATE INDEX rooms_by_dm_b ON rooms (dm_b) WHERE dm_b IS NOT NULL;

-- UNIQUE (room_id, seq) serves history/replay range scans; UNIQUE (room_id, sender,
-- client_id) is the idempotency key looked up by commit and find_message.
CREATE TABLE messages (
    id        INTEGER PRIMARY KEY,
    room_id   INTEGER NOT NULL REFERENCES rooms (id),
    seq       INTEGER NOT NULL CHECK (seq >= 1),
    client_id TEXT NOT NULL,
    sender    TEXT NOT NULL,
    text      TEXT NOT NULL,
    meta      TEXT,
    ts        INTEGER NOT NULL,
    UNIQUE (room_id, seq),
    UNIQUE (room_id, sender, client_id)
);

-- Joined and not left. The primary key serves "members of a room" and member counts,
-- the secondary index "rooms of a user".
CREATE TABLE members (
    room_id  INTEGER NOT NULL REFERENCES rooms (id),
    username TEXT NOT NULL,
    PRIMARY KEY (room_id, username)
) WITHOUT ROWID;
CREATE INDEX members_by_user ON members (username);

-- Who may enter a private room (the owner holds one from creation).
CREATE TABLE grants (
    room_id  INTEGER NOT NULL REFERENCES rooms (id),
    username TEXT NOT NULL,
    PRIMARY KEY (room_id, username)
) WITHOUT ROWID;
CREATE INDEX grants_by_user ON grants (username);

-- Read cursors, independent of membership (a user reads dm rooms without joining them).
CREATE TABLE cursors (
    room_id  INTEGER NOT NULL REFERENCES rooms (id),
    username TEXT NOT NULL,
    seq      INTEGER NOT NULL CHECK (seq >= 0),
    PRIMARY KEY (room_id, username)
) WITHOUT ROWID;
