-- Initial schema, PostgreSQL dialect of ../0001_initial.sql (same tables, same keys).
-- Names and usernames use COLLATE "C": ordering is by code point, exactly as the SQLite and
-- memory stores sort (and as the room lock order in a group commit), whatever the
-- database's default collation is, and comparisons are cheaper than linguistic ones.
-- Every seq, ts and cursor is bigint: clients may send any integer up to 2^53-1.

CREATE TABLE users (
    username      text COLLATE "C" PRIMARY KEY,
    password_hash text NOT NULL,
    created_ts    bigint NOT NULL
);

-- The room row is also the room's lock: a commit takes it FOR NO KEY UPDATE before it
-- reads last_seq, so the nodes of a cluster number one room's messages one after another.
CREATE TABLE rooms (
    id         bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    name       text COLLATE "C" NOT NULL UNIQUE,
    kind       text NOT NULL CHECK (kind IN ('public', 'private', 'direct')),
    owner      text COLLATE "C",
    last_seq   bigint NOT NULL DEFAULT 0 CHECK (last_seq >= 0),
    created_ts bigint NOT NULL,
    dm_a       text COLLATE "C",
    dm_b       text COLLATE "C",
    CHECK ((kind = 'direct') = (dm_a IS NOT NULL AND dm_b IS NOT NULL))
);
CREATE INDEX rooms_by_kind ON rooms (kind);
CREATE INDEX rooms_by_owner ON rooms (owner) WHERE owner IS NOT NULL;
CREATE INDEX rooms_by_dm_a ON rooms (dm_a) WHERE dm_a IS NOT NULL;
CREATE INDEX rooms_by_dm_b ON rooms (dm_b) WHERE dm_b IS NOT NULL;

-- PRIMARY KEY (room_id, seq) serves history/replay range scans; UNIQUE (room_id, sender,
-- client_id) is the idempotency key looked up by commit and find_message. text and
-- client_id hold the client's strings with NUL escaped (PostgreSQL text cannot hold NUL;
-- see chat_actors/store/pg_sql.py); meta is the compact JSON encoding, kept as json
-- (not jsonb) so that it round-trips byte for byte, "\u0000" included.
CREATE TABLE messages (
    room_id   bigint NOT NULL REFERENCES rooms (id),
    seq       bigint NOT NULL CHECK (seq >= 1),
    client_id text COLLATE "C" NOT NULL,
    sender    text COLLATE "C" NOT NULL,
    text      text NOT NULL,
    meta      json,
    ts        bigint NOT NULL,
    PRIMARY KEY (room_id, seq),
    UNIQUE (room_id, sender, client_id)
);

-- Joined and not left. The primary key serves "members of a room" and member counts,
-- the secondary index "rooms of a user".
CREATE TABLE members (
    room_id  bigint NOT NULL REFERENCES rooms (id),
    username text COLLATE "C" NOT NULL,
    PRIMARY KEY (room_id, username)
);
CREATE INDEX members_by_user ON members (username);

-- Who may enter a private room (the owner holds one from creation).
CREATE TABLE grants (
    room_id  bigint NOT NULL REFERENCES rooms (id),
    username text COLLATE "C" NOT NULL,
    PRIMARY KEY (room_id, username)
);
CREATE INDEX grants_by_user ON grants (username);

-- Read cursors, independent of membership (a user reads dm rooms without joining them).
CREATE TABLE cursors (
    room_id  bigint NOT NULL REFERENCES rooms (id),
    username text COLLATE "C" NOT NULL,
    seq      bigint NOT NULL CHECK (seq >= 0),
    PRIMARY KEY (room_id, username)
);
