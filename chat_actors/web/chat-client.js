/**
 * chat-client.js: a client for the chat-actors wire protocol (version 1) with no DOM code,
 * for the bundled web chat and for anyone building their own front end.
 *
 * It runs wherever `WebSocket`, `fetch` and timers exist (every browser; Node 22+). What it
 * adds to the raw protocol, so a user interface never has to think about it:
 *  - a connection state machine (connecting -> live -> offline with a retry time), reconnect
 *    with exponential backoff and jitter, close codes 1001/4001/4008/4029 handled as a user
 *    expects, an upgrade refused for a bad token told apart from a server that is down;
 *  - on every (re)connect, `join` with `since` for every room of the user, a `recovered:false`
 *    filled with `history after` pages, so a room's timeline never silently skips a message;
 *  - sends that stay pending until their durable `ack`, resent with the SAME id after a
 *    reconnect (the server answers the original ack), optionally kept across page reloads;
 *  - messages deduplicated by room + seq and kept in seq order; unread counts (`seq - read`
 *    from `welcome`) kept live from messages, acks and the user's other devices;
 *  - presence, typing and read receipts per room.
 *
 *     import { ChatClient, login } from '/chat-client.js';
 *     const { token } = await login(location.origin, 'alice', 'correct horse');
 *     const chat = new ChatClient({ token });
 *     chat.on('message', ({ room, message }) => console.log(room, message.from, message.text));
 *     chat.connect();
 *     await chat.join('general');
 *     chat.send('general', 'hello');
 *
 * Events (`chat.on(name, handler)` returns a function that unsubscribes):
 *  state     {state, reason, code, retryAt, attempt}   see ConnectionState
 *  rooms     {}                                  the room list, an unread count or a cursor changed
 *  timeline  {room}                              a room's timeline was (re)loaded: render it whole
 *  message   {room, message, source}             a new message (source: live, replay, fill)
 *  older     {room, messages}                    an older page was prepended (ascending seq)
 *  pending   {room, item}                        a send was queued; shows until `sent`
 *  sent      {room, item, message}               its durable ack (or its copy) arrived: now a message
 *  failed    {room, item, error}                 refused for good (too large, forbidden...)
 *  typing    {room, users}                       who is typing now
 *  presence  {room, members}                     who is present in the room
 *  receipt   {room, user, seq}                   another user has read the room up to seq
 *  unauthorized {reason}                         the token is bad or expired: log in again
 *  error     {code, message}                     an error no pending request was waiting for
 */

export const PROTOCOL_VERSION = 1;

/** The states of a ChatClient's connection. */
export const ConnectionState = Object.freeze({
  IDLE: 'idle',                 // not started
  CONNECTING: 'connecting',     // opening the socket or waiting for welcome/synced
  LIVE: 'live',                 // synced: events flow, sends go out at once
  OFFLINE: 'offline',           // lost; the next attempt is at `retryAt` (ms since the epoch)
  UNAUTHORIZED: 'unauthorized', // the token was refused or expired: stopped until setToken()
  CLOSED: 'closed',             // close() was called
});

const TYPING_SHOWN_MS = 4000;    // a typing relay is shown this long after the last one
const TYPING_EVERY_MS = 2500;    // send at most one typing command per room this often
const READ_DELAY_MS = 250;       // coalesce read cursor updates
const STABLE_MS = 10000;         // a connection live this long resets the backoff
const WELCOME_TIMEOUT_MS = 15000;
const HISTORY_PAGE = 200;        // the protocol's largest page
const RETRYABLE = new Set(['rate_limited', 'unavailable', 'internal']);
const QUIET_REF = 'quiet';        // the ref of commands whose errors are dropped

/** An error answered by the server (HTTP or WebSocket), or `network` / `disconnected`. */
export class ChatError extends Error {
  constructor(code, message, status = 0) {
    super(message || code);
    this.name = 'ChatError';
    this.code = code;
    this.status = status;
  }
}

/** The direct room of two users: `dm:<a>:<b>` with a < b (usernames are ASCII). */
export function directRoomName(a, b) {
  return a < b ? `dm:${a}:${b}` : `dm:${b}:${a}`;
}

export function isDirectRoom(room) {
  return room.startsWith('dm:');
}

/** The other user of a direct room, seen by `me`. */
export function directPeer(room, me) {
  const [, a, b] = room.split(':');
  return a === me ? b : a;
}

/** Length in Unicode code points, as the server counts `max_text_chars`. */
export function codePoints(text) {
  let n = 0;
  for (const _ of text) n += 1; // eslint-disable-line no-unused-vars
  return n;
}

function newId() {
  const bytes = new Uint8Array(16);
  globalThis.crypto.getRandomValues(bytes);  // unlike randomUUID, also on plain-http LAN pages
  return Array.from(bytes, (b) => b.toString(16).padStart(2, '0')).join('');
}

// ------------------------------------------------------------------------------------- HTTP

/** JSON over HTTP; a non-2xx answer throws ChatError(code, message, status). */
export async function requestJson(baseUrl, path, { method = 'GET', body, token, signal } = {}) {
  const headers = {};
  if (body !== undefined) headers['Content-Type'] = 'application/json';
  if (token) headers.Authorization = `Bearer ${token}`;
  let response;
  try {
    response = await fetch(new URL(path, baseUrl), {
      method, headers, signal, body: body === undefined ? undefined : JSON.stringify(body),
      cache: 'no-store', credentials: 'omit',
    });
  } catch (err) {
    throw new ChatError('network', `the server cannot be reached (${err.message})`);
  }
  if (response.status === 204) return null;
  let data = null;
  try { data = await response.json(); } catch { /* not JSON */ }
  if (!response.ok) {
    throw new ChatError(data?.error || 'internal', data?.message || response.statusText, response.status);
  }
  return data;
}

/** POST /api/register: {user, token, expires_at}. */
export function register(baseUrl, username, password) {
  return requestJson(baseUrl, '/api/register', { method: 'POST', body: { username, password } });
}

/** POST /api/login: {user, token, expires_at}. */
export function login(baseUrl, username, password) {
  return requestJson(baseUrl, '/api/login', { method: 'POST', body: { username, password } });
}

/** GET /api/info: {server, ws_url, limits}. */
export function getInfo(baseUrl) {
  return requestJson(baseUrl, '/api/info');
}

// ------------------------------------------------------------------------------------ emitter

class Emitter {
  #handlers = new Map();

  /** Call `handler(detail)` for every `name` event; returns the function that unsubscribes. */
  on(name, handler) {
    if (!this.#handlers.has(name)) this.#handlers.set(name, new Set());
    this.#handlers.get(name).add(handler);
    return () => this.off(name, handler);
  }

  off(name, handler) {
    this.#handlers.get(name)?.delete(handler);
  }

  emit(name, detail = {}) {
    for (const handler of [...(this.#handlers.get(name) || [])]) {
      try { handler(detail); } catch (err) { console.error(`chat-client: a '${name}' handler failed`, err); }
    }
  }
}

// -------------------------------------------------------------------------------------- rooms

/** What the client knows about one room. Read its fields; change them only through ChatClient. */
export class Room {
  constructor(name) {
    this.name = name;
    this.direct = isDirectRoom(name);
    this.private = this.direct;  // public/private once known (GET /api/rooms, createRoom)
    this.seq = 0;                // the room's last seq as far as this client knows
    this.read = 0;               // the user's read cursor
    this.member = false;         // listed in welcome or joined
    this.joined = false;         // joined on the current connection
    this.members = new Set();    // users present (joined.members + presence events)
    this.receipts = new Map();   // other user -> highest seq they have read (relays seen)
    this.typing = new Map();     // user -> timer that hides their typing
    this.messages = new Map();   // seq -> message, only once `loaded`
    this.loaded = false;         // `messages` holds every seq from `oldest` to `tail`
    this.oldest = 0;
    this.hasOlder = false;
    this.tail = 0;               // the stream handed over: everything up to it was received
    this.wanted = false;         // a view asked for the timeline (reloaded after a reconnect)
    this.serverRead = 0;         // the cursor the server has from us
    this.lastTyping = 0;
    this._typingTrail = null;
    this._loading = null;
    this._olderLoading = null;
    this._filling = null;
    this._readTimer = null;
  }

  get unread() {
    return Math.max(0, this.seq - this.read);
  }

  /** The messages held, in seq order. */
  timeline() {
    return [...this.messages.values()].sort((a, b) => a.seq - b.seq);
  }
}

// ------------------------------------------------------------------------------------- client

export class ChatClient extends Emitter {
  /**
   * @param {object} options
   * @param {string} options.token      a token from register/login
   * @param {string} [options.user]     its user, when known (unacked sends are restored at once)
   * @param {string} [options.baseUrl]  the server's HTTP origin (default: this page's)
   * @param {Storage} [options.storage] where unacked sends survive a reload (e.g. sessionStorage)
   * @param {object} [options.backoff]  {baseMs: 500, maxMs: 30000}
   */
  constructor({ token, user = null, baseUrl = globalThis.location?.origin, storage = null, backoff = {},
                WebSocketImpl = globalThis.WebSocket } = {}) {
    super();
    this.baseUrl = baseUrl;
    this.token = token;
    this.storage = storage;
    this.backoff = { baseMs: 500, maxMs: 30000, ...backoff };
    this.WebSocketImpl = WebSocketImpl;
    this.state = ConnectionState.IDLE;
    this.user = null;
    this.info = null;             // GET /api/info
    this.welcome = null;          // the last welcome frame
    this.limits = null;
    this.rooms = new Map();       // name -> Room
    this.outbox = new Map();      // id -> pending or failed send, in insertion order
    this._ws = null;
    this._conn = 0;               // counts connections: which one a send went out on
    this._opened = false;
    this._ref = 0;
    this._requests = new Map();   // ref -> {resolve, reject}
    this._attempt = 0;
    this._retryTimer = null;
    this._pingTimer = null;
    this._welcomeTimer = null;
    this._lastInbound = 0;
    this._liveSince = 0;
    this._stopped = true;
    this._liveWaiters = [];
    this._outboxUser = null;
    if (user) this._useOutboxOf(user);
  }

  // ---------------------------------------------------------------------------- lifecycle

  /** Start connecting (and keep reconnecting until close() or an unauthorized token). */
  connect() {
    if (!this._stopped) return;
    this._stopped = false;
    this._attempt = 0;
    this._open();
  }

  /** Close for good: no more reconnects. Pending sends stay in the outbox (and storage). */
  close() {
    this._stopped = true;
    clearTimeout(this._retryTimer);
    const ws = this._ws;
    this._dropConnection();
    if (ws) ws.close(1000, 'bye');
    this._setState(ConnectionState.CLOSED);
  }

  /** After an expired token: carry on with a new one (rooms, timelines and outbox are kept). */
  setToken(token) {
    this.token = token;
    if (this.state === ConnectionState.UNAUTHORIZED || this.state === ConnectionState.IDLE) {
      this.connect();
    }
  }

  /** While offline: try now instead of waiting for the countdown. */
  reconnectNow() {
    if (this.state !== ConnectionState.OFFLINE) return;
    clearTimeout(this._retryTimer);
    this._open();
  }

  /** Resolves once the connection is live (at once if it is). */
  whenLive() {
    if (this.state === ConnectionState.LIVE) return Promise.resolve();
    return new Promise((resolve) => this._liveWaiters.push(resolve));
  }

  async _open() {
    if (this._stopped) return;
    this._setState(ConnectionState.CONNECTING, { attempt: this._attempt });
    if (!this.info) {
      try {
        this.info = await getInfo(this.baseUrl);
      } catch (err) {
        this._retry('The server cannot be reached', 0);
        return;
      }
      if (this._stopped) return;
    }
    const url = new URL(this.info.ws_url);
    url.searchParams.set('token', this.token);
    let ws;
    try {
      ws = new this.WebSocketImpl(url.href);
    } catch (err) {
      this._retry(`Cannot open the connection (${err.message})`, 0);
      return;
    }
    this._ws = ws;
    this._conn += 1;
    this._opened = false;
    ws.onopen = () => {
      if (ws !== this._ws) return;
      this._opened = true;
      this._lastInbound = Date.now();
    };
    ws.onmessage = (event) => { if (ws === this._ws) this._onFrame(event.data); };
    ws.onclose = (event) => { if (ws === this._ws) this._onClose(event); };
    ws.onerror = () => { /* a close event follows */ };
    this._welcomeTimer = setTimeout(() => {
      if (ws === this._ws && !this.welcome) ws.close(4000, 'no welcome');
    }, WELCOME_TIMEOUT_MS);
  }

  _setState(state, extra = {}) {
    this.state = state;
    if (state === ConnectionState.LIVE) {
      this._liveSince = Date.now();
      for (const resolve of this._liveWaiters.splice(0)) resolve();
    }
    this.emit('state', { state, reason: '', code: 0, retryAt: 0, attempt: this._attempt, ...extra });
  }

  /** Forget the current socket: its requests fail, its joins and in-flight sends are void. */
  _dropConnection() {
    clearTimeout(this._welcomeTimer);
    clearInterval(this._pingTimer);
    const ws = this._ws;
    this._ws = null;
    if (ws) { ws.onopen = ws.onmessage = ws.onclose = ws.onerror = null; }
    this.welcome = null;
    for (const { reject } of this._requests.values()) reject(new ChatError('disconnected', 'connection lost'));
    this._requests.clear();
    for (const room of this.rooms.values()) {
      room.joined = false;
      this._clearTyping(room);
      if (room.members.size) {  // unknown until the next `joined`
        room.members.clear();
        this.emit('presence', { room: room.name, members: [] });
      }
    }
    for (const item of this.outbox.values()) item.inflight = 0;
  }

  async _onClose(event) {
    const { code } = event;
    const opened = this._opened;
    const stable = this._liveSince && Date.now() - this._liveSince >= STABLE_MS;
    this._liveSince = 0;
    this._dropConnection();
    if (this._stopped) return;
    if (stable) this._attempt = 0;
    if (code === 4001) {
      this._unauthorized('Your session has expired. Please log in again.');
      return;
    }
    if (!opened) {
      // A refused upgrade looks like 1006 to a browser: ask the HTTP API what is wrong.
      try {
        await requestJson(this.baseUrl, '/api/rooms', { token: this.token });
      } catch (err) {
        if (err.code === 'unauthorized') {
          this._unauthorized('Your session has expired. Please log in again.');
          return;
        }
      }
      this._retry('The server cannot be reached', code);
      return;
    }
    if (code === 1001) this._retry('The server is restarting', code);
    else if (code === 4008) this._retry('The connection fell behind; catching up', code, 0, false);
    else if (code === 4029) this._retry('Too many messages in a row; waiting a little', code, 10000);
    else if (code === 1008) this._retry('The server closed the connection (too many errors)', code, 5000);
    else this._retry('Connection lost', code);
  }

  /** OFFLINE until a jittered, exponentially growing delay (at least `minMs`) has passed. */
  _retry(reason, code, minMs = 0, escalate = true) {
    if (this._stopped) return;
    const ceiling = Math.min(this.backoff.maxMs, this.backoff.baseMs * 2 ** this._attempt);
    const delay = Math.max(minMs, ceiling / 2 + Math.random() * (ceiling / 2));
    if (escalate) this._attempt = Math.min(this._attempt + 1, 30);
    const retryAt = Date.now() + delay;
    this._setState(ConnectionState.OFFLINE, { reason, code, retryAt });
    clearTimeout(this._retryTimer);
    this._retryTimer = setTimeout(() => this._open(), delay);
  }

  _unauthorized(reason) {
    this._stopped = true;
    clearTimeout(this._retryTimer);
    const ws = this._ws;
    this._dropConnection();
    if (ws) ws.close(1000, 'unauthorized');
    this._setState(ConnectionState.UNAUTHORIZED, { reason });
    this.emit('unauthorized', { reason });
  }

  _sendFrame(frame) {
    if (!this._ws || this._ws.readyState !== 1) return false;
    this._ws.send(JSON.stringify(frame));
    return true;
  }

  /** A command that has no reply (typing, read): an error it causes is not worth a user's attention. */
  _sendQuiet(frame) {
    this._sendFrame({ ...frame, ref: QUIET_REF });
  }

  /** Send a command with a fresh `ref`; resolves with the reply carrying it, rejects on `error`. */
  _request(frame) {
    const ref = ++this._ref;
    return new Promise((resolve, reject) => {
      if (!this._sendFrame({ ...frame, ref })) {
        reject(new ChatError('disconnected', 'not connected'));
        return;
      }
      this._requests.set(ref, { resolve, reject });
    });
  }

  // ----------------------------------------------------------------------------- frames in

  _onFrame(data) {
    this._lastInbound = Date.now();
    let event;
    try { event = JSON.parse(data); } catch { return; }
    if (event === null || typeof event !== 'object') return;
    const waiter = event.ref !== undefined ? this._requests.get(event.ref) : undefined;
    if (waiter) {
      this._requests.delete(event.ref);
      if (event.type === 'error') waiter.reject(new ChatError(event.code, event.message));
      else waiter.resolve(event);
      if (event.type !== 'ack') return;  // acks are also handled below
    }
    switch (event.type) {
      case 'welcome': this._onWelcome(event); break;
      case 'synced': this._onSynced(); break;
      case 'message': this._accept(event, 'live'); break;
      case 'ack': this._onAck(event); break;
      case 'typing': this._onTyping(event); break;
      case 'read': this._onRead(event); break;
      case 'presence': this._onPresence(event); break;
      case 'error':
        if (event.ref !== QUIET_REF) this.emit('error', { code: event.code, message: event.message });
        break;
      default: break;  // pong, left, and anything newer than this client
    }
  }

  _onWelcome(event) {
    clearTimeout(this._welcomeTimer);
    this.welcome = event;
    this.limits = event.limits;
    this._useOutboxOf(event.user);
    const listed = new Set();
    for (const r of event.rooms) {
      const room = this._room(r.room);
      listed.add(r.room);
      room.member = true;
      room.seq = Math.max(room.seq, r.seq);
      room.serverRead = r.read;
      room.read = Math.max(room.read, r.read);
      if (!room.loaded) room.tail = Math.max(room.tail, r.seq);  // nothing held: no replay needed
    }
    for (const room of this.rooms.values()) {
      // left on another device (or never a member): off the list unless a view or a send needs it
      if (!listed.has(room.name)) room.member = false;
    }
    const heartbeatMs = (event.heartbeat || 30) * 1000;
    this._pingTimer = setInterval(() => {
      if (Date.now() - this._lastInbound > 2 * heartbeatMs + 5000) {
        this._ws?.close(4000, 'no answer');  // a half-open connection: start over
        return;
      }
      this._sendFrame({ type: 'ping' });
    }, heartbeatMs);
    this.emit('rooms');
  }

  _onSynced() {
    this._setState(ConnectionState.LIVE);
    for (const room of this.rooms.values()) {
      if (room.member || room.wanted) this._join(room);
    }
    for (const item of this.outbox.values()) {
      if (item.kind === 'dm') this._transmit(item);
    }
  }

  async _join(room, { fresh = false } = {}) {
    const frame = { type: 'join', room: room.name };
    if (!fresh && (room.member || room.loaded)) frame.since = room.tail;
    let joined;
    try {
      joined = await this._request(frame);
    } catch (err) {
      if (err.code === 'disconnected') return null;
      if (RETRYABLE.has(err.code)) {  // the server is busy or its store is down: try again
        setTimeout(() => { if (!room.joined && this.state === ConnectionState.LIVE) this._join(room).catch(() => {}); },
                   2000 + Math.random() * 2000);
        throw err;
      }
      room.member = false;
      room.wanted = false;
      for (const item of this.pendingIn(room.name)) {  // they cannot go out: say so
        if (item.kind === 'send' && item.status === 'pending') this._onSendError(item, err);
      }
      this.emit('rooms');
      throw err;
    }
    room.joined = true;
    room.member = true;
    room.seq = Math.max(room.seq, joined.seq);
    room.members = new Set(joined.members);
    this.emit('presence', { room: room.name, members: [...room.members] });
    if (room.loaded) {
      if (room.tail < joined.seq) this._fill(room);  // recovered:false, or a fresh join
    } else {
      room.tail = Math.max(room.tail, joined.seq);
      if (room.wanted) this.load(room.name).catch(() => {});
    }
    if (room.read > room.serverRead) this._sendRead(room);
    for (const item of this.outbox.values()) {
      if (item.room === room.name) this._transmit(item);
    }
    this.emit('rooms');
    return joined;
  }

  /** Store a message once (by room+seq); resolves the pending send it answers. */
  _accept(message, source) {
    const room = this._room(message.room);
    room.seq = Math.max(room.seq, message.seq);
    if (!room.member && isDirectRoom(room.name)) {
      room.member = true;  // a first direct message: the room is ours now
      if (this.state === ConnectionState.LIVE && !room.joined) this._join(room).catch(() => {});
    }
    let fresh;
    if (room.loaded) {
      fresh = message.seq >= room.oldest && !room.messages.has(message.seq);
      if (fresh) {
        room.messages.set(message.seq, message);
        while (room.messages.has(room.tail + 1)) room.tail += 1;
        if (room.tail < message.seq) this._fill(room);  // a hole below it: read it
      }
    } else {
      fresh = message.seq > room.tail;
      room.tail = Math.max(room.tail, message.seq);
    }
    if (message.from === this.user) {
      // sending moved the cursor on the server (silently)
      room.read = Math.max(room.read, message.seq);
      room.serverRead = Math.max(room.serverRead, message.seq);
    } else if (message.from !== 'system') {
      this._receipt(room, message.from, message.seq);  // a sender has read what they answer
    }
    this._stopTyping(room, message.from);
    const item = message.from === this.user ? this.outbox.get(message.id) : undefined;
    if (item && item.room === room.name) {
      this.outbox.delete(item.id);
      this._saveOutbox();
      this.emit('sent', { room: room.name, item, message });
    } else if (fresh) {
      this.emit('message', { room: room.name, message, source });
    }
    this.emit('rooms');
    return fresh;
  }

  _onAck(ack) {
    const item = this.outbox.get(ack.id);
    const room = this._room(ack.room);
    if (!room.member) {
      room.member = true;  // a dm that created its room
      if (this.state === ConnectionState.LIVE && !room.joined) this._join(room).catch(() => {});
    }
    if (!item) {  // already resolved by its copy from a replay
      room.seq = Math.max(room.seq, ack.seq);
      room.read = Math.max(room.read, ack.seq);
      this.emit('rooms');
      return;
    }
    item.room = ack.room;
    const message = { type: 'message', room: ack.room, seq: ack.seq, id: ack.id, from: this.user,
                      text: item.text, ts: ack.ts };
    if (item.meta !== undefined) message.meta = item.meta;
    this._accept(message, 'ack');
  }

  /** Read `history after` pages until the timeline reaches the room's last known seq. */
  _fill(room) {
    if (room._filling) { room._refill = true; return room._filling; }
    room._filling = (async () => {
      try {
        do {
          room._refill = false;
          while (room.loaded && room.tail < room.seq) {
            const before = room.tail;
            const page = await this.history(room.name, { after: room.tail, limit: HISTORY_PAGE });
            for (const m of page.messages) this._accept(m, 'fill');
            if (room.tail === before) {  // the next seq does not exist: nothing below seq is missing
              room.tail = page.messages.length ? page.messages.at(-1).seq : room.seq;
              break;
            }
          }
        } while (room._refill);
      } catch (err) {
        // disconnected: the next join since resumes from `tail`
      } finally {
        room._filling = null;
      }
    })();
    return room._filling;
  }

  _onTyping({ room: name, user }) {
    if (user === this.user) return;
    const room = this._room(name);
    clearTimeout(room.typing.get(user));
    room.typing.set(user, setTimeout(() => this._stopTyping(room, user), TYPING_SHOWN_MS));
    this.emit('typing', { room: name, users: [...room.typing.keys()] });
  }

  _stopTyping(room, user) {
    if (!room.typing.has(user)) return;
    clearTimeout(room.typing.get(user));
    room.typing.delete(user);
    this.emit('typing', { room: room.name, users: [...room.typing.keys()] });
  }

  _clearTyping(room) {
    for (const user of [...room.typing.keys()]) this._stopTyping(room, user);
  }

  _onRead({ room: name, user, seq }) {
    const room = this._room(name);
    if (user === this.user) {  // another device of ours read it
      room.read = Math.max(room.read, seq);
      room.serverRead = Math.max(room.serverRead, seq);
      this.emit('rooms');
      return;
    }
    this._receipt(room, user, seq);
  }

  _receipt(room, user, seq) {
    if (seq <= (room.receipts.get(user) || 0)) return;
    room.receipts.set(user, seq);
    this.emit('receipt', { room: room.name, user, seq });
  }

  _onPresence({ room: name, user, status }) {
    const room = this._room(name);
    if (status === 'online') room.members.add(user);
    else room.members.delete(user);
    this.emit('presence', { room: name, members: [...room.members] });
  }

  // ------------------------------------------------------------------------------ rooms API

  _room(name) {
    let room = this.rooms.get(name);
    if (!room) {
      room = new Room(name);
      this.rooms.set(name, room);
    }
    return room;
  }

  /** The Room for `name` (created empty if unknown). */
  room(name) {
    return this._room(name);
  }

  /** Rooms the user is a member of (or has asked for), direct rooms included. */
  memberRooms() {
    return [...this.rooms.values()].filter((r) => r.member || r.wanted);
  }

  /** Join a room (a public one is created if it does not exist); resolves with `joined`. */
  async join(name) {
    const room = this._room(name);
    room.wanted = true;
    await this.whenLive();
    return this._join(room, { fresh: !room.member });
  }

  /** Open the direct conversation with `user` (created if new; `not_found` if no such user). */
  async openDirect(user) {
    if (!this.user) await this.whenLive();
    if (user === this.user) throw new ChatError('bad_request', 'that is you');
    const name = directRoomName(this.user, user);
    await this.join(name);
    return name;
  }

  /** Leave a room: its membership ends (a private room's grant stays). */
  async leave(name) {
    const room = this._room(name);
    room.member = room.wanted = room.joined = room.loaded = false;
    room.messages.clear();
    this.emit('rooms');
    if (this.state === ConnectionState.LIVE) await this._request({ type: 'leave', room: name });
  }

  /**
   * Load a room's recent timeline (once; kept up to date afterwards). The page reaches back to
   * the read cursor when that is within 200 messages, so a "new messages" marker can be shown.
   */
  load(name) {
    const room = this._room(name);
    room.wanted = true;
    if (room.loaded) return Promise.resolve(room);
    if (room._loading) return room._loading;
    room._loading = (async () => {
      try {
        await this.whenLive();
        // reach back to the read cursor (if the user ever read here) so the marker can show
        const limit = room.read > 0 ? Math.min(HISTORY_PAGE, Math.max(50, room.unread + 10)) : 50;
        const page = await this.history(name, { limit });
        room.messages = new Map(page.messages.map((m) => [m.seq, m]));
        room.oldest = page.messages.length ? page.messages[0].seq : room.seq + 1;
        room.hasOlder = page.more;
        room.tail = page.messages.length ? page.messages.at(-1).seq : room.seq;
        room.seq = Math.max(room.seq, room.tail);
        room.loaded = true;
        for (const m of page.messages) {
          const item = m.from === this.user ? this.outbox.get(m.id) : undefined;
          if (item) { this.outbox.delete(item.id); this._saveOutbox(); this.emit('sent', { room: name, item, message: m }); }
        }
        if (room.tail < room.seq) await this._fill(room);
        this.emit('timeline', { room: name });
        this.emit('rooms');
        return room;
      } finally {
        room._loading = null;
      }
    })();
    return room._loading;
  }

  /** Prepend the page before the oldest message held; resolves with the messages added. */
  loadOlder(name, limit = 50) {
    const room = this._room(name);
    if (!room.loaded || !room.hasOlder) return Promise.resolve([]);
    if (room._olderLoading) return room._olderLoading;
    room._olderLoading = (async () => {
      try {
        const page = await this.history(name, { before: room.oldest, limit });
        const added = page.messages.filter((m) => !room.messages.has(m.seq));
        for (const m of added) room.messages.set(m.seq, m);
        if (page.messages.length) room.oldest = Math.min(room.oldest, page.messages[0].seq);
        room.hasOlder = page.more;
        this.emit('older', { room: name, messages: added });
        return added;
      } finally {
        room._olderLoading = null;
      }
    })();
    return room._olderLoading;
  }

  /** One `history` page ({messages, more}); a rate-limited request is retried. */
  async history(name, { before, after, limit = 50 } = {}) {
    const frame = { type: 'history', room: name, limit };
    if (before !== undefined) frame.before = before;
    if (after !== undefined) frame.after = after;
    for (let attempt = 0; ; attempt += 1) {
      try {
        return await this._request(frame);
      } catch (err) {
        if (err.code !== 'rate_limited' || attempt >= 20) throw err;
        await new Promise((resolve) => setTimeout(resolve, 500 * (attempt + 1)));
      }
    }
  }

  /** `presence` command: [{user, connections}]. */
  async presence(name) {
    const reply = await this._request({ type: 'presence', room: name });
    return reply.members;
  }

  /**
   * Tell the others that the user is typing in `name`. Call it on every input: at most one
   * `typing` goes out per 2.5 s, and input inside that window sends one at its end (so the
   * indicator comes back after a message, which ends it on the other side).
   */
  typing(name) {
    const room = this._room(name);
    if (!room.joined || room._typingTrail) return;
    const wait = room.lastTyping + TYPING_EVERY_MS - Date.now();
    if (wait > 0) {
      room._typingTrail = setTimeout(() => {
        room._typingTrail = null;
        this.typing(name);
      }, wait);
      return;
    }
    room.lastTyping = Date.now();
    this._sendQuiet({ type: 'typing', room: name });
  }

  _cancelTyping(room) {
    clearTimeout(room._typingTrail);
    room._typingTrail = null;
  }

  /** The user has seen the room up to `seq`: move the cursor (forward only), tell the server. */
  markRead(name, seq) {
    const room = this._room(name);
    seq = Math.min(seq, room.seq);
    if (seq <= room.read) return;
    room.read = seq;
    this.emit('rooms');
    this._sendRead(room);
  }

  _sendRead(room) {
    if (room._readTimer) return;
    room._readTimer = setTimeout(() => {
      room._readTimer = null;
      if (room.read <= room.serverRead || this.state !== ConnectionState.LIVE) return;
      if (!room.joined && !room.direct) return;  // sent again after the join
      room.serverRead = room.read;
      this._sendQuiet({ type: 'read', room: room.name, seq: room.read });
    }, READ_DELAY_MS);
  }

  // ------------------------------------------------------------------------------- sending

  /** Send `text` to a room; returns the pending item at once (see events pending/sent/failed). */
  send(name, text, meta) {
    const room = this._room(name);
    if (room.direct && this.user) return this.dm(directPeer(name, this.user), text, meta);
    return this._queue({ kind: 'send', room: name, text, meta });
  }

  /** A direct message to `user` (to every device of theirs, joined or not). */
  dm(user, text, meta) {
    if (!this.user) throw new ChatError('disconnected', 'not connected yet');
    return this._queue({ kind: 'dm', to: user, room: directRoomName(this.user, user), text, meta });
  }

  _queue(fields) {
    this._cancelTyping(this._room(fields.room));  // the message ends the typing
    if (typeof fields.text !== 'string' || fields.text.length === 0) {
      throw new ChatError('bad_request', 'a message needs some text');
    }
    const max = this.limits?.max_text_chars ?? this.info?.limits?.max_text_chars;
    if (max && codePoints(fields.text) > max) {
      throw new ChatError('too_large', `a message holds at most ${max} characters`);
    }
    const item = { id: newId(), from: this.user, ts: Date.now(), status: 'pending', inflight: 0, ...fields };
    this.outbox.set(item.id, item);
    this._saveOutbox();
    this.emit('pending', { room: item.room, item });
    this._transmit(item);
    return item;
  }

  /** Try a failed send again, with its original id. */
  retry(id) {
    const item = this.outbox.get(id);
    if (!item || item.status !== 'failed') return;
    item.status = 'pending';
    delete item.error;
    this._saveOutbox();
    this.emit('pending', { room: item.room, item });
    this._transmit(item);
  }

  /** Drop a failed (or pending) send from the outbox. */
  discard(id) {
    if (this.outbox.delete(id)) this._saveOutbox();
  }

  /** Unacked sends of a room, oldest first. */
  pendingIn(name) {
    return [...this.outbox.values()].filter((item) => item.room === name);
  }

  _transmit(item) {
    if (item.status !== 'pending' || this.state !== ConnectionState.LIVE || item.inflight === this._conn) return;
    if (item.kind === 'send' && !this.rooms.get(item.room)?.joined) return;  // after its joined
    item.inflight = this._conn;
    const frame = item.kind === 'dm'
      ? { type: 'dm', to: item.to, id: item.id, text: item.text }
      : { type: 'send', room: item.room, id: item.id, text: item.text };
    if (item.meta !== undefined) frame.meta = item.meta;
    this._request(frame).catch((err) => this._onSendError(item, err));
  }

  _onSendError(item, err) {
    item.inflight = 0;
    if (!this.outbox.has(item.id) || err.code === 'disconnected') return;  // resent after reconnect
    if (RETRYABLE.has(err.code)) {
      setTimeout(() => this._transmit(item), 1000 + Math.random() * 1000);
      return;
    }
    if (err.code === 'not_joined') {
      const room = this._room(item.room);
      room.joined = false;
      this._join(room).catch(() => {});
      return;
    }
    item.status = 'failed';
    item.error = { code: err.code, message: err.message };
    this._saveOutbox();
    this.emit('failed', { room: item.room, item, error: item.error });
  }

  /** The user is known (option or welcome): take over the sends a reload left unacked. */
  _useOutboxOf(user) {
    this.user = user;
    if (this._outboxUser === user) return;
    this._outboxUser = user;
    this._loadOutbox();
  }

  _outboxKey() {
    return `chat-actors:outbox:${this.user}`;
  }

  _loadOutbox() {
    if (!this.storage || !this.user) return;
    try {
      const saved = JSON.parse(this.storage.getItem(this._outboxKey()) || '[]');
      for (const item of saved) {
        if (this.outbox.has(item.id)) continue;
        this.outbox.set(item.id, { ...item, inflight: 0 });
        this._room(item.room).wanted ||= item.kind === 'send';
        this.emit(item.status === 'failed' ? 'failed' : 'pending', { room: item.room, item, error: item.error });
      }
    } catch { /* a damaged entry is dropped */ }
  }

  _saveOutbox() {
    if (!this.storage || !this.user) return;
    const items = [...this.outbox.values()].map(({ inflight, ...item }) => item);  // eslint-disable-line no-unused-vars
    try {
      if (items.length) this.storage.setItem(this._outboxKey(), JSON.stringify(items));
      else this.storage.removeItem(this._outboxKey());
    } catch { /* storage full or denied: the outbox still lives in memory */ }
  }

  // --------------------------------------------------------------------------- HTTP API

  async _http(path, options = {}) {
    try {
      return await requestJson(this.baseUrl, path, { ...options, token: this.token });
    } catch (err) {
      if (err.code === 'unauthorized') this._unauthorized('Your session has expired. Please log in again.');
      throw err;
    }
  }

  /** GET /api/rooms: public rooms and the user's private and direct ones. */
  async listRooms() {
    const { rooms } = await this._http('/api/rooms');
    for (const r of rooms) this._room(r.name).private = r.private;
    return rooms;
  }

  /** POST /api/rooms, then join it: the user becomes its owner and first member. */
  async createRoom(name, { private: isPrivate = false } = {}) {
    const created = await this._http('/api/rooms', { method: 'POST', body: { name, private: isPrivate } });
    const room = this._room(name);
    room.private = created.private;
    room.owner = created.owner;
    await this.join(name);
    return created;
  }

  /** POST /api/rooms/{room}/members: the owner adds `user` to a private room. */
  addMember(name, user) {
    return this._http(`/api/rooms/${encodeURIComponent(name)}/members`, { method: 'POST', body: { user } });
  }
}
