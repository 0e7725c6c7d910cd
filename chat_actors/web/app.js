/**
 * app.js: the web chat's screens (log in, conversations, the open room) on top of
 * chat-client.js, which holds every protocol rule. This file only turns the client's events
 * into elements and the user's clicks and keys into client calls.
 *
 * The session (user, token, expiry) lives in sessionStorage: it belongs to this tab, survives
 * a reload, and is gone when the tab closes. Unacked sends are kept there too, so a reload
 * resends them with their original ids.
 */

import {
  ChatClient, ConnectionState, codePoints, directPeer, getInfo, login, register,
} from './chat-client.js';
import { avatar, h, icon, listNames } from './dom.js';
import { TimelineView } from './timeline.js';

const SESSION_KEY = 'chat-actors:session';
const ROOM_KEY = 'chat-actors:room';
const DEFAULT_ROOM = 'general';
const NAME_PATTERN = /^[A-Za-z0-9_.-]{1,64}$/;

const $ = (id) => document.getElementById(id);

const ui = {
  login: $('login-view'), chat: $('chat-view'),
  loginForm: $('login-form'), loginUser: $('login-username'), loginPassword: $('login-password'),
  loginSubmit: $('login-submit'), loginSwitch: $('login-switch'), loginSwitchText: $('login-switch-text'),
  loginTitle: $('login-title'), loginError: $('login-error'), loginNotice: $('login-notice'),
  conn: $('conn'), connText: $('conn-text'), connRetry: $('conn-retry'),
  connMini: $('conn-mini'), connMiniText: $('conn-mini-text'),
  roomList: $('room-list'), dmList: $('dm-list'), inviteList: $('invite-list'), inviteSection: $('invite-section'),
  meAvatar: $('me-avatar'), meName: $('me-name'), logout: $('logout'),
  sidebar: $('sidebar'), openSidebar: $('open-sidebar'), scrim: $('scrim'),
  roomTitle: $('room-title'), roomIcon: $('room-icon'), roomSub: $('room-sub'),
  addMember: $('add-member'), toggleMembers: $('toggle-members'), membersPanel: $('members-panel'),
  memberList: $('member-list'), membersHeading: $('members-heading'),
  scroller: $('messages'), list: $('message-list'), olderStatus: $('older-status'), jump: $('jump'),
  offlineHint: $('offline-hint'), keysHint: $('keys-hint'),
  typing: $('typing'), composer: $('composer'), input: $('composer-input'), counter: $('composer-counter'),
  sendButton: $('send-button'), noRoom: $('no-room'), conversation: $('conversation'),
  browseButton: $('browse-rooms'), browseDialog: $('browse-dialog'), browseList: $('browse-list'),
  createForm: $('create-room-form'), createName: $('new-room-name'), createPrivate: $('new-room-private'),
  browseError: $('browse-error'),
  dmButton: $('new-dm'), dmDialog: $('dm-dialog'), dmForm: $('dm-form'), dmUser: $('dm-username'), dmError: $('dm-error'),
  memberDialog: $('member-dialog'), memberForm: $('member-form'), memberUser: $('member-username'),
  memberError: $('member-error'), memberRoom: $('member-room'),
  toast: $('toast'),
};

let chat = null;
let timeline = null;
let current = null;
let invites = [];
let countdown = 0;
let registering = false;
let unsubscribers = [];

// --------------------------------------------------------------------------------- session

function loadSession() {
  try {
    const session = JSON.parse(sessionStorage.getItem(SESSION_KEY) || 'null');
    if (session && session.token && session.expires_at > Date.now()) return session;
  } catch { /* ignore a damaged entry */ }
  return null;
}

function boot() {
  wireStaticControls();
  const session = loadSession();
  if (session) startChat(session);
  else showLogin(sessionStorage.getItem(SESSION_KEY) ? 'Your session has expired. Please log in again.' : '');
}

// ----------------------------------------------------------------------------------- login

function showLogin(notice = '', username = '') {
  ui.chat.hidden = true;
  ui.login.hidden = false;
  ui.loginNotice.textContent = notice;
  ui.loginNotice.hidden = !notice;
  ui.loginError.textContent = '';
  if (username) ui.loginUser.value = username;
  ui.loginPassword.value = '';
  setLoginMode(false);
  (username ? ui.loginPassword : ui.loginUser).focus();
  document.title = 'chat-actors';
}

function setLoginMode(register) {
  registering = register;
  ui.loginTitle.textContent = register ? 'Create your account' : 'Welcome back';
  ui.loginSubmit.textContent = register ? 'Create account' : 'Log in';
  ui.loginSwitchText.textContent = register ? 'Already have an account?' : 'New here?';
  ui.loginSwitch.textContent = register ? 'Log in' : 'Create an account';
  ui.loginPassword.autocomplete = register ? 'new-password' : 'current-password';
  ui.loginError.textContent = '';
}

function loginMessage(err) {
  switch (err.code) {
    case 'unauthorized': return 'Wrong username or password.';
    case 'conflict': return 'That username is taken. Pick another one.';
    case 'rate_limited': return 'Too many attempts right now. Try again in a moment.';
    case 'network': return 'The server cannot be reached. Is it running?';
    default: return err.message;
  }
}

async function submitLogin(event) {
  event.preventDefault();
  const username = ui.loginUser.value.trim();
  const password = ui.loginPassword.value;
  if (!/^[A-Za-z0-9_.-]{3,32}$/.test(username)) {
    ui.loginError.textContent = 'A username is 3 to 32 letters, digits, dots, dashes or underscores.';
    ui.loginUser.focus();
    return;
  }
  if (password.length < 8) {
    ui.loginError.textContent = 'A password has at least 8 characters.';
    ui.loginPassword.focus();
    return;
  }
  ui.loginSubmit.disabled = true;
  ui.loginError.textContent = '';
  try {
    const session = await (registering ? register : login)(location.origin, username, password);
    sessionStorage.setItem(SESSION_KEY, JSON.stringify(session));
    startChat(session);
  } catch (err) {
    ui.loginError.textContent = loginMessage(err);
  } finally {
    ui.loginSubmit.disabled = false;
  }
}

function logout() {
  stopChat();
  sessionStorage.removeItem(SESSION_KEY);
  sessionStorage.removeItem(ROOM_KEY);
  showLogin('You have logged out.');
}

// ------------------------------------------------------------------------------------ chat

function startChat(session) {
  stopChat();
  ui.login.hidden = true;
  ui.chat.hidden = false;
  ui.meName.textContent = session.user;
  ui.meAvatar.replaceWith(ui.meAvatar = avatar(session.user, 'me-avatar'));
  ui.meAvatar.id = 'me-avatar';
  chat = new ChatClient({ token: session.token, user: session.user, storage: sessionStorage });
  timeline = new TimelineView({ scroller: ui.scroller, list: ui.list, status: ui.olderStatus, jump: ui.jump, chat });
  const on = (name, fn) => unsubscribers.push(chat.on(name, fn));
  on('state', renderConnection);
  on('rooms', renderSidebar);
  on('timeline', ({ room }) => { if (room === current) timeline.render(); });
  on('message', ({ room, message }) => { if (room === current) timeline.onMessage(message); });
  on('older', ({ room, messages }) => { if (room === current) timeline.onOlder(messages); });
  on('pending', ({ room, item }) => { if (room === current) timeline.onPending(item); });
  on('sent', ({ room, item, message }) => { if (room === current) timeline.onSent(item, message); });
  on('failed', ({ room, item }) => { if (room === current) timeline.onFailed(item); });
  on('receipt', ({ room }) => { if (room === current) timeline.renderReceipts(); });
  on('typing', ({ room, users }) => { if (room === current) renderTyping(users); });
  on('presence', ({ room }) => { if (room === current) { renderMembers(); renderRoomHeader(); } renderSidebar(); });
  on('unauthorized', ({ reason }) => {
    const user = chat.user;
    stopChat();
    sessionStorage.removeItem(SESSION_KEY);
    showLogin(reason, user);
  });
  on('error', ({ code, message }) => toast(`${message} (${code})`, 'error'));
  chat.connect();
  getInfo(location.origin).then((info) => { ui.input.dataset.max = info.limits.max_text_chars; }).catch(() => {});
  firstSync(sessionStorage.getItem(ROOM_KEY));
}

function stopChat() {
  for (const off of unsubscribers) off();
  unsubscribers = [];
  chat?.close();
  chat = null;
  current = null;
  clearInterval(countdown);
}

/** After the first sync: open the room of last time, or the user's first, or #general. */
async function firstSync(wanted) {
  const client = chat;
  await client.whenLive();
  if (client !== chat) return;
  refreshInvites();
  const rooms = sortedRooms(client.memberRooms());
  const names = new Set(rooms.map((r) => r.name));
  if (wanted && (names.has(wanted) || wanted.startsWith('dm:'))) {
    openRoom(wanted);
  } else if (rooms.length) {
    openRoom(rooms.find((r) => !r.direct)?.name ?? rooms[0].name);
  } else {
    try {
      await client.join(DEFAULT_ROOM);
      openRoom(DEFAULT_ROOM);
    } catch (err) {
      toast(`Could not join #${DEFAULT_ROOM}: ${err.message}`, 'error');
    }
  }
}

function renderConnection({ state, reason, retryAt }) {
  clearInterval(countdown);
  ui.conn.dataset.state = ui.connMini.dataset.state = state;
  ui.connRetry.hidden = state !== ConnectionState.OFFLINE;
  const show = (text, short = text) => { ui.connText.textContent = text; ui.connMiniText.textContent = short; };
  if (state === ConnectionState.LIVE) {
    show('Live');
    ui.conn.title = 'Connected: messages arrive as they are sent';
  } else if (state === ConnectionState.CONNECTING) {
    show('Connecting…');
    ui.conn.title = '';
  } else if (state === ConnectionState.OFFLINE) {
    const tick = () => {
      const seconds = Math.max(0, Math.ceil((retryAt - Date.now()) / 1000));
      show(`Offline · retrying in ${seconds} s`, `Offline · ${seconds} s`);
    };
    tick();
    countdown = setInterval(tick, 250);
    ui.conn.title = ui.connMini.title = reason || 'Connection lost';
  } else {
    show('Disconnected');
  }
  const offline = state !== ConnectionState.LIVE;
  ui.composer.classList.toggle('offline', offline);
  ui.offlineHint.hidden = !offline;
  ui.keysHint.hidden = offline;
}

// --------------------------------------------------------------------------------- sidebar

function roomLabel(room) {
  return room.direct ? directPeer(room.name, chat.user) : room.name;
}

function sortedRooms(rooms) {
  return rooms.sort((a, b) => roomLabel(a).localeCompare(roomLabel(b)));
}

function renderSidebar() {
  if (!chat) return;
  const rooms = sortedRooms(chat.memberRooms());
  const item = (room) => {
    const label = roomLabel(room);
    const unread = room.name === current ? 0 : room.unread;
    const online = room.direct && room.members.has(label);
    const button = h('button', {
      type: 'button', class: `room-link${unread ? ' has-unread' : ''}`, dataset: { room: room.name },
      'aria-current': room.name === current ? 'page' : false,
      'aria-label': `${room.direct ? 'Direct messages with ' : 'Room '}${label}${unread ? `, ${unread} unread` : ''}`,
      on: { click: () => openRoom(room.name) },
    },
    room.direct ? h('span', { class: `presence-dot${online ? ' online' : ''}`, 'aria-hidden': 'true' })
      : icon(room.private ? 'lock' : 'hash', 'icon room-icon'),
    h('span', { class: 'room-name', text: label }),
    unread ? h('span', { class: 'badge', 'aria-hidden': 'true', text: unread > 99 ? '99+' : String(unread) }) : null);
    return h('li', {}, button);
  };
  ui.roomList.replaceChildren(...rooms.filter((r) => !r.direct).map(item));
  ui.dmList.replaceChildren(...rooms.filter((r) => r.direct).map(item));
  if (!ui.dmList.childElementCount) ui.dmList.append(h('li', { class: 'empty-hint', text: 'No conversations yet' }));
  const pendingInvites = invites.filter((r) => !chat.room(r.name).member);
  ui.inviteSection.hidden = pendingInvites.length === 0;
  ui.inviteList.replaceChildren(...pendingInvites.map((r) => h('li', {},
    h('button', { type: 'button', class: 'room-link invite', dataset: { room: r.name },
                  'aria-label': `Join private room ${r.name}`, on: { click: () => joinRoom(r.name) } },
    icon('lock', 'icon room-icon'), h('span', { class: 'room-name', text: r.name }), h('span', { class: 'join-pill', text: 'Join' })))));
  const total = rooms.reduce((n, r) => n + (r.name === current ? 0 : r.unread), 0);
  document.title = total ? `(${total}) chat-actors` : 'chat-actors';
}

/** Private rooms the user was added to but has not joined (GET /api/rooms lists them). */
async function refreshInvites() {
  if (!chat) return [];
  try {
    const rooms = await chat.listRooms();
    invites = rooms.filter((r) => r.private && !r.name.startsWith('dm:'));
    renderSidebar();
    if (current) renderRoomHeader();
    return rooms;
  } catch {
    return [];
  }
}

async function joinRoom(name) {
  try {
    await chat.join(name);
    openRoom(name);
    return true;
  } catch (err) {
    toast(err.code === 'forbidden' ? `#${name} is private: only its members can join.` : err.message, 'error');
    return false;
  }
}

// ---------------------------------------------------------------------------- the room

function openRoom(name) {
  if (!chat) return;
  current = name;
  sessionStorage.setItem(ROOM_KEY, name);
  ui.noRoom.hidden = true;
  ui.conversation.hidden = false;
  closeSidebar();
  renderRoomHeader();
  renderMembers();
  renderTyping([...chat.room(name).typing.keys()]);
  renderSidebar();
  timeline.show(name);
  chat.load(name).catch((err) => {
    if (err.code === 'forbidden' || err.code === 'not_found') {  // removed, or gone: say so
      toast(`#${name} cannot be opened: ${err.message}`, 'error');
      if (current === name) showNoRoom();
    }
    // otherwise (disconnected) it loads again after the next reconnect
  });
  ui.input.placeholder = chat.room(name).direct ? `Message ${roomLabel(chat.room(name))}` : `Message #${name}`;
  ui.input.focus({ preventScroll: true });
}

function showNoRoom() {
  current = null;
  sessionStorage.removeItem(ROOM_KEY);
  ui.conversation.hidden = true;
  ui.noRoom.hidden = false;
  renderSidebar();
}

function renderRoomHeader() {
  const room = chat.room(current);
  const label = roomLabel(room);
  ui.roomTitle.textContent = room.direct ? label : `${label}`;
  ui.roomIcon.replaceChildren(room.direct ? avatar(label, 'head-avatar') : icon(room.private ? 'lock' : 'hash', 'icon head-icon'));
  const online = room.members.size;
  if (room.direct) {
    ui.roomSub.textContent = room.members.has(label) ? 'Online' : 'Offline';
  } else {
    ui.roomSub.textContent = `${room.private ? 'Private room' : 'Public room'} · ${online} online`;
  }
  ui.addMember.hidden = !(room.private && !room.direct);
  ui.toggleMembers.textContent = `Members ${online}`;
}

function renderMembers() {
  const room = chat.room(current);
  const names = [...room.members].sort((a, b) => a.localeCompare(b));
  ui.membersHeading.textContent = `Online · ${names.length}`;
  ui.memberList.replaceChildren(...names.map((name) => h('li', { class: 'member', dataset: { user: name } },
    avatar(name, 'member-avatar'), h('span', { class: 'member-name', text: name }),
    name === chat.user ? h('span', { class: 'you', text: 'you' }) : null)));
  if (!names.length) {
    const text = chat.state === ConnectionState.LIVE ? 'Nobody is here right now' : 'Shown again once connected';
    ui.memberList.append(h('li', { class: 'empty-hint', text }));
  }
}

function renderTyping(users) {
  const others = users.filter((u) => u !== chat.user);
  ui.typing.replaceChildren();
  if (!others.length) { ui.typing.classList.remove('active'); return; }
  const text = others.length > 3 ? 'Several people are typing…'
    : `${listNames(others)} ${others.length === 1 ? 'is' : 'are'} typing…`;
  ui.typing.append(h('span', { class: 'dots', 'aria-hidden': 'true' }, h('i'), h('i'), h('i')), h('span', { text }));
  ui.typing.classList.add('active');
}

// ------------------------------------------------------------------------------ composer

function sendComposer() {
  const text = ui.input.value;
  if (!text.trim() || !current || !chat) return;
  try {
    chat.send(current, text);
  } catch (err) {
    toast(err.message, 'error');
    return;
  }
  ui.input.value = '';
  updateCounter();
  timeline.clearMarker();
  timeline.scrollToBottom();
}

function updateCounter() {
  const max = Number(ui.input.dataset.max || 4000);
  const used = codePoints(ui.input.value);
  const show = used > max * 0.8;
  ui.counter.hidden = !show;
  ui.counter.textContent = show ? `${used} / ${max}` : '';
  ui.counter.classList.toggle('over', used > max);
  ui.sendButton.disabled = !ui.input.value.trim() || used > max;
}

// -------------------------------------------------------------------------------- dialogs

async function openBrowse() {
  ui.browseError.textContent = '';
  ui.createName.value = '';
  ui.createPrivate.checked = false;
  ui.browseList.replaceChildren(h('li', { class: 'empty-hint', text: 'Loading rooms…' }));
  ui.browseDialog.showModal();
  ui.createName.focus();
  const rooms = (await refreshInvites()).filter((r) => !r.name.startsWith('dm:'));
  ui.browseList.replaceChildren(...rooms.map((r) => {
    const member = chat.room(r.name).member;
    return h('li', { class: 'browse-item' },
      icon(r.private ? 'lock' : 'hash', 'icon room-icon'),
      h('span', { class: 'browse-name', text: r.name }),
      h('span', { class: 'browse-meta', text: `${r.members} member${r.members === 1 ? '' : 's'} · ${r.seq} message${r.seq === 1 ? '' : 's'}` }),
      h('button', { type: 'button', class: member ? 'btn' : 'btn primary', 'aria-label': `${member ? 'Open' : 'Join'} ${r.name}`,
                    text: member ? 'Open' : 'Join',
                    on: { click: async () => { if (await joinRoom(r.name)) ui.browseDialog.close(); } } }));
  }));
  if (!rooms.length) ui.browseList.append(h('li', { class: 'empty-hint', text: 'No rooms yet: create the first one.' }));
}

async function submitCreate(event) {
  event.preventDefault();
  const name = ui.createName.value.trim();
  if (!NAME_PATTERN.test(name) || name === '.' || name === '..') {
    ui.browseError.textContent = 'A room name is 1 to 64 letters, digits, dots, dashes or underscores.';
    return;
  }
  try {
    await chat.createRoom(name, { private: ui.createPrivate.checked });
    ui.browseDialog.close();
    openRoom(name);
  } catch (err) {
    if (err.code === 'conflict' && !ui.createPrivate.checked) {
      if (await joinRoom(name)) ui.browseDialog.close();   // it exists: join it instead
      return;
    }
    ui.browseError.textContent = err.code === 'conflict' ? `#${name} exists already.` : err.message;
  }
}

function openDmDialog() {
  ui.dmError.textContent = '';
  ui.dmUser.value = '';
  ui.dmDialog.showModal();
  ui.dmUser.focus();
}

async function submitDm(event) {
  event.preventDefault();
  const user = ui.dmUser.value.trim();
  if (!user) return;
  try {
    const name = await chat.openDirect(user);
    ui.dmDialog.close();
    openRoom(name);
  } catch (err) {
    ui.dmError.textContent = err.code === 'not_found' ? `There is no user named ${user}.` : err.message;
  }
}

function openMemberDialog() {
  ui.memberError.textContent = '';
  ui.memberUser.value = '';
  ui.memberRoom.textContent = current;
  ui.memberDialog.showModal();
  ui.memberUser.focus();
}

async function submitMember(event) {
  event.preventDefault();
  const user = ui.memberUser.value.trim();
  if (!user) return;
  try {
    await chat.addMember(current, user);
    ui.memberDialog.close();
    toast(`${user} can now join #${current}.`);
  } catch (err) {
    ui.memberError.textContent = err.code === 'forbidden' ? 'Only the room’s owner can add members.'
      : err.code === 'not_found' ? `There is no user named ${user}.` : err.message;
  }
}

// ---------------------------------------------------------------------------------- misc

let toastTimer = 0;
function toast(text, kind = 'info') {
  ui.toast.textContent = text;
  ui.toast.dataset.kind = kind;
  ui.toast.hidden = false;
  clearTimeout(toastTimer);
  toastTimer = setTimeout(() => { ui.toast.hidden = true; }, 5000);
}

function closeSidebar() {
  ui.chat.classList.remove('sidebar-open');
  ui.openSidebar.setAttribute('aria-expanded', 'false');
}

function wireStaticControls() {
  ui.loginForm.addEventListener('submit', submitLogin);
  ui.loginSwitch.addEventListener('click', () => setLoginMode(!registering));
  ui.logout.addEventListener('click', logout);
  ui.connRetry.addEventListener('click', () => chat?.reconnectNow());
  window.addEventListener('online', () => chat?.reconnectNow());
  ui.composer.addEventListener('submit', (event) => { event.preventDefault(); sendComposer(); });
  ui.input.addEventListener('keydown', (event) => {
    if (event.key === 'Enter' && !event.shiftKey && !event.isComposing) {
      event.preventDefault();
      sendComposer();
    }
  });
  ui.input.addEventListener('input', () => {
    updateCounter();
    if (current && ui.input.value) chat?.typing(current);
  });
  ui.browseButton.addEventListener('click', openBrowse);
  ui.createForm.addEventListener('submit', submitCreate);
  ui.dmButton.addEventListener('click', openDmDialog);
  ui.dmForm.addEventListener('submit', submitDm);
  ui.addMember.addEventListener('click', openMemberDialog);
  ui.memberForm.addEventListener('submit', submitMember);
  for (const button of document.querySelectorAll('[data-close]')) {
    button.addEventListener('click', () => button.closest('dialog').close());
  }
  const toggleSidebar = () => {
    const open = !ui.chat.classList.contains('sidebar-open');
    ui.chat.classList.toggle('sidebar-open', open);
    ui.openSidebar.setAttribute('aria-expanded', String(open));
    if (open) (ui.sidebar.querySelector('.room-link[aria-current=page]') || ui.browseButton).focus();
  };
  ui.openSidebar.addEventListener('click', toggleSidebar);
  $('no-room-menu').addEventListener('click', toggleSidebar);
  ui.scrim.addEventListener('click', () => { closeSidebar(); closeMembers(); });
  $('close-members').addEventListener('click', () => { closeMembers(); ui.toggleMembers.focus(); });
  ui.toggleMembers.addEventListener('click', () => {
    const open = !ui.chat.classList.contains('members-open');
    ui.chat.classList.toggle('members-open', open);
    ui.toggleMembers.setAttribute('aria-expanded', String(open));
  });
  document.addEventListener('keydown', (event) => {
    if (event.key === 'Escape') { closeSidebar(); closeMembers(); }
  });
  updateCounter();
}

function closeMembers() {
  ui.chat.classList.remove('members-open');
  ui.toggleMembers.setAttribute('aria-expanded', 'false');
}

boot();
